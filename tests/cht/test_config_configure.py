"""``cht configure``: merging our configuration into a CHT's, the diff, the form docs, idempotency."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import httpx
import orjson
import pytest

from cht_interop.cht.client import ChtClient, ChtPermanentError
from cht_interop.cht.config_loader import load_app_config
from cht_interop.cht.configure import (
    apply_configure,
    configure_outbound,
    form_changes,
    form_doc,
    merge_settings,
    plan_configure,
    settings_diff,
    store_push_password,
    translations_doc,
)
from tests.fixtures.reference_deployment import reference_app_settings

CONFIG = load_app_config()
OURS = CONFIG.settings


@pytest.fixture
def reference_settings() -> dict[str, Any]:
    """A deployment of the reference project: what ``cht configure`` merges into."""
    return reference_app_settings()


def test_merging_into_a_deployment_keeps_its_own_configuration(reference_settings: dict[str, Any]) -> None:
    merged = merge_settings(reference_settings, OURS)

    # ours, by key
    assert merged["forms"]["INTEROP_FOLLOW_UP"] == OURS["forms"]["INTEROP_FOLLOW_UP"]
    assert "INTEROP_FOLLOW_UP_CANCEL" in merged["forms"]
    assert merged["outbound"]["FHIR_encounter"] == OURS["outbound"]["FHIR_encounter"]
    assert merged["tasks"] == OURS["tasks"]
    # theirs, kept
    assert merged["outbound"]["FHIR_practitioner"] == reference_settings["outbound"]["FHIR_practitioner"]
    assert merged["roles"]["data_entry"] == {"name": "usertype.data-entry"}
    assert merged["transitions"]["death_reporting"] is True  # we only switch on what we need
    assert merged["transitions"]["mark_for_outbound"] is True
    assert merged["transitions"]["registration"] is False
    assert merged["permissions"]["can_export_dhis"] == ["national_admin", "crfo"]
    # permissions are unions, in the deployment's order first
    assert merged["permissions"]["can_create_records"] == [
        "data_entry",
        "gateway",
        "program_officer",
        "chw_supervisor",
        "chw",
    ]
    assert merged["permissions"]["can_view_tasks"] == ["chw_supervisor", "chw"]
    # contact types are added by id, never duplicated
    assert [t["id"] for t in merged["contact_types"]] == [
        t["id"] for t in reference_settings["contact_types"]
    ]
    # the input is not modified
    assert "INTEROP_FOLLOW_UP_CANCEL" not in reference_settings["forms"]


def test_a_deployment_with_its_own_contact_summary_keeps_it() -> None:
    merged = merge_settings({"contact_summary": "return {fields: []};", "permissions": {}}, OURS)
    assert merged["contact_summary"] == "return {fields: []};"
    assert merged["permissions"]["can_view_tasks"] == ["chw_supervisor", "chw"]


def test_merging_twice_changes_nothing(reference_settings: dict[str, Any]) -> None:
    once = merge_settings(reference_settings, OURS)
    twice = merge_settings(once, OURS)

    assert twice == once
    assert settings_diff(once, twice) == []


def test_the_diff_shows_what_changes(reference_settings: dict[str, Any]) -> None:
    diff = settings_diff(reference_settings, merge_settings(reference_settings, OURS))
    text = "\n".join(diff)

    assert diff[0] == "--- CHT settings" and diff[1] == "+++ after configure"
    assert '+    "INTEROP_FOLLOW_UP_CANCEL": {' in text
    assert '-          "password_key": "openhim1"' in text  # the reference's FHIR_encounter, replaced
    assert '+          "password_key": "interop-client"' in text
    assert '"FHIR_practitioner"' not in "\n".join(line for line in diff if line[:1] in "+-")


def test_the_diff_shows_compiled_javascript_by_length_and_hash() -> None:
    current = {"tasks": {"rules": "x" * 5000}}
    diff = settings_diff(current, {"tasks": {"rules": "y" * 5000}})

    assert all(len(line) < 120 for line in diff)
    removed = [line for line in diff if line.startswith("-  ")]
    added = [line for line in diff if line.startswith("+  ")]
    assert len(removed) == len(added) == 1
    assert "5000 characters, sha256" in removed[0] and removed[0] != added[0].replace("+", "-", 1)


def test_outbound_is_pointed_at_the_interop_api_with_its_client_id() -> None:
    pointed = configure_outbound(OURS, base_url="https://interop.example.org/", username="ltfu-client")

    for push in pointed["outbound"].values():
        assert push["destination"]["base_url"] == "https://interop.example.org"
        assert push["destination"]["auth"] == {
            "type": "basic",
            "username": "ltfu-client",
            "password_key": "interop-client",
        }
    assert OURS["outbound"]["FHIR_patient"]["destination"]["base_url"] == "http://127.0.0.1:5001"


def test_the_form_doc_is_what_cht_conf_uploads() -> None:
    form = CONFIG.forms["interop_follow_up"]
    doc = form_doc(form, now_ms=1764000000000)

    assert doc["_id"] == "form:interop_follow_up"
    assert doc["type"] == "form"
    assert doc["internalId"] == "interop_follow_up"
    assert doc["title"] == [{"locale": "en", "content": "LTFU follow-up"}]
    assert doc["icon"] == "icon-follow-up"
    assert doc["context"]["person"] is True
    assert doc["xmlVersion"] == {
        "time": 1764000000000,
        "sha256": hashlib.sha256(form.xml.encode()).hexdigest(),
    }
    attachment = doc["_attachments"]["xml"]
    assert attachment["content_type"] == "application/xml"
    assert base64.b64decode(attachment["data"]).decode() == form.xml


def test_form_changes_compare_properties_and_xml() -> None:
    form = CONFIG.forms["interop_follow_up"]
    stored = form_doc(form, now_ms=1)
    stored["_attachments"] = {"xml": {"stub": True}}

    assert form_changes(None, form) == ["new"]
    assert form_changes(stored, form) == []
    assert form_changes({**stored, "icon": "other"}, form) == ["icon"]
    assert form_changes({**stored, "xmlVersion": {"sha256": "0" * 64}}, form) == ["xml"]
    # uploaded by other means: compared by CouchDB's attachment digest
    digest = "md5-" + base64.b64encode(hashlib.md5(form.xml.encode()).digest()).decode()
    without_version = {key: value for key, value in stored.items() if key != "xmlVersion"}
    assert form_changes({**without_version, "_attachments": {"xml": {"digest": digest}}}, form) == []
    assert form_changes({**without_version, "_attachments": {"xml": {"digest": "md5-x"}}}, form) == ["xml"]


class FakeCht:
    """A CHT double for the admin calls configure makes (cht-core settings/credentials; CouchDB docs)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.docs: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, str] = {}
        self.writes: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Authorization"].startswith("Basic ")
        path = request.url.path
        if path == "/api/v1/settings" and request.method == "GET":
            return httpx.Response(200, json=self.settings)
        if path == "/api/v1/settings" and request.method == "PUT":
            assert request.headers["Content-Type"] == "application/json"
            assert request.url.params["replace"] == "1"
            new = orjson.loads(request.content)
            updated = new != self.settings
            self.settings = new
            self.writes.append("settings")
            return httpx.Response(200, json={"success": True, "updated": updated})
        if path.startswith("/api/v1/credentials/") and request.method == "PUT":
            assert request.headers["Content-Type"] == "text/plain"
            self.credentials[path.rsplit("/", 1)[1]] = request.content.decode()
            return httpx.Response(200, json={"ok": True})
        if path.startswith("/medic/"):
            doc_id = path.removeprefix("/medic/")
            if request.method == "GET":
                if doc_id not in self.docs:
                    return httpx.Response(404, json={"error": "not_found", "reason": "missing"})
                return httpx.Response(200, json=self.docs[doc_id])
            if request.method == "PUT":
                doc = orjson.loads(request.content)
                current = self.docs.get(doc_id)
                if current is not None and doc.get("_rev") != current["_rev"]:
                    return httpx.Response(
                        409, json={"error": "conflict", "reason": "Document update conflict."}
                    )
                generation = int(current["_rev"].split("-")[0]) + 1 if current else 1
                doc["_rev"] = f"{generation}-abc"
                for name, attachment in doc.get("_attachments", {}).items():
                    data = base64.b64decode(attachment["data"])
                    doc["_attachments"][name] = {
                        "content_type": attachment["content_type"],
                        "digest": "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode(),
                        "length": len(data),
                        "stub": True,
                    }
                self.docs[doc_id] = doc
                self.writes.append(doc_id)
                return httpx.Response(201, json={"ok": True, "id": doc_id, "rev": doc["_rev"]})
        return httpx.Response(404, json={"code": 404, "error": "not_found"})


async def test_configure_writes_once_then_finds_nothing_to_do(reference_settings: dict[str, Any]) -> None:
    cht = FakeCht(copy.deepcopy(reference_settings))
    async with httpx.AsyncClient(transport=httpx.MockTransport(cht.handler)) as http:
        client = ChtClient("https://cht.example.org", "admin", "pass", http)

        first = await plan_configure(client, CONFIG, interop_url="https://interop.example.org")
        assert first.changed and first.settings_changed
        assert [plan.changes for plan in first.forms] == [["new"]]
        await apply_configure(client, first)
        await store_push_password(client, "s3cret-push")

        assert cht.writes == ["settings", "form:interop_follow_up", "messages-en"]
        assert cht.docs["messages-en"]["custom"]["task.interop_follow_up.title"] == "LTFU follow-up"
        assert cht.settings["forms"]["INTEROP_FOLLOW_UP_CANCEL"] == OURS["forms"]["INTEROP_FOLLOW_UP_CANCEL"]
        assert (
            cht.settings["outbound"]["FHIR_patient"]["destination"]["base_url"]
            == "https://interop.example.org"
        )
        assert cht.credentials == {"interop-client": "s3cret-push"}
        assert "s3cret-push" not in json.dumps(cht.settings)

        second = await plan_configure(client, CONFIG, interop_url="https://interop.example.org")
        assert not second.changed
        assert second.diff == []
        await apply_configure(client, second)
        assert cht.writes == ["settings", "form:interop_follow_up", "messages-en"]

        # a changed form on the CHT is put back, with its current _rev
        cht.docs["form:interop_follow_up"]["icon"] = "edited"
        third = await plan_configure(client, CONFIG, interop_url="https://interop.example.org")
        assert not third.settings_changed and [plan.changes for plan in third.forms] == [["icon"]]
        await apply_configure(client, third)
        assert cht.docs["form:interop_follow_up"]["_rev"].startswith("2-")
        assert cht.docs["form:interop_follow_up"]["icon"] == "icon-follow-up"


def test_translations_go_into_custom_and_keep_the_deployments_keys() -> None:
    ours = {"task.interop_follow_up.title": "LTFU follow-up"}
    current = {"_id": "messages-en", "_rev": "3-x", "generic": {"a": "A"}, "custom": {"b": "B"}}
    assert translations_doc(current, "en", ours) == {**current, "custom": {"b": "B", **ours}}
    old_shape = {"_id": "messages-en", "_rev": "1-x", "values": {"a": "A"}}  # CHT before 3.4
    assert translations_doc(old_shape, "en", ours)["values"] == {"a": "A", **ours}
    fresh = translations_doc(None, "en", ours)
    assert fresh == {
        "_id": "messages-en",
        "type": "translations",
        "code": "en",
        "name": "English",
        "enabled": True,
        "generic": {},
        "custom": ours,
    }
    with pytest.raises(ValueError, match="translation doc"):
        translations_doc({"_id": "messages-en"}, "en", ours)


async def test_a_cht_that_refuses_the_settings_is_an_error(reference_settings: dict[str, Any]) -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, json={"success": False, "error": "validation failed"})
        return (
            httpx.Response(200, json=reference_settings)
            if "settings" in request.url.path
            else httpx.Response(404, json={"error": "not_found"})
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(refusing)) as http:
        client = ChtClient("https://cht.example.org", "admin", "pass", http)
        plan = await plan_configure(client, CONFIG)
        with pytest.raises(ChtPermanentError, match="did not save the settings"):
            await apply_configure(client, plan)
