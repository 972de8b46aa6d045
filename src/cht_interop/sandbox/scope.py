"""What an offline user may see: the replication scope (cht-core's docs_by_replication_key).

Contacts at or under the user's facility; reports whose replication key (``patient_id`` /
``fields.patient_id``, else ``place_id`` / ``fields.place_id``, else ``fields.patient_uuid``, else
``contact._id``) is one of those contacts' subject ids, or reports with no key at all for users
with ``can_view_unallocated_data_records``; and the user's own settings doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cht_interop.sandbox import views
from cht_interop.sandbox.auth import UserCtx, has_permissions, user_doc_id
from cht_interop.sandbox.core import Sandbox, is_contact
from cht_interop.sandbox.store import MEDIC, Doc
from cht_interop.sandbox.views import replication_key

_ALWAYS = ("settings", "resources", "branding", "partners")


@dataclass
class Scope:
    user: UserCtx
    contact_ids: set[str]
    subject_ids: set[str]
    unallocated: bool = False  # can_view_unallocated_data_records: reports with no key are visible

    def allows(self, doc: Doc) -> bool:
        doc_id = str(doc.get("_id", ""))
        if doc_id in _ALWAYS or doc_id == user_doc_id(self.user.name):
            return True
        if doc_id.startswith("_design/"):
            return doc_id == "_design/medic-client"
        if is_contact(doc):
            return doc_id in self.contact_ids
        if doc.get("type") == "data_record":
            key = replication_key(doc)
            return key in self.subject_ids if key is not None else self.unallocated
        return False


def scope_for(sandbox: Sandbox, user: UserCtx) -> Scope:
    contact_ids: set[str] = set()
    subject_ids: set[str] = set()
    facility = user.facility_id
    if facility:
        # the facility and every contact under it: the CHT's contacts_by_depth view, by key
        below = sandbox.store.view_ids(MEDIC, views.CONTACTS_BY_DEPTH, [facility])
        for doc in sandbox.store.get_many(MEDIC, below):
            if is_contact(doc):
                contact_ids.add(doc["_id"])
                subject_ids.add(doc["_id"])
                for key in ("patient_id", "place_id"):
                    if doc.get(key):
                        subject_ids.add(str(doc[key]))
    if user.contact_id:
        contact_ids.add(user.contact_id)
        subject_ids.add(user.contact_id)
    unallocated = has_permissions(sandbox.settings(), user, "can_view_unallocated_data_records")
    return Scope(user, contact_ids, subject_ids, unallocated)


def visible_docs(sandbox: Sandbox, user: UserCtx) -> list[dict[str, Any]]:
    """What the user replicates, in id order: read by key (contacts by depth, reports by
    replication key), so it costs what the user sees, not what the database holds."""
    scope = scope_for(sandbox, user)
    store = sandbox.store
    ids = {*_ALWAYS, user_doc_id(user.name), "_design/medic-client", *scope.contact_ids}
    keys: list[str | None] = [*scope.subject_ids, *([None] if scope.unallocated else [])]
    for key in keys:
        ids.update(store.view_ids(MEDIC, views.DOCS_BY_REPLICATION_KEY, key))
    return [d for d in store.get_many(MEDIC, ids) if scope.allows(d)]
