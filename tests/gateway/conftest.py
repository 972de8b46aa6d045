"""The gateway's tests never read the developer's ADMIN_* settings (as ``tests/conftest.py`` does
for the others)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ADMIN_PASSWORD", "ADMIN_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
