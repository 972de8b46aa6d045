"""``cht-interop cht configure`` against the CHT sandbox on real loopback HTTP, as a user runs it.

The sandbox starts as a deployment of the reference project (its app settings installed); the
command, run as its own process, shows the change on ``--dry-run`` without writing, applies it,
and then finds nothing left to change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.sandbox.app import create_sandbox_app
from cht_interop.sandbox.config import SandboxConfig
from cht_interop.sandbox.guards import SandboxState
from tests.fixtures.reference_deployment import reference_app_settings
from tests.support.live import serve_in_thread

ADMIN = ("admin", "Sandbox-Admin-pw-1")
PUSH_PASSWORD = "Push-pw-for-interop-1"
MEDIATOR_URL = "https://interop.example.org"  # where the deployed CHT must push (PUBLIC_BASE_URL)


class Cht:
    def __init__(self, url: str, state: SandboxState) -> None:
        self.url = url
        self.state = state

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=ADMIN, headers={"Accept": "application/json"})

    def settings(self) -> dict[str, Any]:
        response = self.get("/api/v1/settings")
        assert response.status_code == 200
        settings: dict[str, Any] = response.json()
        return settings


@pytest.fixture
def cht(tmp_path: Path) -> Iterator[Cht]:
    settings = reference_app_settings()
    config = SandboxConfig(
        data_path=tmp_path / "cht-sandbox.sqlite3",
        admin_username=ADMIN[0],
        admin_password=ADMIN[1],
        app_settings=settings,
    )
    app = create_sandbox_app(config)
    with serve_in_thread(app) as url:
        yield Cht(url, app.state.sandbox)


def configure(cht: Cht, cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "CHT_USERNAME": ADMIN[0],
        "CHT_PASSWORD": ADMIN[1],
        "INTEROP_CLIENT_PASSWORD": PUSH_PASSWORD,
        "PUBLIC_BASE_URL": MEDIATOR_URL,
        "COLUMNS": "250",
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cht_interop", "cht", "configure", "--cht-url", cht.url, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dry_run_shows_the_change_apply_writes_it_and_a_second_run_shows_none(
    cht: Cht, tmp_path: Path
) -> None:
    before = cht.settings()

    dry = configure(cht, tmp_path, "--dry-run")
    assert '+    "INTEROP_FOLLOW_UP_CANCEL": {' in dry
    assert '-          "password_key": "openhim1"' in dry
    assert "form:interop_follow_up" in dry and "new" in dry
    assert "dry run: nothing written" in dry
    assert cht.settings() == before
    assert cht.get("/medic/form:interop_follow_up").status_code == 404
    assert cht.state.sandbox.vault.get("interop-client") is None
    assert "messages-en" in dry
    assert cht.get("/medic/messages-en").status_code == 404

    applied = configure(cht, tmp_path)
    assert "configuration applied" in applied
    assert "password stored in the CHT credentials store" in applied
    after = cht.settings()
    assert set(after["forms"]) == {"INTEROP_FOLLOW_UP", "INTEROP_FOLLOW_UP_CANCEL"}
    assert after["outbound"]["FHIR_encounter"]["destination"]["auth"]["password_key"] == "interop-client"
    for name in ("FHIR_patient", "FHIR_encounter"):
        assert after["outbound"][name]["destination"]["base_url"] == MEDIATOR_URL
    assert "FHIR_practitioner" in after["outbound"]  # the deployment's own push is kept
    assert PUSH_PASSWORD not in json.dumps(after)
    assert cht.state.sandbox.vault.get("interop-client") == PUSH_PASSWORD
    form = cht.get("/medic/form:interop_follow_up").json()
    assert form["type"] == "form" and form["internalId"] == "interop_follow_up"
    settings_rev = cht.get("/medic/settings").json()["_rev"]
    # the CHW sees a title, not the key (cht-core reads messages-<code>: generic, then custom over it)
    messages = cht.get("/medic/messages-en").json()
    assert messages["type"] == "translations" and messages["code"] == "en" and messages["enabled"] is True
    assert messages["custom"]["task.interop_follow_up.title"] == "LTFU follow-up"

    again = configure(cht, tmp_path, "--dry-run")
    assert "App settings: no change" in again
    assert "no change" in again.split("form:interop_follow_up", 1)[1]
    assert "+    " not in again

    configure(cht, tmp_path)
    assert cht.get("/medic/settings").json()["_rev"] == settings_rev
    assert cht.get("/medic/form:interop_follow_up").json()["_rev"] == form["_rev"]
    assert cht.get("/medic/messages-en").json()["_rev"] == messages["_rev"]


def test_configure_merges_its_translations_into_the_deployments_own(cht: Cht, tmp_path: Path) -> None:
    own = {
        "_id": "messages-en",
        "type": "translations",
        "code": "en",
        "name": "English",
        "enabled": True,
        "generic": {"contact.type.person": "Person"},
        "custom": {"their.key": "Theirs", "task.interop_follow_up.title": "Old title"},
    }
    created = httpx.put(
        f"{cht.url}/medic/messages-en", json=own, auth=ADMIN, headers={"Accept": "application/json"}
    )
    assert created.status_code == 201, created.text

    configure(cht, tmp_path)

    messages = cht.get("/medic/messages-en").json()
    assert messages["generic"] == own["generic"]
    assert messages["custom"] == {
        "their.key": "Theirs",
        "task.interop_follow_up.title": "LTFU follow-up",
        "form.interop_follow_up.title": "LTFU follow-up request",
        "form.interop_follow_up_cancel.title": "LTFU follow-up cancelled",
    }
