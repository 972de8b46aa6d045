"""The gateway's table: the API clients, their roles and password hashes (``gateway/clients.py``
owns its SQL)."""

from __future__ import annotations

from sqlalchemy import Column, Integer, String, Table, Text

from cht_interop.db.meta import metadata
from cht_interop.db.types import UtcDateTime

gateway_client = Table(
    "gateway_client",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("roles", String(200), nullable=False),  # space-separated ``Role`` values, sorted
    Column("password_hash", Text, nullable=False),  # ``passwords.hash_password``'s format
    # bumped by every password change: a process's remembered checks of the old one stop counting
    Column("password_version", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
