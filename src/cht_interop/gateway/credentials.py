"""The interop client's password: from the environment, or generated once and kept in the data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cht_interop.gateway.passwords import generate_password
from cht_interop.settings import Settings

SECRET_FILE = "interop-client.secret"


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    password: str
    generated_now: bool  # True only on the run that created it: `up` prints it then, never again


def load_or_create_client_credentials(settings: Settings) -> ClientCredentials:
    if settings.interop_client_password is not None:
        return ClientCredentials(
            settings.interop_client_id, settings.interop_client_password.get_secret_value(), False
        )
    path = Path(settings.data_dir) / SECRET_FILE
    if path.exists():
        return ClientCredentials(settings.interop_client_id, path.read_text().strip(), False)
    path.parent.mkdir(parents=True, exist_ok=True)
    password = generate_password()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return ClientCredentials(settings.interop_client_id, password, True)
