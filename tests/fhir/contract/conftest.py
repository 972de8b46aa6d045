"""The FHIR server as real FHIR client libraries see it: our app on a loopback port, driven by
fhirpy (sync and async) and the SMART ``fhirclient``, the libraries requesting systems already use.

One server per test module (starting one costs about a second); each test makes its own resources,
with identifiers unique to it, so tests in a module do not see each other's data.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fhirclient import client as smart_client
from fhirpy import AsyncFHIRClient, SyncFHIRClient

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings
from tests.support.live import serve_in_thread

AUTHORIZATION = "Basic " + base64.b64encode(":".join(CLIENT_AUTH).encode()).decode()


@pytest.fixture(scope="module")
def fhir_url(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[str]:
    """The FHIR base URL of a running server (``http://127.0.0.1:<port>/fhir``), SQLite-backed."""
    tmp = tmp_path_factory.mktemp("fhir-contract")
    db_file = tmp / "db.sqlite3"
    shutil.copy(sqlite_template, db_file)
    app = create_app(make_settings(tmp, f"sqlite:///{db_file}"), run_worker=False)
    with serve_in_thread(app) as root:
        yield f"{root}/fhir"


@pytest.fixture
def unique() -> str:
    """A value no other test uses: for identifiers, names and search filters."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def fhirpy_sync(fhir_url: str) -> SyncFHIRClient:
    return SyncFHIRClient(fhir_url, authorization=AUTHORIZATION)


@pytest.fixture
async def fhirpy_async(fhir_url: str) -> AsyncIterator[AsyncFHIRClient]:
    yield AsyncFHIRClient(fhir_url, authorization=AUTHORIZATION)


@pytest.fixture
def smart(fhir_url: str) -> smart_client.FHIRClient:
    """The SMART ``fhirclient`` against the server, authenticated on its requests session."""
    fhir = smart_client.FHIRClient(settings={"app_id": "cht-interop-tests", "api_base": fhir_url + "/"})
    fhir.server.session.auth = CLIENT_AUTH
    return fhir
