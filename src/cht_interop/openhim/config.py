"""The mediator config an administrator sets in the OpenHIM console: checked, applied to the running
process (``Settings.live``) and kept across restarts in ``DATA_DIR/openhim-config.json``.

The file overrides the environment for those fields only while OpenHIM is configured; it is
written atomically (a temporary file renamed over it) with mode 0600.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cht_interop.openhim.mediator import CONFIG_DEFS, ConfigDef
from cht_interop.settings import Settings

log = logging.getLogger(__name__)
FILE_NAME = "openhim-config.json"


def config_path(settings: Settings) -> Path:
    return settings.data_dir / FILE_NAME


def check(definition: ConfigDef, value: object) -> float | int:
    """The value if it is fit for ``definition``; ``ValueError`` with a reason otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{definition.param} must be a number, not {value!r}")
    if definition.integer:
        if value != int(value):
            raise ValueError(f"{definition.param} must be a whole number, not {value!r}")
        value = int(value)
    if definition.positive and value <= 0:
        raise ValueError(f"{definition.param} must be more than 0, not {value!r}")
    if value < definition.minimum:
        raise ValueError(f"{definition.param} must be at least {definition.minimum:g}, not {value!r}")
    return value if definition.integer else float(value)


def accepted(config: dict[str, Any]) -> tuple[dict[str, float | int], list[str]]:
    """The valid values of ours in ``config`` and a reason for each refused one (unknown keys are
    ignored: core only accepts keys with a config definition)."""
    values: dict[str, float | int] = {}
    refused: list[str] = []
    for definition in CONFIG_DEFS:
        if definition.param not in config:
            continue
        try:
            values[definition.param] = check(definition, config[definition.param])
        except ValueError as exc:
            refused.append(str(exc))
    return values, refused


def apply(settings: Settings, values: dict[str, float | int]) -> dict[str, float | int]:
    """Set ``values`` on ``settings.live``; the ones that changed, with their new value."""
    live = settings.live
    changed: dict[str, float | int] = {}
    for param, value in values.items():
        if getattr(live, param) != value:
            setattr(live, param, value)
            changed[param] = value
    return changed


def save(settings: Settings) -> None:
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    live = settings.live
    body = json.dumps({d.param: getattr(live, d.param) for d in CONFIG_DEFS}, indent=2, sort_keys=True)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(settings: Settings) -> None:
    """At start: apply the values kept from the last config OpenHIM delivered, if any."""
    path = config_path(settings)
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.warning("OpenHIM mediator config in %s not read (%s); using the environment", path, exc)
        return
    if not isinstance(stored, dict):
        log.warning("OpenHIM mediator config in %s is not an object; using the environment", path)
        return
    values, refused = accepted(stored)
    for reason in refused:
        log.warning("OpenHIM mediator config in %s: %s (ignored)", path, reason)
    apply(settings, values)


def receive(settings: Settings, config: dict[str, Any]) -> dict[str, float | int]:
    """A config delivered by a heartbeat: apply and keep the valid values; the changed ones."""
    values, refused = accepted(config)
    for reason in refused:
        log.warning("OpenHIM mediator config refused: %s", reason)
    changed = apply(settings, values)
    if changed:
        try:
            save(settings)
        except OSError as exc:
            log.warning("OpenHIM mediator config applied but not kept in %s: %s", config_path(settings), exc)
        log.info("OpenHIM mediator config applied: %s", ", ".join(f"{k}={v:g}" for k, v in changed.items()))
    return changed
