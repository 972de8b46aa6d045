"""The client directory (what the CLI and the console call), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from cht_interop.db import Database
from cht_interop.gateway.clients import (
    ClientDirectory,
    ClientError,
    ClientExists,
    UnknownClient,
    parse_roles,
)
from cht_interop.gateway.passwords import verify_password
from cht_interop.gateway.principals import Role
from cht_interop.gateway.tables import gateway_client


async def _row(db: Database, client_id: str) -> dict[str, object]:
    async with db.connect() as conn:
        row = (await conn.execute(select(gateway_client).where(gateway_client.c.id == client_id))).one()
    return dict(row._mapping)


async def test_add_list_set_password_remove(db: Database) -> None:
    clients = ClientDirectory(db)
    heard: list[str] = []
    clients.on_change(heard.append)
    added = await clients.add("emr", frozenset({Role.REQUESTER}), "first-password-1", name="District EMR")
    assert (added.client_id, added.name, added.roles) == ("emr", "District EMR", frozenset({Role.REQUESTER}))
    await clients.add("push", frozenset({Role.CHT}), "push-password-01")
    listed = await clients.list()
    assert [(c.client_id, c.name, c.roles) for c in listed] == [
        ("emr", "District EMR", frozenset({Role.REQUESTER})),
        ("push", "push", frozenset({Role.CHT})),
    ]
    row = await _row(db, "emr")
    assert "first-password-1" not in str(row)
    assert verify_password("first-password-1", str(row["password_hash"]))
    assert row["password_version"] == 1

    await clients.set_password("emr", "second-password-2")
    row = await _row(db, "emr")
    assert verify_password("second-password-2", str(row["password_hash"]))
    assert not verify_password("first-password-1", str(row["password_hash"]))
    assert row["password_version"] == 2

    await clients.remove("emr")
    assert [c.client_id for c in await clients.list()] == ["push"]
    assert await clients.find("emr") is None
    assert heard == ["emr", "emr"]


async def test_refusals_say_why(db: Database) -> None:
    clients = ClientDirectory(db)
    await clients.add("emr", frozenset({Role.REQUESTER}), "first-password-1")
    with pytest.raises(ClientExists):
        await clients.add("emr", frozenset({Role.CHT}), "other-password-1")
    with pytest.raises(UnknownClient):
        await clients.set_password("nobody", "some-password-12")
    with pytest.raises(UnknownClient):
        await clients.remove("nobody")
    with pytest.raises(ClientError, match="at least 12 characters"):
        await clients.add("short", frozenset({Role.CHT}), "short")
    for bad_id in ("with:colon", "with space", "", "x" * 201):
        with pytest.raises(ClientError, match="client id"):
            await clients.add(bad_id, frozenset({Role.CHT}), "long-enough-pass")
    with pytest.raises(ClientError, match="at least one role"):
        await clients.add("none", frozenset(), "long-enough-pass")
    with pytest.raises(ClientError, match="unknown role 'root'"):
        parse_roles(["requester", "root"])
    assert parse_roles(["CHT", " admin"]) == frozenset({Role.CHT, Role.ADMIN})


async def test_ensure_creates_then_writes_only_what_changed(db: Database) -> None:
    clients = ClientDirectory(db)
    await clients.ensure("interop-client", frozenset({Role.INTEROP}), "pw")  # the configured one: any length
    first = await _row(db, "interop-client")
    await clients.ensure("interop-client", frozenset({Role.INTEROP}), "pw")
    assert await _row(db, "interop-client") == first  # nothing written
    await clients.ensure("interop-client", frozenset({Role.INTEROP}), "new-pw")
    changed = await _row(db, "interop-client")
    assert changed["password_version"] == 2
    assert verify_password("new-pw", str(changed["password_hash"]))
