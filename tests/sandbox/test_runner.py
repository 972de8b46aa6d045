"""The sandbox as ``up --cht-sandbox`` and ``cht-interop cht-sandbox`` start it."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from cht_interop.cht import config_loader
from cht_interop.sandbox.runner import (
    ADMIN_SECRET_FILE,
    ShippedConfigMissing,
    build_sandbox_for_up,
    sandbox_admin_password,
)
from cht_interop.settings import Settings
from tests.sandbox.conftest import JSON, POST_JSON, basic
from tests.support.live import free_port, run_process


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, DATA_DIR=tmp_path / "data", **values)  # type: ignore[call-arg]


async def test_up_sandbox_has_the_shipped_configuration_pointed_at_the_interop_api(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    app = build_sandbox_for_up(settings, interop_url="http://127.0.0.1:5999", interop_password="Interop-pw-1")
    password = (tmp_path / "data" / ADMIN_SECRET_FILE).read_text().strip()
    assert oct((tmp_path / "data" / ADMIN_SECRET_FILE).stat().st_mode & 0o777) == "0o600"
    async with app.router.lifespan_context(app):
        state = app.state.sandbox
        installed = state.sandbox.settings()
        shipped = config_loader.load_app_config().settings
        assert set(installed["forms"]) == set(shipped["forms"])
        for conf in installed["outbound"].values():
            assert conf["destination"]["base_url"] == "http://127.0.0.1:5999"
            assert conf["destination"]["auth"]["username"] == "interop-client"
            assert state.sandbox.vault.get(conf["destination"]["auth"]["password_key"]) == "Interop-pw-1"
        assert "Interop-pw-1" not in str(installed)
        assert state.sandbox.task_rules() is not None
        assert state.sandbox.store.path == str(tmp_path / "data" / "cht-sandbox.sqlite3")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            r = await client.get(
                "/sandbox/api/tasks?user=admin", headers={**JSON, **basic("admin", password)}
            )
            assert r.status_code == 200 and r.json()["tasks"] == []
    # a restart on the same data dir keeps the admin password
    assert sandbox_admin_password(settings) == password
    assert sandbox_admin_password(_settings(tmp_path, CHT_PASSWORD="given-pw")) == "given-pw"


def test_missing_shipped_configuration_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise config_loader.ConfigError("missing app_settings/base_settings.json")

    monkeypatch.setattr(config_loader, "load_app_config", broken)
    with pytest.raises(
        ShippedConfigMissing, match=re.escape("incomplete: missing app_settings/base_settings.json")
    ):
        build_sandbox_for_up(_settings(tmp_path), interop_url="http://x", interop_password="p")


@pytest.mark.e2e
def test_cht_sandbox_command_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "INTEROP_", "DATA_DIR", "DATABASE_URL"))
    }
    env.update({"CHT_USERNAME": "medic", "CHT_PASSWORD": "Medic-admin-pw-1"})
    args = ["cht-sandbox", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    with run_process(args, env=env, ready_url=f"{base}/sandbox/health"):
        auth = basic("medic", "Medic-admin-pw-1")
        r = httpx.post(
            f"{base}/api/v1/people",
            json={"name": "Via CLI", "role": "patient"},
            headers={**POST_JSON, **auth},
        )
        assert r.status_code == 200 and r.json()["ok"] is True
        r = httpx.get(f"{base}/api/v1/settings", headers={**JSON, **auth})
        assert "INTEROP_FOLLOW_UP" in r.json()["forms"]
        r = httpx.get(f"{base}/api/v1/settings", headers={**JSON, **basic("medic", "wrong")})
        assert r.status_code == 401
    assert (tmp_path / "d" / "cht-sandbox.sqlite3").exists()


@pytest.mark.e2e
def test_up_with_cht_sandbox_pushes_patients_to_the_interop_api(tmp_path: Path) -> None:
    """``up --cht-sandbox``: the mediator's CHT password is the sandbox admin's, and the sandbox's
    outbound push reaches the interop API with the interop client's credentials."""
    api_port, cht_port = free_port(), free_port()
    api, cht = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{cht_port}"
    data = tmp_path / "data"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "INTEROP_", "DATA_DIR", "DATABASE_URL"))
    }
    args = [
        "up",
        "--port",
        str(api_port),
        "--data-dir",
        str(data),
        "--cht-sandbox",
        "--cht-sandbox-port",
        str(cht_port),
    ]
    with run_process(args, env=env, ready_url=f"{api}/health/ready"):
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{cht}/sandbox/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sandbox did not start"
            time.sleep(0.1)
        admin = basic("admin", (data / ADMIN_SECRET_FILE).read_text().strip())
        r = httpx.post(
            f"{cht}/api/v1/people",
            json={
                "name": "Up Patient",
                "type": "person",
                "role": "patient",
                "sex": "male",
                "date_of_birth": "1999-09-09",
            },
            headers={**POST_JSON, **admin},
        )
        assert r.status_code == 200
        patient_id = r.json()["id"]
        client_password = (data / "interop-client.secret").read_text().strip()
        found: list[dict] = []
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline:
            r = httpx.get(
                f"{api}/fhir/Patient?identifier={patient_id}",
                auth=("interop-client", client_password),
                headers={"Accept": "application/fhir+json"},
            )
            found = [e["resource"] for e in r.json().get("entry", [])] if r.status_code == 200 else []
            time.sleep(0.2)
        assert found, "the Patient pushed by the sandbox did not reach the interop API"
        assert found[0]["gender"] == "male" and found[0]["birthDate"] == "1999-09-09"
