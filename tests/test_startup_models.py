"""The R4B models of every stored type are loaded while the app is built, and frozen with the
startup heap: the first request that writes a ServiceRequest no longer imports its model (74 ms on
a fast box, holding the event loop), and the models' objects stay out of the collector's passes.

Each check runs in a fresh interpreter: this test process has long imported the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cht_interop.fhir.registry import RESOURCE_TYPES

# what each fresh interpreter prints: the R4B model modules it has imported, by type
LOADED = 'sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("fhir.resources.R4B."))'
STORED = {name.lower() for name in RESOURCE_TYPES}

SERVE_STARTUP = f"""
import gc, json, sys
from cht_interop.app import create_app
from cht_interop.runner import freeze_startup_heap
from cht_interop.settings import Settings

create_app(Settings(), run_worker=False)  # as ``serve`` and ``up`` build it, before serving
freeze_startup_heap()
loaded = {LOADED}
from fhir.resources.R4B.servicerequest import ServiceRequest
reachable = any(o is ServiceRequest for o in gc.get_objects())  # the frozen heap is not listed
print(json.dumps({{"loaded": loaded, "collector_walks_service_request": reachable}}))
"""


def _run(code: str, tmp_path: Path) -> dict[str, Any]:
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_serves_startup_loads_every_stored_types_model_and_freezes_it(tmp_path: Path) -> None:
    result = _run(SERVE_STARTUP, tmp_path)
    assert set(result["loaded"]) >= STORED
    assert result["collector_walks_service_request"] is False


def test_the_workers_services_load_the_models_too(tmp_path: Path) -> None:
    code = f"""
import asyncio, json, sys
from cht_interop.app import build_services
from cht_interop.db.migrate import migrate_apart
from cht_interop.settings import Settings

settings = Settings()
migrate_apart(settings.resolved_database_url)
services = asyncio.run(build_services(settings))  # what ``worker`` builds before it delivers
print(json.dumps({{"loaded": {LOADED}}}))
"""
    assert set(_run(code, tmp_path)["loaded"]) >= STORED
