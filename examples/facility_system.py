"""A facility's system asking the CHT's community health workers to trace patients lost to follow-up.

What a facility's developer writes with ``cht_interop.client``: register the facility and its
callback address, send today's LTFU list, and receive each CHW's answer as it comes back, kept
here in a JSON-lines file (the facility's own records). Run it beside ``cht-interop up
--cht-sandbox`` (see docs/client.md)::

    INTEROP_CLIENT_PASSWORD=… python examples/facility_system.py \\
        --url http://127.0.0.1:5001 --records answers.jsonl <patient CHT id> [<patient CHT id> …]

It needs nothing of the server's code: only ``cht_interop.client`` (httpx, Starlette) and uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from cht_interop.client import AsyncInteropClient, CallbackReceiver, Notification, service_request

FACILITY_ID, FACILITY_NAME = "example-clinic", "Example Clinic"


def outcome_of(encounter: dict[str, Any]) -> str:
    """The CHW's outcome, as the CHT report carried it (its code, else its text)."""
    for extension in encounter.get("extension") or []:
        if extension.get("url") == "urn:cht-interop:ltfu-outcome":
            concept = extension.get("valueCodeableConcept") or {}
            codes = [c.get("code") for c in concept.get("coding") or [] if c.get("code")]
            return str(codes[0] if codes else concept.get("text", "unknown"))
    return "unknown"


class Facility:
    """The facility's side: what it asked for, and what came back."""

    def __init__(self, records: Path) -> None:
        self.records = records
        self.waiting: dict[str, str] = {}  # ServiceRequest id → patient
        self.all_answered = asyncio.Event()

    async def on_answer(self, encounter: dict[str, Any], notification: Notification) -> None:
        """Called once per notification (the receiver drops redeliveries)."""
        based_on = [b.get("reference", "") for b in encounter.get("basedOn") or []]
        sr_ids = [ref.rsplit("/", 1)[-1] for ref in based_on if ref.startswith("ServiceRequest/")]
        patient = next((self.waiting.pop(sr, None) for sr in sr_ids if sr in self.waiting), None)
        record = {
            "received": datetime.now(UTC).isoformat(),
            "patient": patient,
            "service_request": sr_ids[0] if sr_ids else None,
            "encounter": encounter.get("id"),
            "outcome": outcome_of(encounter),
            "notification": notification.notification_id,
        }
        with self.records.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        print(f"answer for {patient or 'a patient'}: {record['outcome']}", flush=True)
        if not self.waiting:
            self.all_answered.set()


async def main(args: argparse.Namespace) -> int:
    password = os.environ.get("INTEROP_CLIENT_PASSWORD")
    if not password:
        print("set INTEROP_CLIENT_PASSWORD (printed by `cht-interop up`)", file=sys.stderr)
        return 2
    facility = Facility(Path(args.records))
    secret = secrets.token_urlsafe(16)  # an unguessable callback path: the server sends no credentials
    receiver = CallbackReceiver(facility.on_answer, secret_path=secret)
    server = uvicorn.Server(
        uvicorn.Config(receiver.app, host=args.callback_host, port=args.callback_port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1
        await asyncio.sleep(0.05)
    callback = (
        f"{args.public_callback_base or f'http://{args.callback_host}:{args.callback_port}'}/{secret}/fhir"
    )
    try:
        async with AsyncInteropClient(args.url, "interop-client", password) as client:
            await client.register(FACILITY_ID, FACILITY_NAME, callback)
            today = [service_request(p, FACILITY_ID, reason="Missed ART refill") for p in args.patients]
            answer = await client.submit_list(today)
            for patient, submitted in zip(args.patients, answer.submissions, strict=True):
                if submitted.ok and submitted.service_request_id:
                    facility.waiting[submitted.service_request_id] = patient
                    print(f"follow-up for {patient}: ServiceRequest/{submitted.service_request_id}")
                else:
                    print(f"follow-up for {patient} refused: {submitted.error}", file=sys.stderr)
            if not facility.waiting:
                return 1
            print(f"waiting for {len(facility.waiting)} answer(s); Ctrl-C to stop", flush=True)
            if args.until_answered:
                await facility.all_answered.wait()
                return 0
            await serving  # serve until stopped
            return 0
    finally:
        server.should_exit = True
        if not serving.done():
            await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patients", nargs="+", help="CHT ids of the patients to trace")
    parser.add_argument("--url", default="http://127.0.0.1:5001", help="the interop API")
    parser.add_argument("--records", default="answers.jsonl", help="where the answers are kept")
    parser.add_argument("--callback-host", default="127.0.0.1")
    parser.add_argument("--callback-port", type=int, default=8090)
    parser.add_argument("--public-callback-base", help="how the server reaches this machine, if not so")
    parser.add_argument("--until-answered", action="store_true", help="exit once every answer is in")
    sys.exit(asyncio.run(main(parser.parse_args())))
