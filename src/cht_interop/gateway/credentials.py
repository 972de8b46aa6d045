"""The default clients' passwords (the interop client; ``up``'s admin): from the environment, or
generated once and kept in the data dir (mode 0600)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cht_interop.gateway.passwords import generate_password
from cht_interop.settings import Settings

SECRET_FILE = "interop-client.secret"
ADMIN_SECRET_FILE = "admin.secret"


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    password: str
    generated_now: bool  # True only on the run that created it: `up` prints it then, never again


def load_or_create_client_credentials(settings: Settings) -> ClientCredentials:
    """The interop client (role ``interop``): INTEROP_CLIENT_PASSWORD, or ``interop-client.secret``."""
    return _load_or_create(
        settings.interop_client_id, settings.interop_client_password, Path(settings.data_dir) / SECRET_FILE
    )


def load_or_create_admin_credentials(settings: Settings) -> ClientCredentials:
    """``up``'s console administrator (role ``admin``): ADMIN_PASSWORD, or ``admin.secret``."""
    return _load_or_create(
        settings.admin_client_id, settings.admin_password, Path(settings.data_dir) / ADMIN_SECRET_FILE
    )


def _load_or_create(client_id: str, configured: SecretStr | None, path: Path) -> ClientCredentials:
    if configured is not None:
        return ClientCredentials(client_id, configured.get_secret_value(), False)
    if path.exists():
        return ClientCredentials(client_id, path.read_text().strip(), False)
    path.parent.mkdir(parents=True, exist_ok=True)
    password = generate_password()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return ClientCredentials(client_id, password, True)
