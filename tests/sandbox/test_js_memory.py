"""The V8 runtime's heap stays bounded however many docs go through it (``up --cht-sandbox``)."""

from __future__ import annotations

import uuid

from cht_interop.sandbox.js import JsRuntime

RELEVANT = "doc.type === 'data_record' && doc.form === 'INTEROP_FOLLOW_UP'"
MAPPING = {"id": {"expr": "doc._id"}, "patient": {"path": "doc.fields.patient_uuid"}}


def test_the_garbage_of_many_records_is_collected() -> None:
    """Left to itself V8 kept what each record's outbound push left behind (~3.5 KB a record)
    until its 1.5 GiB heap limit: its heap grew with the records pushed."""
    runtime = JsRuntime()
    try:
        for _ in range(1000):
            doc = {
                "_id": str(uuid.uuid4()),
                "type": "data_record",
                "form": "INTEROP_FOLLOW_UP",
                "fields": {"patient_uuid": str(uuid.uuid4())},
            }
            assert runtime.relevant(RELEVANT, doc)
            assert runtime.map_payload(doc, MAPPING, "interop")["id"] == doc["_id"]
        assert runtime.heap_used_bytes() < 1.5 * 2**20
    finally:
        runtime.close()
