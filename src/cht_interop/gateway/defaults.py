"""The clients every start makes sure of, and the process's authenticator over the client table."""

from __future__ import annotations

import asyncio

from cht_interop.db import Database
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.clients import ClientDirectory
from cht_interop.gateway.credentials import (
    ClientCredentials,
    load_or_create_admin_credentials,
    load_or_create_client_credentials,
)
from cht_interop.gateway.principals import Role
from cht_interop.settings import Settings


async def open_gateway(settings: Settings, db: Database) -> ClientAuthenticator:
    """The interop client (INTEROP_CLIENT_ID, role ``interop``) created or updated from its
    configured password, and an authenticator that forgets a client's verified password as soon
    as this process changes or removes it (``authenticator.clients`` is the ClientDirectory)."""
    directory = ClientDirectory(db)
    creds = load_or_create_client_credentials(settings)
    await directory.ensure(creds.client_id, frozenset({Role.INTEROP}), creds.password)
    authenticator = ClientAuthenticator(directory)
    directory.on_change(authenticator.forget)
    return authenticator


async def ensure_admin(settings: Settings, db: Database) -> ClientCredentials:
    """``up``'s console administrator (ADMIN_CLIENT_ID, role ``admin``), from ADMIN_PASSWORD or the
    password generated once into ``admin.secret``."""
    creds = load_or_create_admin_credentials(settings)
    await ClientDirectory(db).ensure(
        creds.client_id, frozenset({Role.ADMIN}), creds.password, "Administrator"
    )
    return creds


def ensure_admin_now(settings: Settings) -> ClientCredentials:
    """``ensure_admin`` for a caller outside the event loop (``up``, before it serves)."""

    async def main() -> ClientCredentials:
        db = Database(settings.resolved_database_url)
        try:
            return await ensure_admin(settings, db)
        finally:
            await db.dispose()

    return asyncio.run(main())
