"""The facility's client against the real server on loopback: registration, single follow-ups,
LTFU lists (answered at once, and written in the background), reading, cancelling, errors, and
the callback reaching the facility's function through ``CallbackReceiver``."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from cht_interop.client import (
    AsyncInteropClient,
    CallbackReceiver,
    FollowUpStatus,
    InteropClient,
    InteropError,
    service_request,
)
from tests.client.conftest import PASSWORD, SYNC_MAX, Inbox
from tests.ltfu.conftest import encounter_body, patient_body

pytestmark = pytest.mark.e2e


async def push_patients(server: str, count: int) -> list[str]:
    """The CHT's outbound push of ``count`` patients (what makes them known to the server)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with httpx.AsyncClient(base_url=server, auth=("interop-client", PASSWORD)) as http:
        for cht_id in ids:
            res = await http.post("/mediator/patient", json=patient_body(cht_id))
            assert res.status_code == 201, res.text
    return ids


async def until(client: AsyncInteropClient, task: str, status: str, within: float = 20) -> FollowUpStatus:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await client.follow_up(task)
        if found is not None and found.status == status:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task} never became {status}")


async def test_register_request_read_and_cancel(server: str, callback: tuple[CallbackReceiver, str]) -> None:
    _receiver, url = callback
    (patient,) = await push_patients(server, 1)
    async with AsyncInteropClient(server, "interop-client", PASSWORD) as client:
        registration = await client.register("clinic-1", "Clinic One", url)
        again = await client.register("clinic-1", "Clinic One", url)
        assert again == registration  # deduplicated by identifier: safe at every start

        sr = service_request(patient, "clinic-1", reason="Missed ART refill", identifier=("urn:emr", "v-1"))
        first = await client.request_follow_up(sr)
        assert first.status == 201 and first.service_request_id and first.subscription_id
        assert first.task is not None and first.task.startswith("Task/")
        same = await client.request_follow_up(sr)
        assert (same.status, same.service_request_id) == (200, first.service_request_id)

        accepted = await until(client, first.task, "accepted")
        assert accepted.service_request_id == first.service_request_id
        assert accepted.is_open and accepted.follow_up_id
        by_id = await client.follow_up_by_id(accepted.follow_up_id)
        assert by_id is not None and by_id.task_id == accepted.task_id

        revoked = await client.cancel(first.service_request_id, "Transferred out")
        assert revoked["status"] == "revoked"
        cancelled = await client.follow_up(first.task)
        assert cancelled is not None
        assert (cancelled.status, cancelled.reason) == ("cancelled", "Transferred out")
        assert (await client.read_service_request(first.service_request_id))["status"] == "revoked"


async def test_errors_carry_the_servers_outcome(server: str) -> None:
    async with AsyncInteropClient(server, "interop-client", PASSWORD) as client:
        with pytest.raises(InteropError) as bad:
            await client.request_follow_up(service_request("no-such-patient", "clinic-x"))
        assert bad.value.status in (400, 404)
        assert bad.value.outcome is not None and bad.value.message
        assert bad.value.message in str(bad.value)
        with pytest.raises(InteropError) as refused:
            await client.register("clinic-2", "Clinic Two", "ftp://example.org/cb")
        assert refused.value.status == 400 and "http or https" in refused.value.message
        with pytest.raises(InteropError) as unknown:
            await client.cancel("does-not-exist")
        assert unknown.value.status == 404 and "is not known" in unknown.value.message
    async with AsyncInteropClient(server, "interop-client", "wrong-password") as intruder:
        with pytest.raises(InteropError) as denied:
            await intruder.read_service_request("1")
        assert denied.value.status == 401


async def test_a_short_list_is_answered_entry_by_entry(
    server: str, callback: tuple[CallbackReceiver, str]
) -> None:
    _receiver, url = callback
    patients = await push_patients(server, 2)
    async with AsyncInteropClient(server, "interop-client", PASSWORD) as client:
        await client.register("clinic-1", "Clinic One", url)
        entries = [service_request(p, "clinic-1") for p in patients]
        entries.append(service_request("unknown-patient", "clinic-1"))
        result = await client.submit_list(entries)
    assert result.list_id is None and result.polls == 0
    assert [s.status for s in result.submissions] == [201, 201, 404]
    ((n, failed),) = result.failed
    assert n == 2 and failed.error and "unknown-patient" in failed.error
    assert all(s.task and s.task.startswith("Task/") for s in result.submissions[:2])


async def test_a_long_list_is_followed_to_its_end(
    server: str, callback: tuple[CallbackReceiver, str]
) -> None:
    _receiver, url = callback
    patients = await push_patients(server, SYNC_MAX + 3)
    progress: list[tuple[int, int]] = []
    async with AsyncInteropClient(server, "interop-client", PASSWORD) as client:
        await client.register("clinic-1", "Clinic One", url)
        result = await client.submit_list(
            [service_request(p, "clinic-1") for p in patients],
            poll_seconds=0.05,
            on_progress=lambda done, total: progress.append((done, total)),
        )
        assert result.list_id and result.status_url and result.status_url.endswith(result.list_id)
        assert result.polls >= 1
        assert [s.status for s in result.submissions] == [201] * len(patients)
        assert progress[-1] == (len(patients), len(patients))
        statuses = await client.follow_ups([str(s.task) for s in result.submissions])
        assert all(s is not None and s.status in ("requested", "accepted") for s in statuses)
        assert {s.service_request_id for s in statuses if s} == {
            s.service_request_id for s in result.submissions
        }


async def test_the_chws_answer_reaches_the_facilitys_function_once(
    server: str, callback: tuple[CallbackReceiver, str], inbox: Inbox
) -> None:
    receiver, url = callback
    (patient,) = await push_patients(server, 1)
    async with AsyncInteropClient(server, "interop-client", PASSWORD) as client:
        await client.register("clinic-1", "Clinic One", url)
        started = await client.request_follow_up(service_request(patient, "clinic-1"))
        assert started.task is not None and started.service_request_id is not None
        await until(client, started.task, "accepted")
        # the CHT pushes the CHW's report
        report = encounter_body(
            patient, "report-1", basedOn=[{"reference": f"ServiceRequest/{started.service_request_id}"}]
        )
        res = await client.http.post("/mediator/encounter", json=report)
        assert res.status_code == 201, res.text
        ((encounter, note),) = await asyncio.to_thread(inbox.wait_for, 1)
        assert encounter["resourceType"] == "Encounter" and encounter["id"] == res.json()["id"]
        assert note.notification_id and note.path == f"/fhir/Encounter/{encounter['id']}"
        done = await until(client, started.task, "completed")
        assert done.encounter_id == encounter["id"]
        assert (await client.read_service_request(started.service_request_id))["status"] == "completed"
    await asyncio.sleep(0.3)
    assert len(inbox.items) == 1 and receiver.duplicates == 0


def test_the_blocking_client(server: str, callback: tuple[CallbackReceiver, str]) -> None:
    _receiver, url = callback
    (patient,) = asyncio.run(push_patients(server, 1))
    with InteropClient(server, "interop-client", PASSWORD) as client:
        registration = client.register("clinic-9", "Clinic Nine", url)
        assert registration.organization_identifier == "clinic-9"
        started = client.request_follow_up(service_request(patient, "clinic-9"))
        assert started.status == 201 and started.task
        found: Any = client.follow_up(started.task)
        assert found is not None and found.service_request_id == started.service_request_id
        result = client.submit_list([service_request(patient, "clinic-9")])
        assert [s.status for s in result.submissions] == [200]
    with pytest.raises(RuntimeError, match="with"):
        client.follow_up("Task/1")
