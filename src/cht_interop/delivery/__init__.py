"""The durable outbox: jobs written in the business transaction, delivered by workers after commit.

- ``jobs``: ``NewJob`` (what a domain enqueues), ``DeliveryReceipt``, ``TransientDeliveryError`` /
  ``PermanentDeliveryError`` (what a handler raises).
- ``registry``: ``HandlerRegistry.register(kind, handler, on_dead=...)`` and the claimed ``Job``.
- ``outbox``: ``enqueue(conn, jobs)`` inside the caller's transaction, and the repository the
  worker, CLI and console use (claim, finish, claim_hooks / finish_hooks for dead jobs' on_dead hooks,
  retry_dead, list_jobs, get_job, count_by_status, purge_done).
- ``worker``: ``OutboxWorker(db, handlers, settings).run(stop)``.
- ``cli``: ``cht-interop outbox list | show | retry | purge``.
"""
