"""The outbox repository: enqueue inside the caller's transaction, claim, finish, dead-letter, retry.

Every function takes an ``AsyncConnection`` that is already inside a transaction
(``Database.transaction()``); none of them commits. Jobs written by :func:`enqueue` are therefore
visible to workers only once the caller's business transaction commits, and vanish with it on
rollback.

Claiming (:func:`claim`) locks candidate rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
concurrent workers never take the same job; on SQLite every transaction is ``BEGIN IMMEDIATE`` and
claims are serialised by the database lock. A job is claimable when it is pending and due, or
running with an expired lease (its worker died), and no older job with the same ``ordering_key``
is still pending or running.

A job whose kind has an ``on_dead`` hook is made dead with its hook *pending* (held by the worker
that made it dead, for a lease), and the hook is marked *done* only after it ran: a worker that
stops in between leaves it pending, and any worker knowing the kind runs it after the lease
(:func:`claim_hooks`). Hooks therefore run at least once, and must be safe to run twice.

One module per job: ``enqueueing`` (domains), ``claiming`` and ``finishing`` (the worker),
``admin`` (the CLI and console); ``shared`` holds what they all use.
"""

from cht_interop.delivery.outbox.admin import (
    Attempt,
    JobNotFound,
    JobNotRetryable,
    JobRecord,
    OutboxError,
    count_by_status,
    count_pending_hooks,
    get_job,
    list_jobs,
    purge_done,
    retry_dead,
)
from cht_interop.delivery.outbox.claiming import claim, claim_hooks
from cht_interop.delivery.outbox.enqueueing import enqueue, make_due
from cht_interop.delivery.outbox.finishing import (
    Finish,
    HookRun,
    complete,
    dead_letter,
    finish_hooks,
    finish_many,
    horizons,
    reschedule,
)
from cht_interop.delivery.outbox.shared import ACTIVE, ENQUEUED_FLAG, MAX_TEXT, clip, utcnow

__all__ = [
    "ACTIVE",
    "ENQUEUED_FLAG",
    "MAX_TEXT",
    "Attempt",
    "Finish",
    "HookRun",
    "JobNotFound",
    "JobNotRetryable",
    "JobRecord",
    "OutboxError",
    "claim",
    "claim_hooks",
    "clip",
    "complete",
    "count_by_status",
    "count_pending_hooks",
    "dead_letter",
    "enqueue",
    "finish_hooks",
    "finish_many",
    "get_job",
    "horizons",
    "list_jobs",
    "make_due",
    "purge_done",
    "reschedule",
    "retry_dead",
    "utcnow",
]
