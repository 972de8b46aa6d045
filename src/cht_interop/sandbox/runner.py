"""Build the sandbox for ``cht-interop up --cht-sandbox`` and ``cht-interop cht-sandbox``.

The sandbox starts with the shipped CHT configuration (``cht_interop/cht/config``) installed: its
app settings (outbound push ``base_url`` pointed at the interop API, the interop client as the
push user) and its ``tasks.js``; the push password goes into the sandbox's credentials store
under each push's ``password_key``, never into the settings. The admin is ``CHT_USERNAME`` /
``CHT_PASSWORD``; without a password one is generated once and kept in the data dir, and ``up``
hands the same password to the mediator's settings.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from cht_interop.gateway.passwords import generate_password
from cht_interop.sandbox.app import create_sandbox_app
from cht_interop.sandbox.config import CHT_OUTBOUND_RETRY_SECONDS, SandboxConfig, TaskRules
from cht_interop.settings import Settings

ADMIN_SECRET_FILE = "cht-sandbox-admin.secret"
DATA_FILE = "cht-sandbox.sqlite3"
VAULT_KEY_FILE = "cht-sandbox.vault-key"


class ShippedConfigMissing(RuntimeError):
    """The packaged CHT configuration cannot be loaded, so the sandbox cannot start configured."""


def sandbox_admin_password(settings: Settings) -> str:
    """``CHT_PASSWORD``, or one generated on first use and kept (0600) in the data dir."""
    if settings.cht_password is not None:
        return settings.cht_password.get_secret_value()
    path = Path(settings.data_dir) / ADMIN_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = generate_password()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def load_shipped_configuration() -> tuple[dict[str, Any], TaskRules, dict[str, dict[str, str]]]:
    """App settings, task rules and custom translations of the packaged cht-conf project; fails
    with a clear message."""
    try:
        from cht_interop.cht.config_loader import CONFIG_DIR, ConfigError, load_app_config
    except ImportError as exc:
        raise ShippedConfigMissing(f"the packaged CHT configuration is not available: {exc}") from None
    try:
        app = load_app_config()
        rules = TaskRules.from_directory(CONFIG_DIR)
    except (ConfigError, OSError) as exc:
        raise ShippedConfigMissing(
            f"the packaged CHT configuration in {CONFIG_DIR} is incomplete: {exc}"
        ) from None
    return app.settings, rules, app.translations


def point_outbound(
    settings: dict[str, Any], *, base_url: str, username: str
) -> tuple[dict[str, Any], set[str]]:
    """Every outbound push sent to ``base_url`` as ``username``; returns the password keys used."""
    settings = copy.deepcopy(settings)
    keys: set[str] = set()
    for conf in (settings.get("outbound") or {}).values():
        destination = conf.setdefault("destination", {})
        destination["base_url"] = base_url
        auth = destination.get("auth")
        if isinstance(auth, dict) and str(auth.get("type", "")).lower() == "basic":
            auth["username"] = username
            if auth.get("password_key"):
                keys.add(str(auth["password_key"]))
    return settings, keys


def sandbox_config(
    settings: Settings,
    *,
    interop_url: str | None,
    interop_password: str | None,
    install: bool = True,
    outbound_retry_seconds: float = CHT_OUTBOUND_RETRY_SECONDS,
) -> SandboxConfig:
    data_dir = Path(settings.data_dir)
    app_settings: dict[str, Any] | None = None
    rules: TaskRules | None = None
    credentials: dict[str, str] = {}
    translations: dict[str, dict[str, str]] = {}
    if install:
        shipped, rules, translations = load_shipped_configuration()
        if interop_url is not None:
            app_settings, keys = point_outbound(
                shipped, base_url=interop_url, username=settings.interop_client_id
            )
            if interop_password is not None:
                credentials = dict.fromkeys(keys, interop_password)
        else:
            app_settings = shipped
    return SandboxConfig(
        data_path=data_dir / DATA_FILE,
        admin_username=settings.cht_username,
        admin_password=sandbox_admin_password(settings),
        app_settings=app_settings,
        task_rules=rules,
        credentials=credentials,
        translations=translations,
        outbound_retry_seconds=outbound_retry_seconds,
        key_path=data_dir / VAULT_KEY_FILE,
    )


def build_sandbox_for_up(settings: Settings, *, interop_url: str, interop_password: str) -> Starlette:
    """The sandbox ``up --cht-sandbox`` serves: shipped configuration, pushes to ``interop_url``."""
    return create_sandbox_app(
        sandbox_config(settings, interop_url=interop_url, interop_password=interop_password)
    )
