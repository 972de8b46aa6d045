"""Exactly one CHT record per follow-up, even when the outbox worker is killed mid-flight.

Real processes on loopback, as production runs them: the CHT sandbox (``cht-interop cht-sandbox``),
the API (``cht-interop serve``) and an outbox worker (``cht-interop worker``) on the test's database
(SQLite file or PostgreSQL). Follow-up lists go in while the worker is killed with SIGKILL at random
moments while the CHT answers a list's record writes, and started again; a killed worker's jobs
come back when their lease runs out, some of them after the CHT already stored their record. At
the end every follow-up is accepted and the CHT holds exactly one ``INTEROP_FOLLOW_UP`` record for
each, the one its Task names.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import free_port

pytestmark = pytest.mark.e2e

CLIENT = ("interop-client", "Reliability-interop-pw-1")
CHT_ADMIN = ("admin", "Reliability-Cht-admin-pw-1")
LISTS = 8  # follow-up lists sent while the worker is being killed
LIST_SIZE = 60
KILLS = 7
CHT_RECORD_SYSTEM = "urn:cht-interop:cht-record"
BULK_WRITE = '"POST /medic/_bulk_docs'  # the CHT's access log line of a record write
READ_BACK = '"POST /medic/_all_docs'  # … and of the read-back of records found there already


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHT_", "INTEROP_", "DATA_DIR", "DATABASE_URL", "DELIVERY_", "PORT"))
    }
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cht_interop", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def eventually(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Deployment:
    api: str
    cht: str
    worker_env: dict[str, str]
    logs: Path
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        self.worker = _start(["worker"], self.worker_env, self.logs / "worker.log")

    def kill_worker(self) -> None:
        assert self.worker is not None and self.worker.poll() is None, self.log("worker")
        os.kill(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def log_lines(self, name: str) -> list[str]:
        return (self.logs / f"{name}.log").read_text(errors="replace").splitlines()

    def record_writes(self) -> int:
        """How many record writes (``_bulk_docs`` requests) the CHT has answered so far."""
        return sum(1 for line in self.log_lines("cht") if BULK_WRITE in line)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    api_port, cht_port = free_port(), free_port()
    api, cht = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{cht_port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    common = {
        "INTEROP_CLIENT_PASSWORD": CLIENT[1],
        "CHT_USERNAME": CHT_ADMIN[0],
        "CHT_PASSWORD": CHT_ADMIN[1],
        "ACCESS_LOG": "false",
    }
    sandbox_env = _env(**common, DATA_DIR=str(tmp_path / "cht"))
    interop_env = _env(
        **common,
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp_path / "interop"),
        CHT_URL=cht,
        ALLOW_PRIVATE_CALLBACKS="true",
        DELIVERY_LEASE_SECONDS="2",  # a killed worker's jobs come back soon
        DELIVERY_POLL_SECONDS="0.05",
        DELIVERY_INITIAL_BACKOFF_SECONDS="0.2",
        DELIVERY_MAX_BACKOFF_SECONDS="1",
    )
    sandbox = _start(
        ["cht-sandbox", "--port", str(cht_port), "--interop-url", api], sandbox_env, logs / "cht.log"
    )
    serve = _start(["serve", "--port", str(api_port)], interop_env, logs / "serve.log")
    running = Deployment(api, cht, interop_env, logs)
    try:
        eventually(lambda: _answers(f"{cht}/sandbox/health"), "the CHT sandbox", 60)
        eventually(lambda: _answers(f"{api}/health/ready"), "the API", 60)
        running.start_worker()
        yield running
    finally:
        for proc in (running.worker, serve, sandbox):
            if proc is not None:
                _stop(proc)


def _ok(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200, 201)), (response.request.url, response.text[:2000])
    return response.json()


def register_requester(m: httpx.Client) -> str:
    endpoint = _ok(
        m.post(
            "/endpoint",
            json={
                "resourceType": "Endpoint",
                "status": "active",
                "identifier": [{"system": "official", "value": f"emr-{uuid.uuid4()}"}],
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "hl7-fhir-rest",
                },
                "payloadType": [{"text": "Encounter"}],
                "address": f"http://127.0.0.1:{free_port()}/emr/fhir",
            },
        )
    )
    identifier = f"facility-{uuid.uuid4()}"
    _ok(
        m.post(
            "/organization",
            json={
                "resourceType": "Organization",
                "identifier": [{"system": "official", "value": identifier}],
                "name": "Facility A",
                "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}],
            },
        )
    )
    return identifier


def push_patient(m: httpx.Client) -> str:
    patient = str(uuid.uuid4())
    _ok(
        m.post(
            "/patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": "cht", "use": "official", "value": patient}],
                "name": [{"use": "official", "family": "Patient", "given": ["Pat"]}],
                "gender": "female",
                "birthDate": "1990-04-01",
            },
        )
    )
    return patient


def follow_up_list(patients: list[str], requester: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient}"},
                    "requester": {"reference": f"Organization/{requester}"},
                    "reasonCode": [{"text": "Missed ART refill"}],
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
            for patient in patients
        ],
    }


def cht_follow_up_records(cht: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{cht}/medic/_find",
        json={"selector": {"type": "data_record", "form": "INTEROP_FOLLOW_UP"}, "limit": 100_000},
        auth=CHT_ADMIN,
        headers={"Accept": "application/json"},
        timeout=30,
    )
    docs: list[dict[str, Any]] = _ok(response, 200)["docs"]
    return docs


def tasks(api: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    with httpx.Client(auth=CLIENT, timeout=30) as f:
        url: str | None = f"{api}/fhir/Task?_count=500"
        while url:
            bundle = _ok(f.get(url), 200)
            found += [e["resource"] for e in bundle.get("entry", [])]
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def test_killing_the_worker_never_makes_a_second_cht_record(deployment: Deployment) -> None:
    rng = random.Random()
    total = LISTS * LIST_SIZE
    with httpx.Client(base_url=f"{deployment.api}/mediator", auth=CLIENT, timeout=60) as m:
        requester = register_requester(m)
        patients = [push_patient(m) for _ in range(total)]
        kills_left = KILLS
        for i in range(LISTS):
            chunk = patients[i * LIST_SIZE : (i + 1) * LIST_SIZE]
            written = deployment.record_writes()
            answer = _ok(m.post("/service-request", json=follow_up_list(chunk, requester)), 200)
            statuses = Counter(e["response"]["status"] for e in answer["entry"])
            assert statuses == {"201 Created": LIST_SIZE}, statuses
            if kills_left:
                # once the CHT answered a write of this list (it logs each as it answers), before or
                # while the worker records it: the list's records go in one or a few requests
                eventually(lambda w=written: deployment.record_writes() > w, "CHT writes to begin", 60)
                time.sleep(rng.uniform(0, 0.05))  # a random moment, not a wait for anything
                deployment.kill_worker()
                kills_left -= 1
                deployment.start_worker()

    def all_accepted() -> list[dict[str, Any]] | None:
        found = tasks(deployment.api)
        accepted = [t for t in found if t.get("status") == "accepted"]
        return accepted if len(accepted) == total else None

    accepted = eventually(all_accepted, f"all {total} follow-ups accepted", 90)
    records = cht_follow_up_records(deployment.cht)

    per_task = Counter(r["fields"]["task_id"] for r in records)
    duplicates = {task_id: n for task_id, n in per_task.items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} follow-ups with more than one CHT record"
    assert len(records) == total
    by_id = {r["_id"]: r for r in records}
    for task in accepted:
        (record_id,) = [
            i["value"] for i in task.get("identifier", []) if i.get("system") == CHT_RECORD_SYSTEM
        ]
        assert by_id[record_id]["fields"]["task_id"] == task["id"]
    # What the kills did (shown with -s): resends that found their record already in the CHT.
    lines = deployment.log_lines("cht")
    writes = sum(1 for line in lines if BULK_WRITE in line)
    read_backs = sum(1 for line in lines if READ_BACK in line)
    print(f"\n{KILLS} kills, {total} follow-ups, {writes} _bulk_docs writes, {read_backs} with conflicts")
