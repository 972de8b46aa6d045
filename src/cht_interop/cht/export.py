"""Write the shipped CHT configuration out as a cht-conf project that pushes to a given mediator.

The usual CHT workflow deploys a configuration with cht-conf (``compile-app-settings``,
``upload-app-settings``, ``upload-app-forms``, ``upload-custom-translations``). The shipped project
has a placeholder ``base_url`` for its outbound pushes; the exported copy has the mediator's real
URL (and push user) in both the settings source (``app_settings/base_settings.json``) and the
compiled ``app_settings.json``, so it is right whether or not cht-conf compiles it again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cht_interop.cht.config_loader import CONFIG_DIR
from cht_interop.cht.configure import configure_outbound

#: The settings files that carry the outbound pushes (source and compiled).
SETTINGS_FILES = ("app_settings/base_settings.json", "app_settings.json")


class ExportError(Exception):
    """The target or the URL will not do; nothing was written."""


def check_mediator_url(url: str) -> str:
    """An absolute http(s) URL without credentials (the push password lives in the CHT's store)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExportError(f"the mediator URL must be an absolute http(s) URL, not {url!r}")
    if parts.username or parts.password:
        raise ExportError("no credentials in the mediator URL: the CHT takes the push password by key")
    return url.rstrip("/")


def export_config(
    target: Path, *, mediator_url: str, username: str, source: Path = CONFIG_DIR, force: bool = False
) -> list[Path]:
    """Copy the cht-conf project to ``target`` with every push pointed at ``mediator_url``.

    ``target`` must be missing or empty unless ``force``. Returns the rewritten settings files.
    """
    base_url = check_mediator_url(mediator_url)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not force)):
        raise ExportError(f"{target} is not an empty directory (use --force to write over it)")
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "node_modules"),
        dirs_exist_ok=True,
    )
    rewritten = []
    for name in SETTINGS_FILES:
        path = target / name
        settings: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        pointed = configure_outbound(settings, base_url=base_url, username=username)
        path.write_text(json.dumps(pointed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        rewritten.append(path)
    return rewritten
