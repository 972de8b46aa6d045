"""The transaction log: one row per request to /mediator and /fhir and per outbox job attempt.

- ``tables.py``      the rows (``journal_entries``) and the links to what they were about (``journal_refs``)
- ``entries.py``     what a row holds, built from a request's or a job's recording (redacted, capped)
- ``writer.py``      the bounded queue and the background group commit that writes them
- ``store.py``       every statement on the journal's tables: insert, purge, the console's queries
- ``middleware.py``  the ASGI middleware that gives each request its transaction id and records it
- ``jobs.py``        job attempts recorded against their follow-up; the retention purge job
"""
