"""The completed ``interop_follow_up`` report, written as the CHT app writes it.

Shape: cht-core's webapp enketo.service saveReport with the fields of docs/cht-contract.md §4, laid out
as the shipped ``interop_follow_up`` XForm's instance (what cht-conf-test-harness records the app
saving): ``source_id`` at the form root, ``inputs.contact`` with ``_id`` and ``name``.
"""

from __future__ import annotations

import uuid
from typing import Any

from cht_interop.sandbox.auth import UserCtx
from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.store import MEDIC, Doc

FORM = "interop_follow_up"
OUTCOMES = (
    ("returned_to_care", "Found, returning to care"),
    ("refused", "Found, refused to return to care"),
    ("not_located", "Not located"),
    ("moved_away", "Moved away"),
    ("died", "Died"),
    ("other", "Other"),
)
METHODS = (("visit", "Home visit"), ("phone", "Phone call"), ("sms", "SMS"))


class InvalidAnswer(ValueError):
    """A required question unanswered or answered outside its choices."""


def _patient_input(patient: Doc | None, contact: dict[str, Any]) -> dict[str, Any]:
    """``inputs.contact`` as the form binds it (``_id``, ``name``): the task's contact, refetched by id."""
    source = patient or contact
    return {"_id": source.get("_id"), "name": source.get("name", "")}


def build_report(
    sandbox: Sandbox,
    chw: UserCtx,
    task: Doc,
    *,
    outcome: str,
    method: str,
    notes: str,
) -> Doc:
    if outcome not in dict(OUTCOMES):
        raise InvalidAnswer("Choose the outcome of the follow-up.")
    if method not in dict(METHODS):
        raise InvalidAnswer("Choose how the follow-up was done.")
    emission = task["emission"]
    action = next((a for a in emission.get("actions", []) if a.get("form") == FORM), None)
    if action is None:
        raise InvalidAnswer("This task does not open the follow-up form.")
    content = dict(action.get("content") or {})
    raw_contact = content.get("contact")
    contact: dict[str, Any] = raw_contact if isinstance(raw_contact, dict) else {"_id": emission["forId"]}
    patient_id = str(contact.get("_id") or emission["forId"])
    patient = sandbox.get_medic(patient_id)
    source_id = content.get("source_id") or emission.get("reportId")
    service_request_id = content.get("service_request_id")
    if service_request_id is None and source_id:
        record = sandbox.get_medic(str(source_id))
        if record is not None:
            service_request_id = (record.get("fields") or {}).get("service_request_id")
    chw_contact = sandbox.get_medic(chw.contact_id) if chw.contact_id else None
    # the shipped XForm's instance (cht/config/forms/app/interop_follow_up.xml), as Enketo saves it
    fields: dict[str, Any] = {
        "inputs": {
            "meta": {"location": {"lat": "", "long": "", "error": "", "message": ""}},
            "source": content.get("source", "task"),
            "contact": _patient_input(patient, contact),
        },
        "source_id": source_id or "",
        "service_request_id": service_request_id if service_request_id is not None else "",
        "patient_uuid": patient_id,
        "patient_id": patient_id,
        "patient_name": (patient or contact).get("name", ""),
        "outcome": outcome,
        "method": method,
        "notes": notes,
        "meta": {"instanceID": f"uuid:{uuid.uuid4()}", "deprecatedID": ""},
    }
    doc: Doc = {
        "_id": str(uuid.uuid4()),
        "type": "data_record",
        "form": FORM,
        "content_type": "xml",
        "reported_date": sandbox.now_ms(),
        "hidden_fields": ["meta"],
        "fields": fields,
    }
    if chw_contact is not None:
        doc["contact"] = sandbox.minified_lineage(chw_contact["_id"])
        if chw_contact.get("phone"):
            doc["from"] = chw_contact["phone"]
    return doc


def submit_report(sandbox: Sandbox, doc: Doc) -> str:
    doc_id, _rev = sandbox.store.put(MEDIC, doc)
    return doc_id
