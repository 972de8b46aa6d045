"""The callback receiver's answers, judged by HAPI's rule for a delivered notification (the
server's own ``reply_failure``), and its duplicate handling."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cht_interop.client import CallbackReceiver, Notification
from cht_interop.fhir.subscriptions.delivery import reply_failure


def encounter(rid: str = "42", version: str = "1") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": rid, "meta": {"versionId": version}, "status": "finished"}


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[dict[str, Any], Notification]] = []
        self.fail = fail
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def __call__(self, resource: dict[str, Any], note: Notification) -> None:
        self.calls.append((resource, note))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the facility's database is down")


def client_of(receiver: CallbackReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app), base_url="http://emr")


async def notify(
    http: httpx.AsyncClient, resource: dict[str, Any], notification_id: str | None, path: str = "/fhir"
) -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json; charset=UTF-8"}
    headers["If-Match"] = f'"{resource["meta"]["versionId"]}"'
    if notification_id:
        headers["X-Notification-Id"] = notification_id
    return await http.put(f"{path}/Encounter/{resource['id']}", json=resource, headers=headers)


def delivered(response: httpx.Response) -> bool:
    return (
        reply_failure(response.status_code, response.headers.get("content-type", ""), response.content)
        is None
    )


async def test_a_notification_is_handed_over_and_answered_as_delivered() -> None:
    recorder = Recorder()
    receiver = CallbackReceiver(recorder)
    async with client_of(receiver) as http:
        res = await notify(http, encounter(), "n-1")
    assert res.status_code == 200 and res.content == b"" and delivered(res)
    ((resource, note),) = recorder.calls
    assert resource == encounter()
    assert note == Notification("n-1", "Encounter", "42", "1", "/fhir/Encounter/42")


async def test_duplicates_are_dropped_by_notification_id() -> None:
    recorder = Recorder()
    receiver = CallbackReceiver(recorder)
    async with client_of(receiver) as http:
        answers = [await notify(http, encounter(), "n-1") for _ in range(3)]
        other = await notify(http, encounter(), "n-2")  # the same version notified again, on purpose
    assert all(delivered(a) for a in [*answers, other])
    assert [n.notification_id for _r, n in recorder.calls] == ["n-1", "n-2"]
    assert receiver.duplicates == 2


async def test_without_a_notification_id_duplicates_are_dropped_by_version() -> None:
    recorder = Recorder()
    receiver = CallbackReceiver(recorder)
    async with client_of(receiver) as http:
        await notify(http, encounter(version="1"), None)
        await notify(http, encounter(version="1"), None)
        await notify(http, encounter(version="2"), None)
    assert [r["meta"]["versionId"] for r, _n in recorder.calls] == ["1", "2"]


async def test_a_duplicate_during_the_first_delivery_waits_for_it() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    receiver = CallbackReceiver(recorder)
    async with client_of(receiver) as http:
        first = asyncio.create_task(notify(http, encounter(), "n-1"))
        await recorder.called.wait()
        second = asyncio.create_task(notify(http, encounter(), "n-1"))
        await asyncio.sleep(0.05)
        assert not second.done()  # not answered "delivered" before the first is handled
        recorder.gate.set()
        answers = await asyncio.gather(first, second)
    assert [a.status_code for a in answers] == [200, 200]
    assert len(recorder.calls) == 1


async def test_a_failing_handler_answers_500_and_the_retry_is_handled_again() -> None:
    recorder = Recorder(fail=1)
    receiver = CallbackReceiver(recorder)
    async with client_of(receiver) as http:
        failed = await notify(http, encounter(), "n-1")
        retried = await notify(http, encounter(), "n-1")
    assert failed.status_code == 500 and not delivered(failed)
    assert delivered(retried)
    assert len(recorder.calls) == 2


async def test_memory_is_bounded() -> None:
    recorder = Recorder()
    receiver = CallbackReceiver(recorder, remember=2)
    async with client_of(receiver) as http:
        for n in ("a", "b", "c", "a"):
            assert delivered(await notify(http, encounter(), n))
    # "a" was forgotten after "c" came: handed over again (the handler should be idempotent too)
    assert [note.notification_id for _r, note in recorder.calls] == ["a", "b", "c", "a"]


@pytest.mark.parametrize(
    ("path", "body", "text"),
    [
        ("/fhir/Encounter/42", b"not json", "not JSON"),
        ("/fhir/Encounter/42", b'{"id": "42"}', "no resourceType"),
        ("/fhir/Encounter/43", b'{"resourceType": "Encounter", "id": "42"}', "Encounter/43"),
    ],
)
async def test_a_body_that_is_no_notification_is_a_400_outcome(path: str, body: bytes, text: str) -> None:
    recorder = Recorder()
    async with client_of(CallbackReceiver(recorder)) as http:
        res = await http.put(path, content=body, headers={"Content-Type": "application/fhir+json"})
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome" and text in res.json()["issue"][0]["diagnostics"]
    assert recorder.calls == []


async def test_secret_path_and_other_resources() -> None:
    recorder = Recorder()
    receiver = CallbackReceiver(recorder, secret_path="k3y")
    async with client_of(receiver) as http:
        assert (await notify(http, encounter(), "n-1", path="/wrong/fhir")).status_code == 404
        assert delivered(await notify(http, encounter(), "n-1", path="/k3y/fhir"))
        patient = {"resourceType": "Patient", "id": "7", "meta": {"versionId": "1"}}
        res = await http.put("/k3y/fhir/Patient/7", json=patient)
        assert delivered(res)
        ping = await http.post("/k3y/fhir")  # a Subscription without payload
        assert delivered(ping)
    assert [n.path for _r, n in recorder.calls] == ["/fhir/Encounter/42"]
