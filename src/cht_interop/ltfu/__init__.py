"""The LTFU mediator workflow behind /mediator/*: one module per step, wired in ``service.py``.

It talks FHIR only through the ``FhirClient`` protocol (``cht_interop.fhir.client``), so it runs
the same on the embedded store and on an external server such as HAPI; where the two differ it
reads the client's declared ``capabilities``. Where to look:

- ``requesters.py``    Endpoint/Organization registration; resolving a request's requester (cached)
- ``callbacks.py``     which callback addresses are refused (literal form and resolved name)
- ``patients.py``      the CHT's patient push; patient look-up for requests and reports
- ``intake.py``        follow-up requests in: singles (group commit), lists (now, or staged), answers
- ``duplicates.py``    the duplicate check, and the one start lock it and the write run under
- ``staged_lists.py``  long lists: stage, write in the background, abandon, status, purge
- ``lists.py``         the staged lists' rows (SQL on the caller's connection); ``tables.py``
- ``encounters.py``    the CHW's report: Encounter + follow-up completed + callback in one write
                       (group commit across concurrent reports)
- ``lifecycle.py``     after the start: accepted, cancelled, failed/expired (and the expiry job's
                       completion of an Encounter stored without completing its follow-up)
- ``writes.py``        where every LTFU transaction opens (FHIR Bundle or our database); what the
                       follow-up start writes; the outbox job kinds
- ``lookups.py``       batched look-ups: ids per search (client capability), 4 searches at once
- ``model.py``         values passed between the steps; ``resources.py`` the FHIR shapes;
                       ``validation.py`` the reference's request rules
- ``endpoints.py``     the HTTP routes; ``jobs.py`` the outbox job handlers (both thin)

Tuning devices, each in one place: group commit over ``kit.coalescer`` (single requests in
``intake.py``; CHT reports in ``encounters.py``; Task look-ups and the subscription-off jobs'
switch-offs in ``lifecycle.py``; CHT acceptances in ``jobs.py``, each group's Tasks and its expiry
job in one transaction), the start lock (``duplicates.py``: on PostgreSQL shared by small batches,
which lock only their keys), the GC pause for long lists (``intake.py``, over ``kit.gc``), ids per
search and 4 searches at once (``lookups.py``), the requester cache (``requesters.py``). Outside
this package, for the CHT submissions: the window of concurrent CHT calls with AIMD backpressure
(``cht/pacing.py``, bound to the worker's per-kind in-flight limit in ``jobs.py``), the worker's
concurrency and full-batch claims (``delivery/worker.py``).
"""
