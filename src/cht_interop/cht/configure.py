"""Install the shipped CHT configuration into a running CHT, idempotently.

What ``cht-interop cht configure`` does, as cht-conf would (``upload-app-settings``,
``upload-app-forms``) but merging instead of overwriting the deployment's own configuration:

- app settings (``GET``/``PUT /api/v1/settings``): our JSON forms, outbound pushes, roles and
  transitions are merged in by key, our roles are added to the permissions we need, our contact
  types are added when missing, and the task rules are ours (the CHT runs one compiled rule set).
  Everything else the deployment has is kept. Nothing is written when the merge changes nothing.
- app forms: ``form:<id>`` docs in ``/medic`` with the XForm as the ``xml`` attachment and the
  ``.properties.json`` values, rewritten only when the XML (by hash) or a property differs.
- custom translations: the ``messages-<code>`` docs in ``/medic`` (what cht-core's webapp and API
  read: ``generic`` with ``custom`` over it), our keys merged into ``custom`` (the deployment's own
  custom keys kept; cht-conf ``upload-custom-translations`` would replace them all), written only
  when a key differs; a language the CHT lacks gets a new doc as cht-conf makes it.
- the outbound push password goes to the CHT credentials store (cht-core credentials.js), never the settings.
"""

from __future__ import annotations

import base64
import copy
import difflib
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cht_interop.cht.client import ChtClient
from cht_interop.cht.config_loader import AppConfig, AppForm

#: Form doc properties cht-conf copies from ``<form>.properties.json``.
FORM_PROPERTIES = ("context", "icon", "title", "xml2sms", "subject_key", "hidden_fields")
#: The credentials-store key our outbound pushes name as ``password_key``.
PUSH_PASSWORD_KEY = "interop-client"

_XFORMS = "{http://www.w3.org/2002/xforms}"
_XHTML = "{http://www.w3.org/1999/xhtml}"

# Top-level keys merged by key (ours win per key); anything not listed is set only when missing.
_MERGED_BY_KEY = ("forms", "outbound", "roles", "transitions")
# Keys the compiled configuration owns outright.
_REPLACED = ("tasks",)


def configure_outbound(
    settings: Mapping[str, Any], *, base_url: str | None, username: str | None
) -> dict[str, Any]:
    """Our settings with every outbound push pointed at ``base_url`` as ``username`` (when given)."""
    result = copy.deepcopy(dict(settings))
    for push in result.get("outbound", {}).values():
        destination = push.setdefault("destination", {})
        if base_url:
            destination["base_url"] = base_url.rstrip("/")
        if username:
            destination.setdefault("auth", {})["username"] = username
    return result


def _merge_permissions(current: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    merged = {name: list(roles) for name, roles in current.items()}
    for name, roles in ours.items():
        have = merged.setdefault(name, [])
        have.extend(role for role in roles if role not in have)
    return merged


def _merge_contact_types(current: list[Any], ours: list[Any]) -> list[Any]:
    known = {entry.get("id") for entry in current if isinstance(entry, dict)}
    return [*current, *(entry for entry in ours if entry.get("id") not in known)]


def merge_settings(current: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """The CHT's settings with ours merged in (see the module docstring); ``current`` is not changed."""
    merged = copy.deepcopy(dict(current))
    for key, value in ours.items():
        value = copy.deepcopy(value)
        existing = merged.get(key)
        if key in _MERGED_BY_KEY and isinstance(existing, dict):
            for name, entry in value.items():
                if key == "roles" and isinstance(existing.get(name), dict):
                    existing[name] = {**existing[name], **entry}
                else:
                    existing[name] = entry
        elif key == "permissions" and isinstance(existing, dict):
            merged[key] = _merge_permissions(existing, value)
        elif key == "contact_types" and isinstance(existing, list):
            merged[key] = _merge_contact_types(existing, value)
        elif key in _REPLACED or key in _MERGED_BY_KEY or key == "permissions" or existing is None:
            merged[key] = value
    return merged


#: Strings longer than this (compiled task rules, contact summary) are shown by length and hash.
LONG_STRING = 300


def _abbreviated(value: Any) -> Any:
    if isinstance(value, str) and len(value) > LONG_STRING:
        digest = hashlib.sha256(value.encode()).hexdigest()[:12]
        return f"<{len(value)} characters, sha256 {digest}…>"
    if isinstance(value, dict):
        return {key: _abbreviated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_abbreviated(item) for item in value]
    return value


def settings_diff(current: Mapping[str, Any], merged: Mapping[str, Any]) -> list[str]:
    """A unified diff of the two settings as sorted, indented JSON; empty when they are equal.

    Long strings (compiled JavaScript) appear as their length and hash, so a change still shows.
    """
    if current == merged:
        return []

    def lines(settings: Mapping[str, Any]) -> list[str]:
        return json.dumps(_abbreviated(settings), indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return list(
        difflib.unified_diff(lines(current), lines(merged), "CHT settings", "after configure", lineterm="")
    )


def _xml_sha256(xml: str) -> str:
    return hashlib.sha256(xml.encode()).hexdigest()


def _xml_couch_digest(xml: str) -> str:
    # CouchDB's attachment digest, for form docs uploaded without cht-conf's xmlVersion.
    return "md5-" + base64.b64encode(hashlib.md5(xml.encode(), usedforsecurity=False).digest()).decode()


def _title_from(xml: str) -> str | None:
    title = ET.fromstring(xml).find(f"{_XHTML}head/{_XHTML}title")
    return title.text if title is not None else None


def _internal_id_from(xml: str) -> str:
    data = ET.fromstring(xml).find(f"{_XHTML}head/{_XFORMS}model/{_XFORMS}instance/*")
    if data is None or not data.get("id"):
        raise ValueError("the XForm has no instance id")
    return str(data.get("id"))


def form_doc(form: AppForm, *, now_ms: int | None = None) -> dict[str, Any]:
    """The ``form:<id>`` doc cht-conf uploads for an app form (without ``_rev``)."""
    doc: dict[str, Any] = {
        "_id": form.doc_id,
        "type": "form",
        "internalId": _internal_id_from(form.xml),
        "xmlVersion": {
            "time": now_ms if now_ms is not None else int(time.time() * 1000),
            "sha256": _xml_sha256(form.xml),
        },
        "title": _title_from(form.xml),
    }
    for key in FORM_PROPERTIES:
        if key in form.properties:
            doc[key] = form.properties[key]
    doc["_attachments"] = {
        "xml": {
            "content_type": "application/xml",
            "data": base64.b64encode(form.xml.encode()).decode("ascii"),
        }
    }
    return doc


def form_changes(existing: Mapping[str, Any] | None, form: AppForm) -> list[str]:
    """What differs between the CHT's form doc and ours: property names, ``xml``, or ``new``."""
    if existing is None:
        return ["new"]
    wanted = form_doc(form, now_ms=0)
    changes = [
        key
        for key in ("type", "internalId", "title", *FORM_PROPERTIES)
        if existing.get(key) != wanted.get(key)
    ]
    sha = (existing.get("xmlVersion") or {}).get("sha256")
    digest = ((existing.get("_attachments") or {}).get("xml") or {}).get("digest")
    if not (sha == _xml_sha256(form.xml) or (sha is None and digest == _xml_couch_digest(form.xml))):
        changes.append("xml")
    return changes


#: Names of the languages we ship translations for (cht-conf takes them from ISO 639).
LANGUAGE_NAMES = {"en": "English", "fr": "Français (French)", "es": "Español (Spanish)"}


def translations_doc(
    existing: Mapping[str, Any] | None, code: str, ours: Mapping[str, str]
) -> dict[str, Any]:
    """The ``messages-<code>`` doc with our keys in it (see the module docstring)."""
    if existing is None:
        return {
            "_id": f"messages-{code}",
            "type": "translations",
            "code": code,
            "name": LANGUAGE_NAMES.get(code, code),
            "enabled": True,
            "generic": {},
            "custom": dict(ours),
        }
    doc = copy.deepcopy(dict(existing))
    if isinstance(doc.get("generic"), dict):  # CHT 3.4+
        doc["custom"] = {**(doc.get("custom") or {}), **ours}
    elif isinstance(doc.get("values"), dict):  # before 3.4
        doc["values"] = {**doc["values"], **ours}
    else:
        raise ValueError(f"the CHT's {doc.get('_id')} doc is neither of the translation doc shapes")
    return doc


@dataclass(frozen=True)
class TranslationsPlan:
    code: str
    existing: dict[str, Any] | None
    wanted: dict[str, Any]

    @property
    def doc_id(self) -> str:
        return f"messages-{self.code}"

    @property
    def changes(self) -> list[str]:
        if self.existing is None:
            return ["new"]
        return [] if self.wanted == self.existing else ["custom"]


@dataclass(frozen=True)
class FormPlan:
    form: AppForm
    existing: dict[str, Any] | None
    changes: list[str]


@dataclass(frozen=True)
class ConfigurePlan:
    """What configure would write; ``changed`` is False when the CHT already has it all."""

    current_settings: dict[str, Any]
    merged_settings: dict[str, Any]
    diff: list[str]
    forms: list[FormPlan] = field(default_factory=list)
    translations: list[TranslationsPlan] = field(default_factory=list)

    @property
    def settings_changed(self) -> bool:
        return bool(self.diff)

    @property
    def changed(self) -> bool:
        return (
            self.settings_changed
            or any(plan.changes for plan in self.forms)
            or any(plan.changes for plan in self.translations)
        )


async def plan_configure(
    client: ChtClient,
    config: AppConfig,
    *,
    interop_url: str | None = None,
    interop_username: str | None = None,
) -> ConfigurePlan:
    """Read the CHT's settings and form docs and work out what configure would change."""
    ours = configure_outbound(config.settings, base_url=interop_url, username=interop_username)
    current = await client.get_settings()
    merged = merge_settings(current, ours)
    forms = []
    for form in config.forms.values():
        existing = await client.get_doc(form.doc_id)
        forms.append(FormPlan(form=form, existing=existing, changes=form_changes(existing, form)))
    translations = []
    for code, values in config.translations.items():
        existing = await client.get_doc(f"messages-{code}")
        translations.append(TranslationsPlan(code, existing, translations_doc(existing, code, values)))
    return ConfigurePlan(current, merged, settings_diff(current, merged), forms, translations)


async def apply_configure(client: ChtClient, plan: ConfigurePlan) -> None:
    """Write what the plan says changed (settings first, then the form docs)."""
    if plan.settings_changed:
        await client.replace_settings(plan.merged_settings)
    for form_plan in plan.forms:
        if not form_plan.changes:
            continue
        doc = form_doc(form_plan.form)
        if form_plan.existing is not None:
            doc["_rev"] = form_plan.existing["_rev"]
        await client.put_doc(doc)
    for translations_plan in plan.translations:
        if translations_plan.changes:
            await client.put_doc(translations_plan.wanted)


async def store_push_password(client: ChtClient, password: str, *, key: str = PUSH_PASSWORD_KEY) -> None:
    """Put the outbound push password in the CHT credentials store (needs a CHT admin)."""
    await client.put_credential(key, password)
