"""``cht-interop cht export-config``: the shipped project as a cht-conf project pushing to the real
mediator, checked as an implementer deploys it: cht-conf ``compile-app-settings`` (offline) must
produce settings whose outbound pushes carry the URL, and cht-conf's upload reads that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cht_interop.cht.config_loader import CONFIG_DIR, load_app_config

from .test_harness import NODE_BIN, SETUP_HINT

MEDIATOR = "https://interop.example.org:8443/base"


def export(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INTEROP_CLIENT_ID": "interop-push", "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cht_interop", "cht", "export-config", str(target), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def destinations(settings: dict[str, object]) -> dict[str, tuple[str, str, str]]:
    outbound = settings["outbound"]
    assert isinstance(outbound, dict)
    return {
        name: (
            push["destination"]["base_url"],
            push["destination"]["auth"]["username"],
            push["destination"]["auth"]["password_key"],
        )
        for name, push in outbound.items()
    }


def test_the_export_is_the_shipped_project_pointed_at_the_mediator(tmp_path: Path) -> None:
    target = tmp_path / "ltfu-config"
    result = export(target, "--mediator-url", MEDIATOR + "/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upload-custom-translations" in result.stdout

    exported, shipped = load_app_config(target), load_app_config()
    wanted = (MEDIATOR, "interop-push", "interop-client")
    assert destinations(exported.settings) == {"FHIR_patient": wanted, "FHIR_encounter": wanted}
    compiled = json.loads((target / "app_settings.json").read_text())
    assert destinations(compiled) == {"FHIR_patient": wanted, "FHIR_encounter": wanted}
    # everything else as shipped: the forms, the task rules, the translations, the mappings
    assert exported.forms == shipped.forms
    assert exported.tasks_js == shipped.tasks_js
    assert exported.translations == shipped.translations
    for name, push in exported.settings["outbound"].items():
        assert push["mapping"] == shipped.settings["outbound"][name]["mapping"]
    assert (target / ".eslintrc").read_text() == (CONFIG_DIR / ".eslintrc").read_text()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("interop.example.org", "absolute http(s) URL"),
        ("ftp://interop.example.org", "absolute http(s) URL"),
        ("https://user:pw@interop.example.org", "no credentials"),
    ],
)
def test_a_bad_mediator_url_writes_nothing(tmp_path: Path, url: str, message: str) -> None:
    result = export(tmp_path / "out", "--mediator-url", url)
    assert result.returncode == 2
    assert message in result.stdout
    assert not (tmp_path / "out").exists()


def test_a_directory_with_files_is_not_written_over_without_force(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    refused = export(tmp_path, "--mediator-url", MEDIATOR)
    assert refused.returncode == 2 and "--force" in refused.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    forced = export(tmp_path, "--mediator-url", MEDIATOR, "--force")
    assert forced.returncode == 0
    assert (tmp_path / "mine.txt").read_text() == "keep" and (tmp_path / "tasks.js").exists()


@pytest.mark.harness
def test_cht_conf_compiles_the_export_with_the_mediator_url(tmp_path: Path) -> None:
    cht = NODE_BIN / "cht"
    if not cht.exists():
        pytest.fail(f"cht-conf is missing; {SETUP_HINT}")
    target = tmp_path / "ltfu-config"
    assert export(target, "--mediator-url", MEDIATOR).returncode == 0
    (target / "app_settings.json").unlink()  # compiled afresh by cht-conf from the sources

    result = subprocess.run(
        [str(cht), "--skip-dependency-check", "--skip-git-check", "compile-app-settings"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    compiled = json.loads((target / "app_settings.json").read_text())
    wanted = (MEDIATOR, "interop-push", "interop-client")
    assert destinations(compiled) == {"FHIR_patient": wanted, "FHIR_encounter": wanted}
    assert compiled["tasks"]["rules"]  # the task rules compiled from tasks.js
    assert set(compiled["forms"]) == {"INTEROP_FOLLOW_UP", "INTEROP_FOLLOW_UP_CANCEL"}
