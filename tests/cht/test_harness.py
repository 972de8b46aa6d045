"""The shipped CHT configuration under the CHT's own tools: cht-conf and cht-conf-test-harness.

cht-conf converts the XLSForm and compiles the task rule from a copy of ``cht/config``; the
committed XForm and ``app_settings.json`` must be what it produces (the runtime uses them without
Node). Then the harness specs in ``tests/cht/harness/specs`` run the compiled configuration in
the real CHT rules engine and form engine (Chromium). Never skipped: missing tools fail with a
message naming ``.ci/setup-extra``, which installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cht_interop.cht.config_loader import COMPILED_KEYS, CONFIG_DIR

pytestmark = pytest.mark.harness

HARNESS_DIR = Path(__file__).parent / "harness"
NODE_BIN = HARNESS_DIR / "node_modules" / ".bin"
TRACE = HARNESS_DIR / "trace.json"
STATS_JSON = HARNESS_DIR / "node_modules" / "puppeteer-chromium-resolver" / ".stats.json"
SETUP_HINT = (
    "run .ci/setup-extra (apt-get chromium xsltproc, npm ci in tests/cht/harness, the .stats.json fix)"
)

EXPECTED_SPECS = {
    "shows no task before any follow-up record",
    "gives the CHW a task from the record, completed by the app form, which clears it",
    "accepts every outcome and method the contract names",
    "gives one task when the mediator sends the same follow-up record twice",
    "clears the task when the mediator cancels the follow-up",
    "keeps the task when a cancel names another service request",
    "keeps the task when only an older follow-up form exists for the patient",
    "stays Ready through the window and fails after it",
    # specs/outbound-push.spec.js: the outbound mapping, evaluated as Sentinel does, on the form's report
    "pushes the complete report as the contract says",
    "pushes the report without throwing whichever optional part it lacks",
    "pushes nothing, and throws nothing, for a report that names no patient",
}


@dataclass(frozen=True)
class Compiled:
    directory: Path
    output: str


def _require_tools() -> None:
    missing = [str(path) for path in (NODE_BIN / "cht", NODE_BIN / "mocha") if not path.exists()]
    if shutil.which("xsltproc") is None:
        missing.append("xsltproc")
    if shutil.which("python3") is None:
        missing.append("python3 (cht-conf's xls2xform)")
    try:
        chromium = json.loads(STATS_JSON.read_text())["executablePath"]
    except (OSError, ValueError, KeyError):
        missing.append(f"{STATS_JSON} naming the Chromium executable")
    else:
        if not Path(chromium).exists():
            missing.append(f"Chromium at {chromium}")
    if missing:
        pytest.fail(f"cht-conf-test-harness cannot run, missing: {', '.join(missing)}; {SETUP_HINT}")


def _run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """A copy of the shipped project, converted and compiled by cht-conf."""
    _require_tools()
    directory = tmp_path_factory.mktemp("cht-config") / "config"
    shutil.copytree(
        CONFIG_DIR,
        directory,
        ignore=shutil.ignore_patterns("node_modules", "app_settings.json", "*.xml"),
    )
    output = _run(
        [
            str(NODE_BIN / "cht"),
            "--skip-dependency-check",
            "--skip-git-check",
            "convert-app-forms",
            "compile-app-settings",
        ],
        cwd=directory,
        timeout=180,
    )
    return Compiled(directory=directory, output=output)


def test_the_committed_xform_is_what_cht_conf_makes_of_the_xlsform(compiled: Compiled) -> None:
    converted = (compiled.directory / "forms" / "app" / "interop_follow_up.xml").read_text()
    committed = (CONFIG_DIR / "forms" / "app" / "interop_follow_up.xml").read_text()
    assert converted == committed, "regenerate: cd src/cht_interop/cht/config && cht convert-app-forms"


def test_the_committed_app_settings_hold_the_current_settings_parts(compiled: Compiled) -> None:
    # The compiled task rules and contact summary depend on where cht-conf sits relative to the
    # project (webpack module ids), so they are checked by behaviour: the harness runs both.
    fresh = json.loads((compiled.directory / "app_settings.json").read_text())
    committed = json.loads((CONFIG_DIR / "app_settings.json").read_text())
    for key in COMPILED_KEYS:
        fresh.pop(key)
        committed.pop(key)
    assert fresh == committed, "recompile: cd src/cht_interop/cht/config && cht compile-app-settings"


@pytest.mark.parametrize("which", ["freshly compiled", "committed"])
def test_the_harness_scenarios_pass_in_the_cht_rules_and_form_engines(
    compiled: Compiled, tmp_path: Path, which: str
) -> None:
    report_path = tmp_path / "mocha.json"
    directory = compiled.directory if which == "freshly compiled" else CONFIG_DIR
    trace_path = tmp_path / "trace.json"
    env = {**os.environ, "CHT_CONFIG_DIR": str(directory), "CHT_HARNESS_TRACE": str(trace_path)}
    result = subprocess.run(
        [
            str(NODE_BIN / "mocha"),
            "--timeout",
            "120000",
            "--reporter",
            "json",
            "--reporter-option",
            f"output={report_path}",
            "specs",
        ],
        cwd=HARNESS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert report_path.exists(), f"mocha wrote no report ({result.returncode}):\n{result.stderr[-4000:]}"
    report = json.loads(report_path.read_text())
    failures = {test["title"]: test["err"].get("message", "") for test in report["failures"]}
    assert failures == {}, failures
    assert {test["title"] for test in report["passes"]} == EXPECTED_SPECS
    assert result.returncode == 0
    # What the CHT computed, step by step: the fixture the sandbox's task list is held to.
    assert json.loads(trace_path.read_text()) == json.loads(TRACE.read_text()), (
        f"the harness trace changed; if intended: cp {trace_path} {TRACE}"
    )
