"""The CHT's CouchDB views the sandbox keeps, and the sandbox's own ``_find`` indexes.

Each function is the map of one view: what it emits for a doc of ``medic``. The store keeps the
rows beside the docs (``DocStore.view_rows``), so looking a contact up by shortcode, a report up
by subject, a contact's descendants, or ``_find`` candidates by ``type``/``form`` costs the same
with ten docs or a hundred thousand. Sources: cht-core ``ddocs/medic-db/medic/views`` and
``ddocs/medic-db/medic-client/views``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cht_interop.sandbox.store import MEDIC, Doc

#: Bump when a map changes: the store rebuilds every row at its next open.
VIEWS_VERSION = 3

CONTACTS_BY_DEPTH = "medic/contacts_by_depth"
REPORTS_BY_SUBJECT = "medic-client/reports_by_subject"
CONTACTS_BY_REFERENCE = "medic-client/contacts_by_reference"
DOC_BY_TYPE = "medic-client/doc_by_type"
#: reports by the key that decides who replicates them (null: no key, "unallocated")
DOCS_BY_REPLICATION_KEY = "sandbox/docs_by_replication_key"
#: sandbox-only indexes for ``_find`` on ``type`` and ``form`` (CouchDB would want a Mango index)
FIND_BY_TYPE = "sandbox/find_by_type"
FIND_BY_FORM = "sandbox/find_by_form"
FIND_INDEXES = {"type": FIND_BY_TYPE, "form": FIND_BY_FORM}

#: the views served over HTTP, as ``_design/<ddoc>/_view/<name>``
HTTP_VIEWS = (CONTACTS_BY_DEPTH, REPORTS_BY_SUBJECT, CONTACTS_BY_REFERENCE, DOC_BY_TYPE)

_CONTACT_TYPES = ("contact", "person", "clinic", "health_center", "district_hospital")
_REFERENCE_TYPES = (*_CONTACT_TYPES, "national_office")


def _contacts_by_depth(doc: Doc) -> Iterator[tuple[Any, Any]]:
    if doc.get("type") not in _CONTACT_TYPES:
        return
    contact = doc.get("contact")
    value = {
        "shortcode": doc.get("patient_id") or doc.get("place_id"),
        "primary_contact": contact.get("_id") if isinstance(contact, dict) else contact,
    }
    parent: Any = doc
    depth = 0
    while isinstance(parent, dict) and parent:
        if parent.get("_id"):
            yield [parent["_id"]], value
            yield [parent["_id"], depth], value
        depth += 1
        parent = parent.get("parent")


def _reports_by_subject(doc: Doc) -> Iterator[tuple[Any, Any]]:
    if doc.get("type") != "data_record" or not doc.get("form"):
        return
    raw_fields = doc.get("fields")
    fields: dict[str, Any] = raw_fields if isinstance(raw_fields, dict) else {}
    sources: tuple[tuple[dict[str, Any], tuple[str, ...]], ...] = (
        (doc, ("patient_id", "place_id", "case_id")),
        (fields, ("patient_id", "place_id", "case_id", "patient_uuid", "place_uuid")),
    )
    for source, names in sources:
        for name in names:
            if source.get(name):
                yield _js_string(source[name]), doc.get("reported_date")


def _contacts_by_reference(doc: Doc) -> Iterator[tuple[Any, Any]]:
    if doc.get("type") not in _REFERENCE_TYPES:
        return
    for name in ("place_id", "patient_id"):
        if doc.get(name):
            yield ["shortcode", _js_string(doc[name])], doc.get("reported_date")
    if doc.get("rc_code"):
        yield ["external", _js_string(doc["rc_code"]).upper()], doc.get("reported_date")


def _doc_by_type(doc: Doc) -> Iterator[tuple[Any, Any]]:
    if doc.get("type") in ("form", "user-settings"):
        yield [doc["type"]], None


def replication_key(doc: Doc) -> str | None:
    """A report's replication key (cht-core ``docs_by_replication_key``): ``patient_id`` /
    ``fields.patient_id``, else ``place_id`` / ``fields.place_id``, else ``fields.patient_uuid``,
    else ``contact._id``."""
    raw_fields = doc.get("fields")
    fields: dict[str, Any] = raw_fields if isinstance(raw_fields, dict) else {}
    for value in (
        doc.get("patient_id"),
        fields.get("patient_id"),
        doc.get("place_id"),
        fields.get("place_id"),
        fields.get("patient_uuid"),
    ):
        if value:
            return str(value)
    contact = doc.get("contact")
    if isinstance(contact, dict) and contact.get("_id"):
        return str(contact["_id"])
    return None


def _docs_by_replication_key(doc: Doc) -> Iterator[tuple[Any, Any]]:
    if doc.get("type") == "data_record":
        yield replication_key(doc), None


def _js_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def emit(db: str, doc: Doc) -> Iterator[tuple[str, Any, Any]]:
    """Every view row for ``doc`` (the store's indexer)."""
    if db != MEDIC:
        return
    for view, mapper in (
        (CONTACTS_BY_DEPTH, _contacts_by_depth),
        (REPORTS_BY_SUBJECT, _reports_by_subject),
        (CONTACTS_BY_REFERENCE, _contacts_by_reference),
        (DOC_BY_TYPE, _doc_by_type),
        (DOCS_BY_REPLICATION_KEY, _docs_by_replication_key),
    ):
        for key, value in mapper(doc):
            yield view, key, value
    for field, view in FIND_INDEXES.items():
        value = doc.get(field)
        if isinstance(value, str):
            yield view, value, None
