"""The README as a reader uses it: its curl examples run unchanged against a real `up`, and its
settings table lists every setting there is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from cht_interop.settings import Settings
from tests.support.live import free_port, run_process
from tests.support.receiver import callback_receiver

README = Path(__file__).resolve().parents[2] / "README.md"
FLOW_SECTION = "## Try the whole flow with curl"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.S | re.M)


def test_the_settings_table_lists_every_setting() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| (.+?) \|$", _section("## Configuration"), flags=re.M)
    listed = [name for name, _default, _meaning in rows]
    fields = {field.alias for field in Settings.model_fields.values()}
    assert len(listed) == len(set(listed)), "a setting is listed twice"
    assert set(listed) == fields, {"missing": fields - set(listed), "not settings": set(listed) - fields}
    for name, default, meaning in rows:
        assert default.strip() and meaning.strip(), name
    defaults = {f.alias: f.default for f in Settings.model_fields.values()}
    for name, default, _meaning in rows:  # a number in the table is the real default
        shown = re.match(r"`(-?[\d.]+)`", default)
        if shown is not None:
            assert float(shown.group(1)) == float(defaults[name]), name


@pytest.mark.e2e
def test_the_curl_examples_run_as_written(tmp_path: Path) -> None:
    """Every bash block of the flow section, in order, in one bash: as a reader pastes them."""
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is needed by the README's examples (.ci/setup-extra installs it)"
    section = _section(FLOW_SECTION)
    (setup,) = _blocks(section, "sh")
    assert re.findall(r"^export (\w+)=", setup, flags=re.M) == ["BASE", "AUTH", "CALLBACK"]
    script = "\n".join(_blocks(section, "bash"))
    assert script.count("curl") >= 9

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    password = "readme-flow-password"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INTEROP_", "DATABASE_URL", "DATA_DIR", "CHT_"))
    }
    env["INTEROP_CLIENT_PASSWORD"] = password
    with (
        callback_receiver() as (receiver, receiver_url),
        run_process(
            ["up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env=env,
            ready_url=f"{base}/health/ready",
        ),
    ):
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env={
                **env,
                "BASE": base,
                "AUTH": f"interop-client:{password}",
                "CALLBACK": f"{receiver_url}/fhir",
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        (callback,) = receiver.wait_for(1)
        encounters = httpx.get(f"{base}/fhir/Encounter", auth=("interop-client", password)).json()
    out = run.stdout
    assert '"resourceType": "Subscription"' in out and '"status": "active"' in out
    assert '"status": "201 Created"' in out  # the list's follow-up, from its status URL
    assert "\ncompleted\n" in out  # the Task after the Encounter
    assert '"status": "revoked"' in out  # the cancelled list follow-up
    (encounter,) = [e["resource"] for e in encounters["entry"]]
    assert callback.method == "PUT" and callback.path == f"/fhir/Encounter/{encounter['id']}"
    assert callback.headers["if-match"] == f'"{encounter["meta"]["versionId"]}"'
    assert callback.headers["x-notification-id"]
