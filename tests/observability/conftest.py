"""The real app with the CHT double (the LTFU tests' fixtures)."""

from __future__ import annotations

from tests.ltfu.conftest import app, cht, cht_server, client, drain, services, settings_overrides  # noqa: F401
