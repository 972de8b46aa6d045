"""What a sandbox instance is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Sentinel's scheduler period (sentinel/src/schedule/index.js RUN_EVERY_MS)
CHT_OUTBOUND_RETRY_SECONDS = 5 * 60.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TaskRules:
    """A cht-conf ``tasks.js`` and the modules it requires (path relative to the project → source)."""

    modules: dict[str, str]
    entry: str = "tasks.js"

    @classmethod
    def from_directory(cls, directory: Path, entry: str = "tasks.js") -> TaskRules:
        """``entry`` and every other ``.js`` file of a cht-conf project (what ``require`` may reach)."""
        if not (directory / entry).is_file():
            raise FileNotFoundError(f"no {entry} in {directory}")
        modules = {
            path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(directory.rglob("*.js"))
            if "node_modules" not in path.relative_to(directory).parts
        }
        return cls(modules=modules, entry=entry)


@dataclass(frozen=True)
class SandboxConfig:
    """Where data lives, who the admin is, and what to install at start-up.

    ``app_settings`` (when given) replaces the stored settings at every start, as a fresh deploy of
    the configuration would; ``credentials`` are written into the vault at start-up.
    """

    data_path: Path
    admin_username: str
    admin_password: str
    app_settings: dict[str, Any] | None = None
    task_rules: TaskRules | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    # custom translations by language code, merged into ``messages-<code>`` at start-up
    translations: dict[str, dict[str, str]] = field(default_factory=dict)
    outbound_retry_seconds: float = CHT_OUTBOUND_RETRY_SECONDS
    outbound_timeout_seconds: float = 10.0
    key_path: Path | None = None  # vault key; default beside the data file
    session_secret: bytes | None = None  # CHW page cookie signing; random per process if unset
    clock: Callable[[], datetime] = _utcnow

    @property
    def resolved_key_path(self) -> Path:
        return self.key_path or self.data_path.with_suffix(".vault-key")
