"""Domain-free helpers every domain may use: GC pause, group commit, HTTP answers.

Nothing here imports a domain package (``fhir``, ``ltfu``, ``delivery``, ...): arrows point into
``kit``, never out of it.
"""
