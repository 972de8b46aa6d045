"""Domain-free helpers every domain may use: GC pause, group commit, HTTP answers.

Tuning devices, each in one place: the GC pause around large units of work and the trim after
them (``gc.py``), fewer malloc arenas and ``malloc_trim`` (``arenas.py``), group commit
(``coalescer.py``), off-loop work and breathing for big requests (``fair.py``).

Nothing here imports a domain package (``fhir``, ``ltfu``, ``delivery``, ...): arrows point into
``kit``, never out of it.
"""
