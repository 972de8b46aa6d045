"""``POST /api/v{1,2}/records`` (cht-core services/records.js): JSON forms and the SMS (urlencoded) path.

Form codes are upper-cased and matched as exact keys of ``app_settings.forms``; incoming keys are
lower-cased and only declared fields kept; validation problems go into ``doc.errors`` (still 200).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import public_error
from cht_interop.sandbox.store import MEDIC, Doc

_MESSAGES = {
    "sys.missing_fields": "Missing or invalid fields: {fields}.",
    "sys.incorrect_type": "Incorrect type for field: {field}.",
    "sys.form_not_found": "Form '{form}' not found.",
}


def _reported_date(value: Any, now_ms: int) -> int:
    if isinstance(value, bool):
        return now_ms
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        if re.fullmatch(r"\d{13,}", value):
            return int(value)
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return now_ms
    return now_ms


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = target
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _coerce(definition: dict[str, Any], value: Any) -> Any:
    kind = definition.get("type")
    if kind == "date" and value is not None:
        stamp = _reported_date(value, -1)
        return stamp if stamp != -1 else None
    if kind == "boolean" and value in (1, 0, "1", "0"):
        return str(value) == "1"
    return value


def _type_ok(kind: Any, value: Any) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    if kind == "string":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "complex":
        return isinstance(value, dict)
    return True


def _error(code: str, **params: str) -> dict[str, str]:
    return {"code": code, "message": _MESSAGES[code].format(**params)}


def create_json_record(sandbox: Sandbox, body: Any) -> dict[str, Any]:
    """The JSON path: ``_meta.form`` required; returns ``{"success": true, "id": …}``."""
    if not isinstance(body, dict):
        raise public_error("Missing _meta property.")
    meta = body.get("_meta")
    if not meta or not isinstance(meta, dict):
        raise public_error("Missing _meta property.")
    form = meta.get("form")
    if form is None or form == "":
        raise public_error("Missing required field: form")
    if not isinstance(form, str):
        raise RuntimeError("form code is not a string")  # cht-core: a plain TypeError, so a bare 500
    code = form.upper()
    forms = sandbox.settings().get("forms") or {}
    definition = forms.get(code)
    if not isinstance(definition, dict):
        raise public_error(f"Form not found: {code}")
    declared = definition.get("fields") or {}
    values = {str(k).lower(): v for k, v in body.items() if k != "_meta"}
    fields: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    missing: list[str] = []
    for key, field_def in declared.items():
        if not isinstance(field_def, dict):
            continue
        if key not in values or values[key] is None or values[key] == "":
            if field_def.get("required"):
                missing.append(key)
            continue
        value = _coerce(field_def, values[key])
        if not _type_ok(field_def.get("type"), value):
            errors.append(_error("sys.incorrect_type", field=key))
        _set_path(fields, key, value)
    if missing:
        errors.insert(0, _error("sys.missing_fields", fields=", ".join(missing)))
    now = sandbox.wall_ms()
    sms_meta = {**meta, "form": code}
    doc: Doc = {
        "_id": str(uuid.uuid4()),
        "type": "data_record",
        "form": code,
        "errors": errors,
        "tasks": [],
        "fields": fields,
        "reported_date": _reported_date(meta["reported_date"], now) if "reported_date" in meta else now,
        "sms_message": sms_meta,
    }
    if meta.get("from"):
        doc["from"] = str(meta["from"])
    if definition.get("facility_reference") and fields.get(definition["facility_reference"]) is not None:
        doc["refid"] = fields[definition["facility_reference"]]
    doc_id, _rev = sandbox.store.put(MEDIC, doc)
    return {"success": True, "id": doc_id}


def create_sms_record(sandbox: Sandbox, form: dict[str, str]) -> dict[str, Any]:
    """The urlencoded (SMS gateway) path, kept to its observable contract."""
    if not form.get("from"):
        raise public_error("Missing required value: from")
    message = form.get("message")
    if not message:
        raise public_error("Missing required field: message")
    now = sandbox.wall_ms()
    code = message.strip().split(" ", 1)[0].upper() if message.strip() else ""
    settings = sandbox.settings()
    forms = settings.get("forms") or {}
    doc: Doc = {
        "_id": str(uuid.uuid4()),
        "type": "data_record",
        "from": form["from"],
        "errors": [],
        "tasks": [],
        "reported_date": _reported_date(form.get("sent_timestamp"), now)
        if form.get("sent_timestamp")
        else now,
        "sms_message": {"message": message, "from": form["from"], "form": code},
    }
    if code in forms:
        doc["form"] = code
        doc["fields"] = {}
    elif settings.get("forms_only_mode"):
        doc["errors"].append(_error("sys.form_not_found", form=code))
    doc_id, _rev = sandbox.store.put(MEDIC, doc)
    return {"success": True, "id": doc_id}
