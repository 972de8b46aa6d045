"""``POST /api/v1/people`` and ``/api/v1/places`` (cht-core shared-libs/contacts semantics).

Messages, the order of checks and the odd spacing of place messages (an empty place id prints as
nothing) follow the CHT's contacts library.
"""

from __future__ import annotations

import copy
import re
import uuid
from datetime import datetime
from typing import Any

from cht_interop.sandbox.core import Sandbox
from cht_interop.sandbox.errors import ApiError, bad_request
from cht_interop.sandbox.store import MEDIC, Doc, StoreError

_ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def parse_reported_date(value: Any) -> int | None:
    """Epoch ms from an ISO-8601 date with offset or epoch ms; ``None`` when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if _ISO_WITH_OFFSET.match(value):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
                return None
    return None


def contact_type_of(sandbox: Sandbox, doc: Any) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    type_id = doc.get("contact_type") if doc.get("type") == "contact" else doc.get("type")
    for t in sandbox.contact_types():
        if t.get("id") == type_id:
            return t
    return None


def is_person(sandbox: Sandbox, doc: Any) -> bool:
    t = contact_type_of(sandbox, doc)
    return bool(t and t.get("person"))


def is_place(sandbox: Sandbox, doc: Any) -> bool:
    t = contact_type_of(sandbox, doc)
    return bool(t and not t.get("person"))


def _post(sandbox: Sandbox, doc: Doc) -> dict[str, Any]:
    """PouchDB ``post``: the API assigns a v4 UUID (with dashes) client-side when there is no ``_id``."""
    doc.setdefault("_id", str(uuid.uuid4()))
    try:
        doc_id, rev = sandbox.store.put(MEDIC, doc)
    except StoreError as exc:
        raise ApiError(exc.status, "Document update conflict" if exc.status == 409 else exc.reason) from None
    return {"ok": True, "id": doc_id, "rev": rev}


def _hydrated(sandbox: Sandbox, doc_id: str) -> Doc | None:
    doc = sandbox.get_medic(doc_id)
    return sandbox.hydrate(doc) if doc is not None else None


def get_place(sandbox: Sandbox, place_id: str) -> Doc:
    doc = _hydrated(sandbox, place_id)
    if doc is None or not is_place(sandbox, doc):
        raise ApiError(404, "Failed to find place.")
    return doc


def get_person(sandbox: Sandbox, person_id: str) -> Doc:
    doc = _hydrated(sandbox, person_id)
    if doc is None or not is_person(sandbox, doc):
        raise ApiError(404, "Failed to find person.")
    return doc


def minify(doc: Doc) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": doc["_id"]}
    parent = doc.get("parent")
    if isinstance(parent, dict) and parent.get("_id"):
        out["parent"] = minify(parent)
    return out


# -- people -----------------------------------------------------------------------------------


def _validate_person(sandbox: Sandbox, obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "Person must be an object."
    if not is_person(sandbox, obj):
        return "Wrong type, this is not a person."
    if "name" not in obj:
        return 'Person is missing a "name" property.'
    if not isinstance(obj["name"], str):
        return 'Property "name" must be a string.'
    if "reported_date" in obj and parse_reported_date(obj["reported_date"]) is None:
        return f"Reported date is invalid: {_js_str(obj['reported_date'])}"
    return None


def create_person(sandbox: Sandbox, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise bad_request("Person must be an object.")
    data = copy.deepcopy(data)
    if not data.get("type") and any(t.get("id") == "person" for t in sandbox.contact_types()):
        data["type"] = "person"
    error = _validate_person(sandbox, data)
    if error:
        raise bad_request(error)
    reported = data.get("reported_date")
    data["reported_date"] = parse_reported_date(reported) if reported else sandbox.wall_ms()
    if data.get("place"):
        place = get_or_create_place(sandbox, data["place"])
        data["parent"] = minify(place)
        del data["place"]
    return _post(sandbox, data)


def get_or_create_person(sandbox: Sandbox, data: Any) -> Doc:
    if isinstance(data, str):
        return get_person(sandbox, data)
    if isinstance(data, dict) and "_rev" not in data:
        return get_person(sandbox, create_person(sandbox, data)["id"])
    raise bad_request("Person must be a new object or string identifier (UUID).")


# -- places -----------------------------------------------------------------------------------


def _validate_place(sandbox: Sandbox, place: Any) -> None:
    if not isinstance(place, dict):
        raise bad_request("Place must be an object.")
    place_id = place.get("_id") or ""
    if not is_place(sandbox, place):
        raise bad_request(f"Wrong type, object {place_id} is not a place.")
    if "name" not in place:
        raise bad_request(f'Place {place_id} is missing a "name" property.')
    if "reported_date" in place and parse_reported_date(place["reported_date"]) is None:
        raise bad_request(f"Reported date on place {place_id} is invalid: {_js_str(place['reported_date'])}")
    if not isinstance(place["name"], str):
        raise bad_request(f'Property "name" on place {place_id} must be a string.')
    t = contact_type_of(sandbox, place) or {}
    parents = t.get("parents") or []
    if parents:
        if not place.get("parent"):
            raise bad_request(f'Place {place_id} is missing a "parent" property.')
        parent_type = contact_type_of(sandbox, place["parent"])
        if not parent_type or parent_type.get("id") not in parents:
            raise bad_request(
                f'{t.get("id")} "{place_id}" should have one of the following parent types: '
                f'"{",".join(parents)}".'
            )
    contact = place.get("contact")
    if contact and not isinstance(contact, str | dict):
        raise bad_request(f'Property "contact" on place {place_id} must be an object or string.')
    parent = place.get("parent")
    if isinstance(parent, dict) and parent:
        _validate_place(sandbox, parent)


def _create_place(sandbox: Sandbox, place: Doc) -> tuple[dict[str, Any], Any]:
    """Write one place whose parents exist; a new contact object is created after it (5.2)."""
    _validate_place(sandbox, place)
    reported = place.get("reported_date")
    place["reported_date"] = parse_reported_date(reported) if reported else sandbox.wall_ms()
    if place.get("parent"):
        place["parent"] = minify(place["parent"])
    contact = place.pop("contact", None)
    new_contact: Any = None
    if isinstance(contact, str):
        place["contact"] = minify(get_person(sandbox, contact))
    elif contact:
        new_contact = contact
    return _post(sandbox, place), new_contact


def create_places(sandbox: Sandbox, place: Doc) -> dict[str, Any]:
    parent = place.get("parent")
    if isinstance(parent, str):
        place["parent"] = get_place(sandbox, parent)
    elif isinstance(parent, dict) and not parent.get("_id"):
        place["parent"] = create_places(sandbox, parent)["id"]
        return create_places(sandbox, place)
    result, new_contact = _create_place(sandbox, place)
    if isinstance(place.get("contact"), dict):
        result["contact"] = {"id": place["contact"]["_id"]}
    if new_contact is not None:
        if isinstance(new_contact, dict) and "_rev" not in new_contact:
            new_contact = {**new_contact, "place": result["id"]}
        person = get_or_create_person(sandbox, new_contact)
        stored = sandbox.store.get(MEDIC, result["id"])
        stored["contact"] = minify(person)
        doc_id, rev = sandbox.store.put(MEDIC, stored)
        result = {"id": doc_id, "rev": rev, "contact": {"id": person["_id"]}}
    return result


def create_place(sandbox: Sandbox, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise bad_request("Place must be an object.")
    return create_places(sandbox, copy.deepcopy(data))


def get_or_create_place(sandbox: Sandbox, place: Any) -> Doc:
    if isinstance(place, str):
        return get_place(sandbox, place)
    if isinstance(place, dict) and "_rev" not in place:
        return get_place(sandbox, create_places(sandbox, copy.deepcopy(place))["id"])
    raise bad_request("Place must be a new object or string identifier (UUID).")


def _js_str(value: Any) -> str:
    """String interpolation as JS renders common values in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
