"""The CHT's own configuration tool, cht-conf, against the sandbox on loopback HTTP.

Each action an implementer runs against a CHT must succeed and leave what it leaves in a CHT:
settings (and a backup of them), app and contact forms with their attachments, resources,
custom translations, docs from CSV, users from CSV, contacts deleted with their reports. A second
upload of the same project must change nothing. After the project's settings are uploaded, the
sandbox's Sentinel pushes to the outbound destination they name. The shipped configuration
(``cht/config``) uploads too. Never skipped: missing tools fail with the ``.ci/setup-extra`` hint.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cht_interop.cht.config_loader import CONFIG_DIR
from cht_interop.sandbox.app import create_sandbox_app
from cht_interop.sandbox.config import SandboxConfig
from tests.support.live import serve_in_thread
from tests.support.receiver import CallbackReceiver, Received, callback_receiver

pytestmark = pytest.mark.harness

CHT = Path(__file__).parent / "harness" / "node_modules" / ".bin" / "cht"
ADMIN = ("admin", "Conf-Sandbox-pw-1")
PUSH_PASSWORD = "Push-receiver-pw-9"
CHW_PASSWORD = "Dakar1234"  # the reference deployment's CHW password: score 55
# a 1x1 PNG: a binary attachment (CouchDB does not compress image/png)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class Sandbox:
    url: str
    http: httpx.Client

    def cht(self, project: Path, *actions: str, extra: tuple[str, ...] = ()) -> str:
        """Run cht-conf as an implementer does against a CHT (``--force``: no questions)."""
        if not CHT.exists():
            pytest.fail(f"cht-conf is missing at {CHT}: run .ci/setup-extra")
        user, password = ADMIN
        url = self.url.replace("http://", f"http://{user}:{password}@")
        args = [str(CHT), f"--url={url}", "--force", "--skip-dependency-check", "--skip-version-check"]
        args += ["--skip-git-check", *actions]
        if extra:
            args += ["--", *extra]
        result = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=240, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"cht {' '.join(actions)} failed:\n{output[-5000:]}"
        return output

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A bare sandbox (nothing installed), as a fresh CHT before its configuration is deployed."""
    config = SandboxConfig(
        data_path=tmp_path / "sandbox" / "cht.sqlite3", admin_username=ADMIN[0], admin_password=ADMIN[1]
    )
    with (
        serve_in_thread(create_sandbox_app(config)) as url,
        httpx.Client(base_url=url, auth=ADMIN, headers={"Accept": "application/json"}, timeout=30) as http,
    ):
        yield Sandbox(url, http)


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    with callback_receiver() as pair:
        yield pair


# -- a cht-conf project, as an implementer lays it out ----------------------------------------


def _xform(form_id: str, title: str) -> str:
    return f"""<?xml version="1.0"?>
<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/xhtml"
        xmlns:jr="http://openrosa.org/javarosa" xmlns:orx="http://openrosa.org/xforms">
  <h:head>
    <h:title>{title}</h:title>
    <model>
      <instance>
        <data id="{form_id}" version="2024-01-01">
          <visited/>
          <meta><instanceID/></meta>
        </data>
      </instance>
      <bind nodeset="/data/visited" type="string"/>
      <bind nodeset="/data/meta/instanceID" type="string" readonly="true()" jr:preload="uid"/>
    </model>
  </h:head>
  <h:body>
    <input ref="/data/visited"><label>Visited?</label></input>
  </h:body>
</h:html>
"""


def _app_settings(push_url: str) -> dict[str, Any]:
    return {
        "locale": "en",
        "transitions": {"mark_for_outbound": True},
        "roles": {
            "chw": {"name": "usertype.chw", "offline": True},
            "program_officer": {"name": "usertype.program-officer"},
        },
        "permissions": {
            "can_edit": ["chw", "program_officer"],
            "can_create_people": ["chw", "program_officer"],
            "can_configure": ["program_officer"],
        },
        "forms": {"VISIT": {"meta": {"code": "VISIT", "label": "Visit"}, "fields": {}}},
        "outbound": {
            "people_to_receiver": {
                "relevant_to": "doc.type === 'person'",
                "destination": {
                    "base_url": push_url,
                    "path": "/pushes/person",
                    "auth": {"type": "basic", "username": "sandbox-push", "password_key": "receiver"},
                },
                "mapping": {"id": "doc._id", "name": "doc.name"},
            }
        },
    }


def make_project(root: Path, push_url: str) -> Path:
    project = root / "project"
    (project / "forms" / "app" / "visit-media" / "images").mkdir(parents=True)
    (project / "forms" / "contact").mkdir(parents=True)
    (project / "resources").mkdir()
    (project / "translations").mkdir()
    (project / "csv").mkdir()
    (project / "json_docs").mkdir()
    (project / "app_settings.json").write_text(json.dumps(_app_settings(push_url), indent=2))
    (project / "forms" / "app" / "visit.xml").write_text(_xform("visit", "Home visit"))
    (project / "forms" / "app" / "visit.properties.json").write_text(
        json.dumps(
            {"title": "Home visit", "icon": "icon-person", "context": {"person": True, "place": False}}
        )
    )
    (project / "forms" / "app" / "visit-media" / "images" / "dot.png").write_bytes(PNG)
    (project / "forms" / "contact" / "person-create.xml").write_text(
        _xform("contact:person:create", "New person")
    )
    (project / "resources.json").write_text(json.dumps({"icon-person": "person.png"}))
    (project / "resources" / "person.png").write_bytes(PNG)
    (project / "translations" / "messages-en.properties").write_text("sandbox.greeting = Hello CHW\n")
    # a district with a fixed id (a json doc), and people from CSV that live in it
    district = {"_id": "district-1", "type": "district_hospital", "name": "District One"}
    (project / "json_docs" / "district-1.doc.json").write_text(json.dumps(district))
    (project / "csv" / "person.csv").write_text(
        "name,phone,role,parent._id\nAda Patient,+254700000101,patient,district-1\n"
        "Bo Patient,+254700000102,patient,district-1\n"
    )
    (project / "users.csv").write_text(
        "username,password,roles,phone,place,contact.name,contact.phone\n"
        f"chw_ada,{CHW_PASSWORD},chw,+254700000201,district-1,Chw Ada,+254700000201\n"
    )
    return project


def _pushes_about(rec: CallbackReceiver, doc_id: str, timeout: float = 30) -> list[Received]:
    """The pushes whose body names ``doc_id`` (others, queued before the password was set, may come)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in list(rec.requests) if json.loads(p.body or b"{}").get("id") == doc_id]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no push about {doc_id}; got {[p.body for p in rec.requests]}")


# -- the tests ----------------------------------------------------------------------------------


CONFIGURE = (
    "backup-app-settings",
    "upload-app-settings",
    "upload-app-forms",
    "upload-contact-forms",
    "upload-resources",
    "upload-custom-translations",
)


def test_cht_conf_configures_the_sandbox_as_a_cht(
    sandbox: Sandbox, receiver: tuple[CallbackReceiver, str], tmp_path: Path
) -> None:
    rec, push_url = receiver
    project = make_project(tmp_path, push_url)
    first = sandbox.cht(project, *CONFIGURE, "csv-to-docs", "upload-docs", "create-users")
    assert "Settings updated successfully" in first

    # settings: exactly the project's (a backup of the empty ones was written first)
    settings = sandbox.get("/api/v1/settings")
    assert settings == json.loads((project / "app_settings.json").read_text())
    (backup,) = (project / "backups").glob("app_settings.json.*.bak")
    assert json.loads(backup.read_text()) == {}  # the bare sandbox's settings, before the upload
    assert sandbox.get("/medic/_design/medic/_rewrite/app_settings/medic/forms.VISIT")["settings"] == {
        "meta": {"code": "VISIT", "label": "Visit"},
        "fields": {},
    }

    # forms, with the XML and media as attachments read back byte for byte
    form = sandbox.get("/medic/form:visit")
    assert form["type"] == "form" and form["internalId"] == "visit" and form["title"] == "Home visit"
    assert form["context"] == {"person": True, "place": False} and form["icon"] == "icon-person"
    assert set(form["_attachments"]) == {"xml", "images/dot.png"}
    xml = sandbox.http.get("/medic/form:visit/xml")
    assert xml.content == (project / "forms" / "app" / "visit.xml").read_bytes()
    assert sandbox.http.get("/medic/form:visit/images/dot.png").content == PNG
    contact_form = sandbox.get("/medic/form:contact:person:create")
    assert contact_form["internalId"] == "contact:person:create"

    # resources and translations docs
    resources = sandbox.get("/medic/resources")
    assert resources["resources"] == {"icon-person": "person.png"}
    assert resources["_attachments"]["person.png"]["content_type"] == "image/png"
    messages = sandbox.get("/medic/messages-en")
    assert messages["type"] == "translations" and messages["code"] == "en"
    assert messages["custom"] == {"sandbox.greeting": "Hello CHW"} and messages["generic"] == {}

    # docs from CSV and json_docs
    people = sandbox.http.post(
        "/medic/_find", json={"selector": {"type": "person", "role": "patient"}}
    ).json()["docs"]
    assert sorted(p["name"] for p in people) == ["Ada Patient", "Bo Patient"]
    assert all(p["parent"] == {"_id": "district-1"} and p["imported_date"] for p in people)
    assert sandbox.get("/medic/district-1")["name"] == "District One"

    # the user from users.csv logs in, an offline CHW at the district with a new contact
    login = httpx.post(
        f"{sandbox.url}/_session", json={"name": "chw_ada", "password": CHW_PASSWORD}, timeout=10
    )
    assert login.status_code == 200 and login.json()["roles"] == ["chw"], login.text
    user_settings = sandbox.get("/medic/org.couchdb.user:chw_ada")
    assert user_settings["facility_id"] == "district-1" and user_settings["phone"] == "+254700000201"
    contact = sandbox.get(f"/medic/{user_settings['contact_id']}")
    assert contact["name"] == "Chw Ada" and contact["parent"] == {"_id": "district-1"}

    # a second run of the same project changes nothing
    second = sandbox.cht(project, *CONFIGURE)
    assert "Settings not updated - no changes detected" in second
    assert "visit.xml not uploaded, no changes" in second
    assert "person-create.xml not uploaded, no changes" in second
    assert "Configuration not uploaded as no changes found" in second
    assert "messages-en.properties not uploaded as no changes were found" in second
    assert sandbox.get("/medic/form:visit")["_rev"] == form["_rev"]

    # Sentinel pushes to the destination the uploaded settings name, with the stored password
    r = sandbox.http.put(
        "/api/v1/credentials/receiver", content=PUSH_PASSWORD, headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200, r.text
    person = sandbox.http.post(
        "/api/v1/people",
        json={"name": "Cy Patient", "type": "person", "place": "district-1"},
        headers={"Content-Type": "application/json"},
    ).json()
    pushes = _pushes_about(rec, person["id"])
    assert pushes[0].method == "POST" and pushes[0].path == "/pushes/person"
    assert json.loads(pushes[0].body) == {"id": person["id"], "name": "Cy Patient"}
    expected = base64.b64encode(f"sandbox-push:{PUSH_PASSWORD}".encode()).decode()
    assert pushes[0].headers["authorization"] == f"Basic {expected}"


def test_cht_conf_deletes_contacts_with_their_reports(
    sandbox: Sandbox, receiver: tuple[CallbackReceiver, str], tmp_path: Path
) -> None:
    _rec, push_url = receiver
    project = make_project(tmp_path, push_url)
    sandbox.cht(project, "upload-app-settings", "csv-to-docs", "upload-docs")
    people = sandbox.http.post("/medic/_find", json={"selector": {"type": "person"}}).json()["docs"]
    ada = next(p for p in people if p["name"] == "Ada Patient")
    visit = {"type": "data_record", "form": "visit"}
    report = {**visit, "_id": "visit-ada", "fields": {"patient_id": ada["_id"]}}
    other = {**visit, "_id": "visit-bo", "fields": {"patient_uuid": "nobody"}}
    r = sandbox.http.post("/medic/_bulk_docs", json={"docs": [report, other]})
    assert r.status_code == 201, r.text
    for staged in (project / "json_docs").glob("*.doc.json"):
        staged.unlink()

    sandbox.cht(project, "delete-contacts", "upload-docs", extra=(f"--contacts={ada['_id']}",))

    assert sandbox.http.get(f"/medic/{ada['_id']}").json() == {"error": "not_found", "reason": "deleted"}
    assert sandbox.http.get("/medic/visit-ada").json() == {"error": "not_found", "reason": "deleted"}
    assert sandbox.get("/medic/visit-bo")["_id"] == "visit-bo"
    assert sandbox.get("/medic/district-1")["name"] == "District One"


def test_the_shipped_configuration_deploys_with_plain_cht(sandbox: Sandbox, tmp_path: Path) -> None:
    """``cht --url=…`` with no action: cht-conf's default list (compile, back up, delete and upload
    forms, every upload), as an implementer deploys a project; then a second, unchanged upload."""
    project = tmp_path / "shipped"
    shutil.copytree(CONFIG_DIR, project, ignore=shutil.ignore_patterns("node_modules"))
    output = sandbox.cht(project)
    assert "upload-database-indexes complete." in output and "All actions completed." in output
    compiled = json.loads((project / "app_settings.json").read_text())  # what compile-app-settings made
    assert sandbox.get("/api/v1/settings") == compiled
    assert compiled["forms"] == json.loads((CONFIG_DIR / "app_settings.json").read_text())["forms"]
    form = sandbox.get("/medic/form:interop_follow_up")
    xml = sandbox.http.get("/medic/form:interop_follow_up/xml").content
    assert xml == (CONFIG_DIR / "forms" / "app" / "interop_follow_up.xml").read_bytes()
    assert form["internalId"] == "interop_follow_up"
    again = sandbox.cht(project, "upload-app-settings", "upload-app-forms")
    assert "Settings not updated - no changes detected" in again
    assert "interop_follow_up.xml not uploaded, no changes" in again
