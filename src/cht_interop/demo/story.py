"""The LTFU story, end to end: a facility registers, sends its list, CHWs follow up, answers return.

Everything goes over HTTP on loopback, as in production: the facility through
``cht_interop.client`` (and its ``CallbackReceiver``, served here), the CHT side through its API
and the sandbox's CHW page (``world.py``). Each patient's steps are timed on this process's clock
(``Row``); ``report.py`` shows them.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import httpx
import uvicorn
from rich.progress import Progress, TaskID

from cht_interop.client import AsyncInteropClient, CallbackReceiver, Notification, service_request
from cht_interop.demo.lookups import CHT_SYSTEM, count_with_status, known_patients, task_statuses
from cht_interop.demo.stack import HOST, Stack, free_port
from cht_interop.demo.world import ChtWorld, Chw, Patient

FACILITY = ("demo-facility", "Demo Facility (cht-interop demo)")
OUTCOME_EXTENSION = "urn:cht-interop:ltfu-outcome"
AT_ONCE = 8  # CHT API calls in flight while building the world
POLL_SECONDS = 0.3


def outcome_for(index: int) -> tuple[str, str, str]:
    """Varied answers: the second patient refuses, every third is not located, the rest return."""
    if index == 1:
        return "refused", "visit", "Found at home; does not want to return to care"
    if index % 3 == 2:
        return "not_located", "phone" if index % 2 else "visit", "Nobody at the address; neighbours unsure"
    return "returned_to_care", "visit", "Found; agreed to come to the clinic this week"


@dataclass(slots=True)
class Row:
    """One patient's way through the story (seconds on this process's monotonic clock)."""

    patient: Patient
    index: int
    service_request_id: str | None = None
    task: str | None = None  # the follow-up's Task under /fhir (``Task/<id>`` or a search)
    requested: float | None = None
    accepted: float | None = None  # the interop API recorded the CHT's record (seen by polling)
    task_seen: float | None = None
    completed: float | None = None
    outcome: str | None = None
    callback: float | None = None
    callback_outcome: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Story:
    rows: list[Row]
    chws: int
    started: float
    list_sent: float | None = None
    list_answered: float | None = None
    finished: float | None = None
    duplicates: int = 0
    completed_requests: int | None = None
    missing: list[Row] = field(default_factory=list)


class Demo:
    """Runs the story against a ``Stack`` (embedded, or a running ``up``)."""

    def __init__(
        self,
        stack: Stack,
        *,
        patients: int,
        per_chw: int,
        timeout: float,
        progress: Progress,
        verify: bool = True,
    ) -> None:
        self.stack = stack
        self.count = patients
        self.per_chw = per_chw
        self.timeout = timeout
        self.progress = progress
        self.verify = verify
        self.by_patient: dict[str, Row] = {}
        self.arrived = asyncio.Event()
        self.tag = secrets.token_hex(3)  # this run's names in the CHT, and its referral ids
        self._callbacks_step: TaskID | None = None
        self._steps: dict[str, TaskID] = {}

    async def run(self) -> Story:
        """Build, request, follow up, and wait for every callback (or the timeout)."""
        receiver = CallbackReceiver(self._on_encounter, secret_path=secrets.token_urlsafe(16))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(receiver.app, host=HOST, port=port, log_level="warning", access_log=False)
        )
        serving = asyncio.create_task(server.serve(), name="demo-callback-receiver")
        try:
            while not server.started:
                if serving.done():
                    await serving
                    raise RuntimeError("the callback receiver did not start")
                await asyncio.sleep(0.01)
            callback_url = f"http://{HOST}:{port}/{receiver.secret_path}/fhir"
            story = await self._story(callback_url)
            story.duplicates = receiver.duplicates
            return story
        finally:
            server.should_exit = True
            await serving

    async def _story(self, callback_url: str) -> Story:
        async with (
            AsyncInteropClient(
                self.stack.interop_url,
                self.stack.interop_username,
                self.stack.interop_password,
                verify=self.verify,
            ) as client,
            httpx.AsyncClient(base_url=self.stack.cht_url, timeout=60, verify=self.verify) as cht,
        ):
            world = ChtWorld(cht, (self.stack.cht_username, self.stack.cht_password), tag=self.tag)
            await client.register(FACILITY[0], FACILITY[1], callback_url)
            chws, rows = await self._build(world)
            story = Story(rows, len(chws), started=time.monotonic())
            await self._pushed(client, rows)
            await self._request(client, story)
            deadline = time.monotonic() + self.timeout
            await self._follow_up(client, world, chws, story, deadline)
            story.finished = time.monotonic()
            ids = [r.service_request_id for r in rows if r.service_request_id]
            # the callback leaves with the Encounter's write; the follow-up completes just after it
            answered = sum(r.callback is not None for r in rows)
            for _ in range(50):
                story.completed_requests = await count_with_status(client, ids, "completed")
                if story.completed_requests >= answered:
                    break
                await asyncio.sleep(0.2)
            story.missing = [r for r in rows if r.callback is None]
            return story

    # -- the steps ---------------------------------------------------------------------------------

    async def _build(self, world: ChtWorld) -> tuple[list[Chw], list[Row]]:
        """A district, one CHW per ``per_chw`` patients, the patients (in the CHT)."""
        district = await world.district()
        chw_count = max(1, math.ceil(self.count / self.per_chw))
        step = self.progress.add_task("CHWs and places in the CHT", total=chw_count)
        chws = await _gather(
            [partial(world.chw, district, n + 1) for n in range(chw_count)],
            lambda: self.progress.advance(step),
        )
        step = self.progress.add_task("patients in the CHT", total=self.count)
        patients = await _gather(
            [partial(world.patient, chws[n // self.per_chw], n + 1) for n in range(self.count)],
            lambda: self.progress.advance(step),
        )
        rows = [Row(patient, n) for n, patient in enumerate(patients)]
        self.by_patient = {row.patient.cht_id: row for row in rows}
        return chws, rows

    async def _pushed(self, client: AsyncInteropClient, rows: list[Row]) -> None:
        """Wait until the CHT's outbound push has given the interop API every patient."""
        step = self.progress.add_task("patients pushed by the CHT", total=len(rows))
        waiting = [r.patient.cht_id for r in rows]
        deadline = time.monotonic() + self.timeout
        while waiting:
            known = await known_patients(client, waiting)
            waiting = [p for p in waiting if p not in known]
            self.progress.update(step, completed=len(rows) - len(waiting))
            if waiting:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(waiting)} patient(s) never reached the interop API")
                await asyncio.sleep(0.2)

    async def _request(self, client: AsyncInteropClient, story: Story) -> None:
        """The LTFU list, as one Bundle."""
        step = self.progress.add_task("LTFU list written", total=len(story.rows))
        entries = [
            service_request(
                row.patient.cht_id,
                FACILITY[0],
                reason="Missed ART refill: please trace and return to care",
                identifier=("urn:demo-facility:referral", f"{self.tag}-{row.index + 1}"),
            )
            for row in story.rows
        ]
        story.list_sent = time.monotonic()
        result = await client.submit_list(
            entries, on_progress=lambda done, total: self.progress.update(step, completed=done, total=total)
        )
        story.list_answered = time.monotonic()
        self.progress.update(step, completed=len(story.rows))
        for row, submission in zip(story.rows, result.submissions, strict=True):
            row.requested = story.list_sent
            row.service_request_id = submission.service_request_id
            row.task = submission.task
            if not submission.ok:
                row.error = submission.error or f"HTTP {submission.status}"

    async def _follow_up(
        self, client: AsyncInteropClient, world: ChtWorld, chws: list[Chw], story: Story, deadline: float
    ) -> None:
        """The CHWs complete their tasks; then wait for every callback."""
        self._steps = {
            "tasks": self.progress.add_task("CHT tasks for the CHWs", total=len(story.rows)),
            "done": self.progress.add_task("follow-ups done by the CHWs", total=len(story.rows)),
        }
        self._callbacks_step = self.progress.add_task("callbacks to the facility", total=len(story.rows))
        expected = [r for r in story.rows if r.error is None]
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._fieldwork(client, world, chws, expected)
                while any(r.callback is None for r in expected):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            pass  # reported: the rows without a callback are the missing ones

    async def _fieldwork(
        self, client: AsyncInteropClient, world: ChtWorld, chws: list[Chw], rows: list[Row]
    ) -> None:
        """Each CHW opens their task list once the CHT has their patients' records (the follow-up's
        Task is ``accepted``), and fills in the form of each task it shows, one CHW at a time: the
        sandbox computes a task list over all its documents, so asking it sooner or more often
        only slows the CHT's pushes down."""
        chw_of = {patient: chw for chw in chws for patient in chw.patients}
        waiting = {row.patient.cht_id: row for row in rows}  # the CHT has no record yet
        to_do: dict[str, set[str]] = {}  # CHW → patients whose task is to be done
        by_name = {chw.username: chw for chw in chws}
        while waiting or to_do:
            if waiting:
                statuses = await task_statuses(client, [str(r.task) for r in waiting.values()])
                for row in list(waiting.values()):
                    status = statuses.get(str(row.task), "requested")
                    if status == "requested":
                        continue  # the CHT has not taken the record yet
                    patient = row.patient.cht_id
                    row.accepted = time.monotonic()
                    del waiting[patient]
                    if status == "accepted":
                        to_do.setdefault(chw_of[patient].username, set()).add(patient)
                    else:
                        row.error = f"follow-up {status}"
            progressed = False
            for name, patients in list(to_do.items()):
                progressed |= await self._work_through(world, by_name[name], patients)
                if not patients:
                    del to_do[name]
            if not progressed:
                await asyncio.sleep(POLL_SECONDS)

    async def _work_through(self, world: ChtWorld, chw: Chw, patients: set[str]) -> bool:
        """The CHW's task list, then the form of each of ``patients``' tasks it shows as Ready."""
        progressed = False
        for task in await world.open_tasks(chw):
            patient = str((task.get("emission") or {}).get("forId"))
            if patient not in patients:
                continue
            row = self.by_patient[patient]
            if row.task_seen is None:
                row.task_seen = time.monotonic()
                self.progress.advance(self._steps["tasks"])
            if task.get("state") != "Ready":
                continue
            outcome, method, notes = outcome_for(row.index)
            row.outcome = outcome
            await world.complete(chw, str(task["_id"]), outcome=outcome, method=method, notes=notes)
            row.completed = time.monotonic()
            self.progress.advance(self._steps["done"])
            patients.discard(patient)
            progressed = True
        return progressed

    async def _on_encounter(self, encounter: dict[str, Any], _notification: Notification) -> None:
        """The facility's function: note which patient's answer came back, and when."""
        patient = next(
            (
                i.get("value")
                for i in encounter.get("identifier") or []
                if isinstance(i, dict) and i.get("system") == CHT_SYSTEM
            ),
            None,
        )
        row = self.by_patient.get(str(patient))
        if row is None or row.callback is not None:
            return  # another run's patient on a shared server, or a later version of the same answer
        row.callback = time.monotonic()
        row.callback_outcome = _outcome_code(encounter)
        if self._callbacks_step is not None:
            self.progress.advance(self._callbacks_step)
        self.arrived.set()


def _outcome_code(encounter: dict[str, Any]) -> str | None:
    for ext in encounter.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == OUTCOME_EXTENSION:
            for coding in (ext.get("valueCodeableConcept") or {}).get("coding") or []:
                if isinstance(coding, dict) and coding.get("code"):
                    return str(coding["code"])
    return None


T = TypeVar("T")


async def _gather(calls: list[Callable[[], Awaitable[T]]], advance: Callable[[], None]) -> list[T]:
    """Run the calls ``AT_ONCE`` at a time, in order, advancing a progress bar as each ends."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            result = await call()
        advance()
        return result

    return list(await asyncio.gather(*(one(c) for c in calls)))
