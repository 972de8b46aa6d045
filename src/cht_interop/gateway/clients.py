"""The API clients: who may call ``/fhir`` and ``/mediator``, with which roles (the one owner of
the ``gateway_client`` table's SQL).

The service API the CLI (``cht-interop clients …``) and the console call. Passwords are hashed
with scrypt off the event loop; no method returns a hash except ``find`` (the authenticator's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from cht_interop.db import Database
from cht_interop.gateway.passwords import hash_password, verify_password
from cht_interop.gateway.principals import Principal, Role
from cht_interop.gateway.tables import gateway_client

MIN_PASSWORD_LENGTH = 12
# what HTTP Basic can carry as a user id: no colon (it ends the id), no spaces or control characters
CLIENT_ID = re.compile(r"[A-Za-z0-9._@+-]{1,200}")


class ClientError(ValueError):
    """A request the directory refuses; the message says why (never with a password in it)."""


class ClientExists(ClientError):
    pass


class UnknownClient(ClientError):
    pass


@dataclass(frozen=True)
class ClientInfo:
    """A client as shown to an administrator: never its hash."""

    client_id: str
    name: str
    roles: frozenset[Role]
    created_at: datetime
    updated_at: datetime

    def principal(self) -> Principal:
        return Principal(self.client_id, self.name, self.roles)


@dataclass(frozen=True)
class StoredClient:
    """A client with what checking its password needs."""

    info: ClientInfo
    password_hash: str
    password_version: int


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Roles from their names (the CLI's ``--role``); a ClientError names the known ones."""
    roles = set()
    for value in values:
        try:
            roles.add(Role(value.strip().lower()))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ClientError(f"unknown role {value!r} (known: {known})") from None
    if not roles:
        raise ClientError("a client needs at least one role")
    return frozenset(roles)


def _check_id(client_id: str) -> None:
    if not CLIENT_ID.fullmatch(client_id):
        raise ClientError(
            "a client id is 1-200 letters, digits or . _ @ + - (no colon or space: HTTP Basic carries it)"
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ClientError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def _now() -> datetime:
    return datetime.now(UTC)


def _roles_text(roles: frozenset[Role]) -> str:
    return " ".join(sorted(r.value for r in roles))


def _roles_of(text: str) -> frozenset[Role]:
    return frozenset(Role(r) for r in text.split() if r in Role.__members__.values())


class ClientDirectory:
    """The clients in the database. ``on_change`` callbacks hear of every password change and
    removal in this process (the authenticator forgets what it had verified for that client)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def _changed(self, client_id: str) -> None:
        for listener in self._listeners:
            listener(client_id)

    async def find(self, client_id: str) -> StoredClient | None:
        """The client and its hash, for the authenticator (one primary-key read)."""
        async with self.db.connect() as conn:
            row = (await conn.execute(select(gateway_client).where(gateway_client.c.id == client_id))).first()
        if row is None:
            return None
        info = ClientInfo(row.id, row.name, _roles_of(row.roles), row.created_at, row.updated_at)
        return StoredClient(info, row.password_hash, row.password_version)

    async def list(self) -> list[ClientInfo]:
        async with self.db.connect() as conn:
            rows = (await conn.execute(select(gateway_client).order_by(gateway_client.c.id))).all()
        return [ClientInfo(r.id, r.name, _roles_of(r.roles), r.created_at, r.updated_at) for r in rows]

    async def add(
        self, client_id: str, roles: frozenset[Role], password: str, name: str | None = None
    ) -> ClientInfo:
        """A new client; ClientExists if the id is taken."""
        _check_id(client_id)
        _check_password(password)
        if not roles:
            raise ClientError("a client needs at least one role")
        hashed = await anyio.to_thread.run_sync(hash_password, password)
        now = _now()
        values = {
            "id": client_id,
            "name": (name or client_id)[:200],
            "roles": _roles_text(roles),
            "password_hash": hashed,
            "password_version": 1,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.db.transaction() as conn:
                await conn.execute(insert(gateway_client).values(**values))
        except IntegrityError:
            raise ClientExists(f"client {client_id!r} already exists") from None
        return ClientInfo(client_id, str(values["name"]), roles, now, now)

    async def set_password(self, client_id: str, password: str) -> None:
        """A new password: the old one stops working here at once, in other processes within
        the authenticator's ``recheck_seconds``."""
        _check_password(password)
        hashed = await anyio.to_thread.run_sync(hash_password, password)
        async with self.db.transaction() as conn:
            done = await conn.execute(
                update(gateway_client)
                .where(gateway_client.c.id == client_id)
                .values(
                    password_hash=hashed,
                    password_version=gateway_client.c.password_version + 1,
                    updated_at=_now(),
                )
            )
        if done.rowcount == 0:
            raise UnknownClient(f"no client {client_id!r}")
        self._changed(client_id)

    async def remove(self, client_id: str) -> None:
        async with self.db.transaction() as conn:
            done = await conn.execute(delete(gateway_client).where(gateway_client.c.id == client_id))
        if done.rowcount == 0:
            raise UnknownClient(f"no client {client_id!r}")
        self._changed(client_id)

    async def ensure(
        self, client_id: str, roles: frozenset[Role], password: str, name: str | None = None
    ) -> None:
        """Make the client exist with these roles and this password (the configured default
        clients, at every start): nothing is written when it already does."""
        _check_id(client_id)
        current = await self.find(client_id)
        if current is not None:
            same_password = await anyio.to_thread.run_sync(verify_password, password, current.password_hash)
            if same_password and current.info.roles == roles:
                return
            if same_password:  # only the roles change: the remembered checks stay valid elsewhere
                async with self.db.transaction() as conn:
                    await conn.execute(
                        update(gateway_client)
                        .where(gateway_client.c.id == client_id)
                        .values(roles=_roles_text(roles), updated_at=_now())
                    )
                self._changed(client_id)
                return
        hashed = await anyio.to_thread.run_sync(hash_password, password)
        now = _now()
        if current is None:
            try:
                async with self.db.transaction() as conn:
                    await conn.execute(
                        insert(gateway_client).values(
                            id=client_id,
                            name=name or client_id,
                            roles=_roles_text(roles),
                            password_hash=hashed,
                            password_version=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                return
            except IntegrityError:
                pass  # another process starting at the same time made it: update it below
        async with self.db.transaction() as conn:
            await conn.execute(
                update(gateway_client)
                .where(gateway_client.c.id == client_id)
                .values(
                    roles=_roles_text(roles),
                    password_hash=hashed,
                    password_version=gateway_client.c.password_version + 1,
                    updated_at=now,
                )
            )
        self._changed(client_id)
