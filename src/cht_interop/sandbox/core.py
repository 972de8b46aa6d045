"""The sandbox's shared state: documents, settings, vault, V8, and lineage helpers used by every part."""

from __future__ import annotations

import copy
import time
from typing import Any

from cht_interop.cht.configure import translations_doc
from cht_interop.sandbox import views
from cht_interop.sandbox.auth import Authenticator
from cht_interop.sandbox.config import SandboxConfig, TaskRules
from cht_interop.sandbox.js import JsRuntime
from cht_interop.sandbox.store import MEDIC, SANDBOX, Doc, DocStore
from cht_interop.sandbox.vault import Vault, load_or_create_key

SETTINGS_ID = "settings"
TASK_RULES_ID = "task-rules"
#: The cht-core version whose API the sandbox answers as (``/api/deploy-info``); cht-conf picks
#: its upload format by it (generic translations, no nools boilerplate, nouveau search).
EMULATED_VERSION = "5.2.0"
CONTACT_TYPES = ("contact", "person", "clinic", "health_center", "district_hospital")


class Sandbox:
    """Owns the store and the V8 runtime for one sandbox process; :meth:`close` releases both."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = DocStore(config.data_path, indexer=views.emit, index_version=views.VIEWS_VERSION)
        self.vault = Vault(self.store, load_or_create_key(config.resolved_key_path))
        self.auth = Authenticator(self.store, config.admin_username, config.admin_password)
        self.js = JsRuntime()
        self._install()

    def close(self) -> None:
        self.js.close()
        self.store.close()

    def _install(self) -> None:
        if self.config.app_settings is not None:
            self.update_settings(copy.deepcopy(self.config.app_settings), mode="overwrite")
        if self.config.task_rules is not None:
            self.install_task_rules(self.config.task_rules)
        for key, secret in self.config.credentials.items():
            self.vault.set(key, secret)
        for code, ours in self.config.translations.items():
            self.install_translations(code, ours)

    # -- translations -------------------------------------------------------------------------

    def install_translations(self, code: str, ours: dict[str, str]) -> None:
        """Merge custom translations into ``messages-<code>`` as ``cht configure`` does on a CHT."""
        existing = self.store.find(MEDIC, f"messages-{code}")
        merged = translations_doc(existing, code, ours)
        if merged != existing:
            self.store.put(MEDIC, merged)

    def translate(self, key: str, code: str = "en") -> str:
        """The text the CHT's web app shows for ``key``: the doc's ``custom`` entries win over its
        ``generic`` ones (CHT 3.4+; ``values`` before), else the key itself."""
        doc = self.store.find(MEDIC, f"messages-{code}") or {}
        for part in ("custom", "generic", "values"):
            text = (doc.get(part) or {}).get(key)
            if isinstance(text, str) and text:
                return text
        return key

    # -- time ---------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.config.clock().timestamp() * 1000)

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    # -- settings -----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        doc = self.store.find(MEDIC, SETTINGS_ID)
        return dict(doc.get("settings") or {}) if doc else {}

    def update_settings(self, body: dict[str, Any], *, mode: str = "extend") -> bool:
        """``PUT /api/v1/settings``: deep-merge (default), ``replace`` top-level keys, or ``overwrite``."""
        doc = self.store.find(MEDIC, SETTINGS_ID) or {"_id": SETTINGS_ID}
        current = copy.deepcopy(doc.get("settings") or {})
        original = copy.deepcopy(current)
        if mode == "overwrite":
            current = body
        elif mode == "replace":
            current.update(body)
        else:
            _extend(current, body)
        if current == original and "settings" in doc:
            return False
        doc["settings"] = current
        self.store.put(MEDIC, doc)
        return True

    def install_task_rules(self, rules: TaskRules) -> None:
        doc = self.store.find(SANDBOX, TASK_RULES_ID) or {"_id": TASK_RULES_ID}
        doc.update({"modules": rules.modules, "entry": rules.entry})
        self.store.put(SANDBOX, doc)

    def task_rules(self) -> TaskRules | None:
        doc = self.store.find(SANDBOX, TASK_RULES_ID)
        if doc is None:
            return None
        return TaskRules(modules=dict(doc["modules"]), entry=str(doc["entry"]))

    def contact_types(self) -> list[dict[str, Any]]:
        types = self.settings().get("contact_types")
        if isinstance(types, list) and types:
            return [t for t in types if isinstance(t, dict)]
        return _DEFAULT_CONTACT_TYPES

    # -- lineage ------------------------------------------------------------------------------

    def get_medic(self, doc_id: str) -> Doc | None:
        return self.store.find(MEDIC, doc_id)

    def lineage_ids(self, doc: Doc) -> list[str]:
        """Ancestor ids from the minified ``parent`` chain, nearest first."""
        ids: list[str] = []
        parent = doc.get("parent")
        while isinstance(parent, dict) and parent.get("_id"):
            ids.append(str(parent["_id"]))
            parent = parent.get("parent")
        return ids

    def minified_lineage(self, doc_id: str) -> dict[str, Any]:
        """``{_id, parent: {_id, …}}`` for a stored contact, as the CHT stores ``parent``/``contact``."""
        doc = self.get_medic(doc_id)
        if doc is None:
            return {"_id": doc_id}
        out: dict[str, Any] = {"_id": doc_id}
        parent = doc.get("parent")
        if isinstance(parent, dict) and parent.get("_id"):
            out["parent"] = _minify(parent)
        return out

    def hydrate(self, doc: Doc) -> Doc:
        """As Sentinel's lineage hydration: parents and contacts embedded, reports get ``patient``."""
        out = copy.deepcopy(doc)
        cache: dict[str, Doc | None] = {}

        def fetch(doc_id: str) -> Doc | None:
            if doc_id not in cache:
                cache[doc_id] = self.get_medic(doc_id)
            return copy.deepcopy(cache[doc_id]) if cache[doc_id] else None

        def hydrate_parents(d: Doc, depth: int = 0) -> None:
            parent = d.get("parent")
            if depth > 20 or not isinstance(parent, dict) or not parent.get("_id"):
                return
            full = fetch(str(parent["_id"]))
            if full is not None:
                hydrate_parents(full, depth + 1)
                d["parent"] = full

        def hydrate_contact(d: Doc) -> None:
            contact = d.get("contact")
            if isinstance(contact, dict) and contact.get("_id"):
                full = fetch(str(contact["_id"]))
                if full is not None:
                    hydrate_parents(full)
                    d["contact"] = full

        hydrate_parents(out)
        hydrate_contact(out)
        if out.get("type") == "data_record":
            fields = fields_of(out)
            subject = out.get("patient_id") or fields.get("patient_id") or fields.get("patient_uuid")
            if subject:
                patient = self.find_contact_by_subject(str(subject))
                if patient is not None:
                    hydrate_parents(patient)
                    out["patient"] = patient
            place_subject = out.get("place_id") or fields.get("place_id")
            if place_subject:
                place = self.find_contact_by_subject(str(place_subject))
                if place is not None:
                    hydrate_parents(place)
                    out["place"] = place
        else:
            parent = out.get("parent")
            while isinstance(parent, dict):
                hydrate_contact(parent)
                parent = parent.get("parent")
        return out

    def find_contact_by_subject(self, subject: str) -> Doc | None:
        """A contact whose ``_id``, ``patient_id`` or ``place_id`` is ``subject``."""
        doc = self.get_medic(subject)
        if doc is not None and is_contact(doc):
            return doc
        ids = self.store.view_ids(MEDIC, views.CONTACTS_BY_REFERENCE, ["shortcode", subject])
        for candidate in self.store.get_many(MEDIC, ids):
            if is_contact(candidate):
                return candidate
        return None

    def shortcode_taken(self, shortcode: str) -> bool:
        """Whether a contact already has ``shortcode`` as its ``patient_id`` or ``place_id``."""
        return bool(self.store.view_ids(MEDIC, views.CONTACTS_BY_REFERENCE, ["shortcode", shortcode]))


def settings_at(settings: dict[str, Any], path: str) -> Any:
    """object-path ``get`` on dotted ``path``, ``{}`` when the value is missing or falsy (as the CHT)."""
    value: Any = settings
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value or {}


def fields_of(doc: Doc) -> dict[str, Any]:
    fields = doc.get("fields")
    return fields if isinstance(fields, dict) else {}


def is_contact(doc: Doc) -> bool:
    return doc.get("type") in CONTACT_TYPES or (
        doc.get("type") == "contact" and bool(doc.get("contact_type"))
    )


def _minify(parent: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"_id": parent["_id"]}
    grand = parent.get("parent")
    if isinstance(grand, dict) and grand.get("_id"):
        out["parent"] = _minify(grand)
    return out


def _extend(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _extend(target[key], value)
        else:
            target[key] = value


# The CHT's defaults when app_settings declares no contact_types
_DEFAULT_CONTACT_TYPES: list[dict[str, Any]] = [
    {"id": "district_hospital"},
    {"id": "health_center", "parents": ["district_hospital"]},
    {"id": "clinic", "parents": ["health_center"]},
    {"id": "person", "parents": ["district_hospital", "health_center", "clinic"], "person": True},
]
