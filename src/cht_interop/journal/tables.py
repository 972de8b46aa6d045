"""Journal tables: one row per request or job attempt, and what each row was about.

``journal_refs`` ties a row to the things it touched (``follow-up:<id>``, ``Task/<id>``,
``Subscription/<id>``, ``ServiceRequest/<id>``, ``list:<id>``): a follow-up's timeline is every
row sharing a reference with the request that started it, which reaches the callbacks (known to
the outbox only by their Subscription) without the outbox knowing about follow-ups.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from cht_interop.db.meta import metadata
from cht_interop.db.types import UtcDateTime

KINDS = ("request", "job")

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("id", String(36), primary_key=True),  # the row's own id (a transaction id may repeat)
    Column("transaction_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # request | job
    Column("started_at", UtcDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("client", String(100), nullable=True),
    Column("method", String(16), nullable=True),
    Column("path", Text, nullable=False),  # request: the path; job: its kind
    Column("query", Text, nullable=True),
    Column("status", Integer, nullable=True),  # request: the HTTP status; job: the peer's, if known
    # request: OpenHIM's transaction status; job: done | failed | dead
    Column("outcome", String(32), nullable=False),
    Column("error", Text, nullable=True),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("properties", JSON, nullable=False),
    Column("orchestrations", JSON, nullable=False),
    # shown, not searched: a follow-up's rows are found through journal_refs (no index to maintain)
    Column("follow_up_id", String(64), nullable=True),
    Column("job_id", Integer, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("target", Text, nullable=True),
    Index("ix_journal_entries_started", "started_at", "id"),
    Index("ix_journal_entries_transaction", "transaction_id"),
    sqlite_with_rowid=False,  # SQLite: the rows live in the primary key's B-tree (one fewer to write)
)

journal_refs = Table(
    "journal_refs",
    metadata,
    Column("ref", String(200), primary_key=True),
    Column(
        "entry_id",
        String(36),
        ForeignKey("journal_entries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Index("ix_journal_refs_entry", "entry_id"),
    sqlite_with_rowid=False,
)
