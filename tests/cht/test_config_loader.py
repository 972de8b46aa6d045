"""The shipped CHT configuration loads as one app-settings dict, the task rule and the app form."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cht_interop.cht.config_loader import CONFIG_DIR, ConfigError, load_app_config

XF = "{http://www.w3.org/2002/xforms}"


def test_settings_hold_the_json_forms_outbound_and_compiled_tasks() -> None:
    config = load_app_config()

    assert config.json_form_codes == ["INTEROP_FOLLOW_UP", "INTEROP_FOLLOW_UP_CANCEL"]
    assert set(config.settings["outbound"]) == {"FHIR_patient", "FHIR_encounter"}
    assert config.settings["tasks"]["isDeclarative"] is True
    assert "interop-follow-up" in config.settings["tasks"]["rules"]
    assert config.settings["contact_summary"].startswith("var ContactSummary")
    assert config.settings["roles"]["chw"]["offline"] is True
    assert config.settings["transitions"]["mark_for_outbound"] is True


def test_outbound_uses_the_credentials_store_never_a_password() -> None:
    settings = load_app_config().settings
    for push in settings["outbound"].values():
        auth = push["destination"]["auth"]
        assert auth == {"type": "basic", "username": "interop-client", "password_key": "interop-client"}
    assert "password" not in json.dumps(settings["outbound"]).replace("password_key", "")


def test_json_forms_declare_every_field_the_mediator_sends_in_lowercase() -> None:
    forms = load_app_config().settings["forms"]
    # docs/cht-contract.md §1 and §2
    assert set(forms["INTEROP_FOLLOW_UP"]["fields"]) == {
        "patient_uuid",
        "service_request_id",
        "task_id",
        "reason",
        "requester",
        "requester_id",
    }
    assert set(forms["INTEROP_FOLLOW_UP_CANCEL"]["fields"]) == {
        "patient_uuid",
        "service_request_id",
        "reason",
    }
    for form in forms.values():
        assert all(name == name.lower() for name in form["fields"])


def test_the_app_form_xml_is_shipped_with_the_contract_field_names() -> None:
    config = load_app_config()
    form = config.forms["interop_follow_up"]
    assert form.doc_id == "form:interop_follow_up"
    assert form.properties["icon"] == "icon-follow-up"

    root = ET.fromstring(form.xml)
    data = root.find(f".//{XF}instance/{XF}data")
    assert data is not None and data.get("id") == "interop_follow_up"
    top = [child.tag.removeprefix(XF) for child in data]
    for name in (
        "inputs",
        "patient_uuid",
        "patient_id",
        "source_id",
        "service_request_id",
        "outcome",
        "method",
        "notes",
    ):
        assert name in top
    choices = {
        inst.get("id"): [item.findtext(f"{XF}name") for item in inst.iter(f"{XF}item")]
        for inst in root.iter(f"{XF}instance")
        if inst.get("id") in {"outcome", "method"}
    }
    assert choices == {
        "outcome": ["returned_to_care", "refused", "not_located", "moved_away", "died", "other"],
        "method": ["visit", "phone", "sms"],
    }


def test_the_settings_parts_win_over_a_stale_compiled_file(tmp_path: Path) -> None:
    copy = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, copy, ignore=shutil.ignore_patterns("node_modules"))
    forms_path = copy / "app_settings" / "forms.json"
    forms = json.loads(forms_path.read_text())
    forms["EXTRA"] = {"meta": {"code": "EXTRA"}, "fields": {}}
    forms_path.write_text(json.dumps(forms))

    assert "EXTRA" in load_app_config(copy).settings["forms"]


def test_a_missing_part_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"base_settings\.json"):
        load_app_config(tmp_path)


# cht-conf's list of deprecated appearances (src/lib/validation/form/deprecated-appearance.js); its
# check needs a CHT instance to run, so the committed XForm is held to the same patterns here.
DEPRECATED_APPEARANCES = re.compile(
    r"(?:^|\s)(?:db-object|horizontal-compact|horizontal|compact(?:-\d{1,2})?)(?:$|\s)"
)


def test_the_app_form_uses_no_deprecated_appearance() -> None:
    form = load_app_config().forms["interop_follow_up"]
    elements = ET.fromstring(form.xml).iter()
    appearances = [el.get("appearance") or "" for el in elements if el.get("appearance")]
    assert "select-contact type-person" in appearances  # the patient question (was db-object)
    assert [a for a in appearances if DEPRECATED_APPEARANCES.search(a)] == []


def test_the_translations_name_every_key_the_configuration_shows() -> None:
    config = load_app_config()
    english = config.translations["en"]
    keys = {"task.interop_follow_up.title"} | {
        form["meta"]["translation_key"] for form in config.settings["forms"].values()
    }
    assert "task.interop_follow_up.title" in config.tasks_js
    assert {key: bool(english.get(key)) for key in keys} == dict.fromkeys(keys, True)
