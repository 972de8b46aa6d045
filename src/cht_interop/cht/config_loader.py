"""Load the shipped CHT app configuration (the cht-conf project in ``cht/config``) without Node.

The project directory is the source of truth; ``app_settings.json`` beside it is what cht-conf
``compile-app-settings`` made of it (compiled task rules and contact summary), committed so that
installing the configuration needs no Node. The settings parts (``app_settings/*.json``) win over
the compiled file, so an edit to them shows up here even before the next compile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import javaproperties

#: Where the packaged cht-conf project lives.
CONFIG_DIR = Path(str(resources.files("cht_interop.cht").joinpath("config")))

#: Settings parts cht-conf composes, in its order: base first, then the named keys.
_SETTINGS_PARTS = (
    ("forms", "forms.json"),
    ("schedules", "schedules.json"),
    ("assetlinks", "assetlinks.json"),
)
#: Keys only the compile step produces (from tasks.js, targets.js, contact-summary, purge).
COMPILED_KEYS = ("tasks", "contact_summary", "purge")


class ConfigError(Exception):
    """The configuration directory is incomplete or malformed."""


@dataclass(frozen=True)
class AppForm:
    """An app form (XForm) as cht-conf uploads it: the ``form:<id>`` doc's properties and its XML."""

    form_id: str
    xml: str
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return f"form:{self.form_id.replace('-', ':')}"


@dataclass(frozen=True)
class AppConfig:
    """The whole configuration: merged app settings, the task rule source and the app forms."""

    settings: dict[str, Any]
    tasks_js: str
    forms: dict[str, AppForm]
    directory: Path
    #: custom translations by language code (``translations/messages-<code>.properties``)
    translations: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def json_form_codes(self) -> list[str]:
        return sorted(self.settings.get("forms", {}))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"missing {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def load_settings(directory: Path = CONFIG_DIR) -> dict[str, Any]:
    """App settings as cht-conf compiles them: base settings, parts, then the compiled keys."""
    settings = _read_json(directory / "app_settings" / "base_settings.json")
    if not isinstance(settings, dict):
        raise ConfigError("base_settings.json must hold an object")
    for key, name in _SETTINGS_PARTS:
        part = directory / "app_settings" / name
        if part.exists():
            settings[key] = _read_json(part)
    compiled_path = directory / "app_settings.json"
    if compiled_path.exists():
        compiled = _read_json(compiled_path)
        for key in COMPILED_KEYS:
            if key in compiled:
                settings[key] = compiled[key]
    return settings


def load_app_forms(directory: Path = CONFIG_DIR) -> dict[str, AppForm]:
    """Every ``forms/app/<id>.xml`` with its ``<id>.properties.json`` (if any), keyed by form id."""
    forms: dict[str, AppForm] = {}
    for xml_path in sorted((directory / "forms" / "app").glob("*.xml")):
        form_id = xml_path.stem
        props_path = xml_path.with_name(f"{form_id}.properties.json")
        properties = _read_json(props_path) if props_path.exists() else {}
        forms[form_id] = AppForm(
            form_id=form_id, xml=xml_path.read_text(encoding="utf-8"), properties=properties
        )
    return forms


def load_translations(directory: Path = CONFIG_DIR) -> dict[str, dict[str, str]]:
    """``translations/messages-<code>.properties`` (as cht-conf reads them) by language code."""
    translations: dict[str, dict[str, str]] = {}
    for path in sorted((directory / "translations").glob("messages-*.properties")):
        code = path.name.removeprefix("messages-").removesuffix(".properties")
        with path.open(encoding="utf-8") as handle:
            translations[code] = dict(javaproperties.load(handle))
    return translations


def load_app_config(directory: Path = CONFIG_DIR) -> AppConfig:
    """Load the shipped configuration (or another cht-conf project directory)."""
    settings = load_settings(directory)
    tasks_path = directory / "tasks.js"
    if not tasks_path.exists():
        raise ConfigError(f"missing {tasks_path}")
    return AppConfig(
        settings=settings,
        tasks_js=tasks_path.read_text(encoding="utf-8"),
        forms=load_app_forms(directory),
        directory=directory,
        translations=load_translations(directory),
    )
