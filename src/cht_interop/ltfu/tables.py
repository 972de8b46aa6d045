"""LTFU tables: large LTFU lists staged for background writing, and the keys that keep them unique.

A list above ``LTFU_LIST_SYNC_MAX`` entries is checked and committed here first (one row per entry,
one key per follow-up being written) and answered 202; outbox jobs then write its follow-ups to
the FHIR store in chunks. ``ltfu_staged_key`` holds "same patient + requester" and "same
ServiceRequest identifier" while an entry is staged, so a request arriving meanwhile finds the
staged follow-up instead of starting a second one; the primary key makes that hold across processes.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)

from cht_interop.db.meta import metadata
from cht_interop.db.types import UtcDateTime

ENTRY_STATES = ("staged", "done")

ltfu_list = Table(
    "ltfu_list",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("entry_count", Integer, nullable=False),
    Column("staged_count", Integer, nullable=False),  # entries accepted for background writing
    Column("done_at", UtcDateTime, nullable=True),  # every staged entry written (or refused)
    Column("client_id", String(200), nullable=True),  # the API client that sent it (sees its status)
    # True while a long list's turns are committed one by one: it has no status, and is not done
    # however many of its entries are written, until its close clears it (``staged_lists.py``);
    # its keys count from each turn's commit
    Column("staging", Boolean, nullable=False, default=False, server_default=false()),
)

ltfu_list_entry = Table(
    "ltfu_list_entry",
    metadata,
    Column("list_id", String(36), ForeignKey("ltfu_list.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("follow_up_id", String(64), nullable=True),
    # what is still to be written (JSON): the ServiceRequest and the resolved patient/requester
    Column("request", Text, nullable=True),
    # the entry's batch-response entry (JSON) once known
    Column("response", Text, nullable=True),
    PrimaryKeyConstraint("list_id", "position", name="pk_ltfu_list_entry"),
)
Index("ix_ltfu_list_entry_staged", ltfu_list_entry.c.list_id, ltfu_list_entry.c.state)

ltfu_staged_key = Table(
    "ltfu_staged_key",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("follow_up_id", String(64), nullable=False),
    Column("list_id", String(36), nullable=False),
)
Index("ix_ltfu_staged_key_follow_up", ltfu_staged_key.c.follow_up_id)
