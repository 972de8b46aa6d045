"""`cht-interop up` makes the console's administrator: a generated password kept in
``admin.secret`` (0600) and printed once, or ADMIN_PASSWORD."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cht_interop.gateway.credentials import ADMIN_SECRET_FILE
from tests.support.live import free_port
from tests.test_up import _start, _stop_with_ctrl_c, _wait_ready

pytestmark = pytest.mark.e2e


def test_up_makes_an_admin_client_from_a_kept_secret_or_admin_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("ADMIN_CLIENT_ID", raising=False)
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    proc = _start(data_dir, port)
    try:
        _wait_ready(proc, base)
        secret = data_dir / ADMIN_SECRET_FILE
        assert secret.stat().st_mode & 0o777 == 0o600
        password = secret.read_text().strip()
        assert httpx.get(f"{base}/openapi.json").status_code == 401  # closed, as every non-health route
        described = httpx.get(f"{base}/openapi.json", auth=("admin", password))
        assert described.status_code == 200
        assert "/mediator/service-request" in described.json()["paths"]
        assert httpx.get(f"{base}/fhir/Patient", auth=("admin", password)).status_code == 200
    finally:
        first_output = _stop_with_ctrl_c(proc)
    assert first_output.count(password) == 1  # shown once, on the run that generated it

    proc = _start(data_dir, port, ADMIN_PASSWORD="chosen-admin-password")
    try:
        _wait_ready(proc, base)
        assert httpx.get(f"{base}/fhir/Patient", auth=("admin", "chosen-admin-password")).status_code == 200
        assert httpx.get(f"{base}/fhir/Patient", auth=("admin", password)).status_code == 401
    finally:
        second_output = _stop_with_ctrl_c(proc)
    assert "chosen-admin-password" not in second_output and password not in second_output
