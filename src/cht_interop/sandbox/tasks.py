"""A user's tasks, as the CHT webapp's rules engine computes them on the device (cht-core rules-engine).

The installed cht-conf ``tasks.js`` runs in V8 with a declarative emitter (``js.py``) over the
contacts the user can see and the reports linked to them by subject id. Emissions become task
docs (kept in the sandbox db, as the rules engine keeps them in the device's db) whose state
follows the dates: Draft before the window, Ready in it, Failed after it, Completed when resolved,
Cancelled when no longer emitted. Terminal states stick.
"""

from __future__ import annotations

from typing import Any

from cht_interop.sandbox.auth import UserCtx, user_doc_id
from cht_interop.sandbox.core import Sandbox, fields_of, is_contact
from cht_interop.sandbox.scope import visible_docs
from cht_interop.sandbox.store import MEDIC, SANDBOX, Doc

TERMINAL = ("Completed", "Failed", "Cancelled")
SUBJECT_KEYS = ("patient_id", "patient_uuid", "place_id", "place_uuid")


class TaskRulesMissing(Exception):
    """No task rules are installed in this sandbox."""


def report_subject(report: Doc) -> str | None:
    """First truthy of patient_id, patient_uuid, place_id, place_uuid: top level, then ``fields``."""
    fields = fields_of(report)
    for key in SUBJECT_KEYS:
        value = report.get(key) or fields.get(key)
        if value:
            return str(value)
    return None


def _contacts_with_reports(sandbox: Sandbox, user: UserCtx) -> list[dict[str, Any]]:
    visible = list(sandbox.store.all(MEDIC)) if user.is_db_admin else visible_docs(sandbox, user)
    contacts = [d for d in visible if is_contact(d)]
    by_subject: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    for contact in contacts:
        new_entry: dict[str, Any] = {"contact": sandbox.hydrate(contact), "reports": []}
        entries.append(new_entry)
        for key in ("_id", "patient_id", "place_id"):
            if contact.get(key):
                by_subject.setdefault(str(contact[key]), new_entry)
    reports = sorted(
        (d for d in visible if d.get("type") == "data_record"), key=lambda r: r.get("reported_date", 0)
    )
    for report in reports:
        subject = report_subject(report)
        if subject is None:
            continue
        entry: dict[str, Any] | None = by_subject.get(subject)
        if entry is None:  # a "headless" contact, as the rules engine makes for unknown subjects
            entry = {"contact": {"_id": subject}, "reports": []}
            by_subject[subject] = entry
            entries.append(entry)
        entry["reports"].append(report)
    return entries


def compute_tasks(sandbox: Sandbox, user: UserCtx) -> list[dict[str, Any]]:
    """Refresh and return the user's task docs (newest state), like the webapp's Tasks tab."""
    rules = sandbox.task_rules()
    if rules is None:
        raise TaskRulesMissing("no task rules are installed")
    user_contact = sandbox.get_medic(user.contact_id) if user.contact_id else None
    user_settings = sandbox.get_medic(user_doc_id(user.name)) or {
        "_id": user_doc_id(user.name),
        "name": user.name,
    }
    user_js = {**user_settings, **(sandbox.hydrate(user_contact) if user_contact else {})}
    now_ms = sandbox.now_ms()
    result = sandbox.js.tasks(
        rules.modules, rules.entry, user_js, _contacts_with_reports(sandbox, user), now_ms
    )
    today = _today(sandbox)
    settings_id = user_doc_id(user.name)
    prefix = f"task~{settings_id}~"
    existing = {d["emission"]["_id"]: d for d in sandbox.store.all(SANDBOX, prefix=prefix)}
    seen: set[str] = set()
    for emission in result["tasks"]:
        seen.add(emission["_id"])
        state = _state(emission, today)
        doc = existing.get(emission["_id"])
        if doc is None:
            doc = {
                "_id": f"{prefix}{emission['_id']}~{now_ms}",
                "type": "task",
                "authoredOn": now_ms,
                "user": settings_id,
                "requester": emission["forId"],
                "owner": emission["forId"],
                "stateHistory": [],
            }
        elif doc.get("state") in TERMINAL:
            continue
        if doc.get("state") != state or doc.get("emission") != emission:
            if doc.get("state") != state:
                doc["stateHistory"] = [*doc.get("stateHistory", []), {"state": state, "timestamp": now_ms}]
            doc.update(
                {
                    "state": state,
                    "emission": emission,
                    "stateReason": "resolved" if emission["resolved"] else None,
                }
            )
            sandbox.store.put(SANDBOX, doc)
            existing[emission["_id"]] = sandbox.store.get(SANDBOX, doc["_id"])
    for emission_id, doc in existing.items():
        if emission_id not in seen and doc.get("state") not in TERMINAL:
            doc["state"] = "Cancelled"
            doc["stateHistory"] = [*doc.get("stateHistory", []), {"state": "Cancelled", "timestamp": now_ms}]
            sandbox.store.put(SANDBOX, doc)
    return sorted(sandbox.store.all(SANDBOX, prefix=prefix), key=lambda d: d["emission"]["dueDate"])


def _today(sandbox: Sandbox) -> str:
    """Local calendar date: V8 in this process formats the window dates in the local zone too."""
    return sandbox.config.clock().astimezone().strftime("%Y-%m-%d")


def _state(emission: dict[str, Any], today: str) -> str:
    """rules-engine task-states.js: resolved → Completed; deleted → Cancelled; else by window dates."""
    if emission.get("resolved"):
        return "Completed"
    if emission.get("deleted"):
        return "Cancelled"
    if today < emission["startDate"]:
        return "Draft"
    if today <= emission["endDate"]:
        return "Ready"
    return "Failed"


def public_task(doc: Doc) -> dict[str, Any]:
    """What ``/sandbox/api/tasks`` shows of a task doc."""
    emission = doc["emission"]
    return {
        "_id": doc["_id"],
        "state": doc["state"],
        "owner": doc["owner"],
        "user": doc["user"],
        "stateHistory": doc.get("stateHistory", []),
        "emission": {
            k: emission.get(k)
            for k in (
                "_id",
                "taskName",
                "title",
                "icon",
                "priority",
                "forId",
                "reportId",
                "dueDate",
                "startDate",
                "endDate",
                "actions",
            )
        },
    }
