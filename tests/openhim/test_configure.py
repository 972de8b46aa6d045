"""``cht-interop openhim configure`` against the OpenHIM core double over loopback HTTP(S).

The command as an administrator runs it (typer's runner, settings from the environment): a fresh
core, a second run, a dry run, a core before 7.1 (token headers only), an OpenHIM set up by the
reference deployment's configurator (upgraded in place), TLS verification, and a follow-up routed
by core's rules through the channel and client the command made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cht_interop.cli import app as cli
from tests.openhim.conftest import ROOT
from tests.support import openhim_catalog as catalog
from tests.support.live import serve_in_thread
from tests.support.openhim_double import OpenHimDouble
from tests.support.tls import loopback_certificate

PASSWORD = "client-pass-0123456789"
WRITES = ("POST", "PUT", "DELETE")


def run(url: str, tmp_path: Path, *args: str, **env: str) -> Any:
    environment = {
        "OPENHIM_API_URL": url,
        "OPENHIM_USERNAME": ROOT[0],
        "OPENHIM_PASSWORD": ROOT[1],
        "OPENHIM_MEDIATOR_URL": "http://cht-interop:5001",
        "INTEROP_CLIENT_PASSWORD": PASSWORD,
        "DATA_DIR": str(tmp_path),
        "FHIR_URL": "",
        "COLUMNS": "200",
        **env,
    }
    if not environment["FHIR_URL"]:
        del environment["FHIR_URL"]
    return CliRunner().invoke(cli, ["openhim", "configure", *args], env=environment)


def writes(double: OpenHimDouble) -> list[tuple[str, str]]:
    return [(s.method, s.path) for s in double.seen if s.method in WRITES]


def test_fresh_core_then_nothing_to_do(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    first = run(url, tmp_path)
    assert first.exit_code == 0, first.output
    assert "OpenHIM configured" in first.output
    assert "version 8.5.0" in first.output

    client = double.clients["interop-client"]
    assert client["roles"] == ["interop"]
    assert client["passwordAlgorithm"] == "sha512"
    assert len(client["passwordSalt"]) == 32  # 16 random bytes, hex, as the console makes them
    assert client["passwordHash"] == hashlib.sha512((PASSWORD + client["passwordSalt"]).encode()).hexdigest()
    assert PASSWORD not in str(client)
    assert sorted(double.channels) == ["FHIR Server", "Mediator"]
    mediator = double.channels["Mediator"]
    assert mediator["urlPattern"] == "^/mediator/.*$"
    assert mediator["allow"] == ["interop"]
    assert set(mediator["methods"]) == {"GET", "POST", "PUT", "PATCH", "DELETE"}
    (route,) = mediator["routes"]
    assert (route["host"], route["port"], route["secured"]) == ("cht-interop", 5001, False)
    assert route["primary"] and route["forwardAuthHeader"]
    fhir_route = double.channels["FHIR Server"]["routes"][0]
    assert (fhir_route["host"], fhir_route["forwardAuthHeader"]) == ("cht-interop", True)

    before = len(writes(double))
    second = run(url, tmp_path)
    assert second.exit_code == 0, second.output
    assert "already up to date" in second.output
    assert second.output.count("unchanged") == 3
    assert len(writes(double)) == before  # the second run wrote nothing


def test_dry_run_writes_nothing(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    result = run(url, tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.count("create") == 3
    assert "dry run: nothing written" in result.output
    assert writes(double) == []
    assert double.clients == {} and double.channels == {}


def test_a_core_before_7_1_takes_the_token_headers(
    old_core: tuple[OpenHimDouble, str], tmp_path: Path
) -> None:
    double, url = old_core
    result = run(url, tmp_path)
    assert result.exit_code == 0, result.output
    assert {s.scheme for s in double.seen if s.method in WRITES} == {"token"}
    assert sorted(double.channels) == ["FHIR Server", "Mediator"]


def reference_install(url: str, old_password: str) -> None:
    """What the reference deployment leaves in core: its configurator's ``/metadata`` import (an
    admin user, the client ``interop-client`` with role ``interop``, the channel ``FHIR Server`` to
    HAPI) and its Node mediator's default channel ``Mediator`` (prefix stripped, to port 6000)."""
    salt = "0123456789abcdef0123456789abcdef"
    metadata = {
        "Users": [{"email": "interop@openhim.org", "groups": ["admin"], "passwordAlgorithm": "sha512"}],
        "Clients": [
            {
                "clientID": "interop-client",
                "name": "Interoperability Client",
                "roles": ["interop"],
                "passwordAlgorithm": "sha512",
                "passwordSalt": salt,
                "passwordHash": hashlib.sha512((old_password + salt).encode()).hexdigest(),
            }
        ],
        "Channels": [
            {
                "name": "FHIR Server",
                "description": "A FHIR server (HAPI FHIR)",
                "urlPattern": "^/fhir/.*$",
                "methods": ["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "TRACE", "CONNECT", "PATCH"],
                "type": "http",
                "allow": ["interop"],
                "authType": "private",
                "status": "enabled",
                "autoRetryEnabled": False,
                "routes": [
                    {
                        "name": "FHIR Server",
                        "host": "hapi-fhir",
                        "port": 8080,
                        "path": "",
                        "pathTransform": "",
                        "primary": True,
                        "type": "http",
                        "username": "",
                        "password": "",
                    }
                ],
            }
        ],
    }
    mediator = {
        "urn": "urn:mediator:ltfu-mediator",
        "version": "1.0.0",
        "name": "Loss to Follow Up Mediator",
        "endpoints": [
            {"name": "Mediator", "host": "mediator", "port": 6000, "primary": True, "type": "http"}
        ],
        "defaultChannelConfig": [
            {
                "name": "Mediator",
                "urlPattern": "^/mediator/.*$",
                "routes": [
                    {
                        "name": "Mediator",
                        "host": "mediator",
                        "pathTransform": "s/\\/mediator/",
                        "port": 6000,
                        "primary": True,
                        "type": "http",
                    }
                ],
                "allow": ["interop"],
                "methods": ["GET", "POST", "PUT", "DELETE"],
                "type": "http",
            }
        ],
    }
    with httpx.Client(base_url=url, auth=ROOT) as http:
        assert http.post("/metadata", json=metadata).status_code == 201
        assert http.post("/mediators", json=mediator).status_code == 201
        assert (
            http.post("/mediators/urn:mediator:ltfu-mediator/channels", json=["Mediator"]).status_code == 201
        )


def test_a_reference_install_is_upgraded_in_place(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    reference_install(url, old_password="reference-password")
    ids = {name: c["_id"] for name, c in double.channels.items()}
    client_id = double.clients["interop-client"]["_id"]

    result = run(url, tmp_path, FHIR_URL="http://hapi-fhir:8080/fhir", FHIR_USERNAME="", FHIR_PASSWORD="")
    assert result.exit_code == 0, result.output

    assert {name: c["_id"] for name, c in double.channels.items()} == ids  # updated, not a second set
    assert list(double.clients) == ["interop-client"]
    client = double.clients["interop-client"]
    assert client["_id"] == client_id
    assert catalog.client_accepts(client, PASSWORD)
    assert not catalog.client_accepts(client, "reference-password")
    mediator = double.channels["Mediator"]
    (route,) = mediator["routes"]
    assert (route["host"], route["port"], route["pathTransform"]) == ("cht-interop", 5001, "")
    assert catalog.transform_path("/mediator/patient", route["pathTransform"]) == "/mediator/patient"
    assert "PATCH" in mediator["methods"]
    fhir = double.channels["FHIR Server"]
    assert (fhir["routes"][0]["host"], fhir["routes"][0]["port"]) == ("hapi-fhir", 8080)
    assert fhir["routes"][0]["forwardAuthHeader"] is False
    assert fhir["autoRetryEnabled"] is False  # the administrator's own settings are kept

    again = run(url, tmp_path, FHIR_URL="http://hapi-fhir:8080/fhir")
    assert "already up to date" in again.output, again.output


def test_the_same_password_keeps_the_client_as_it_is(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    double, url = core
    reference_install(url, old_password=PASSWORD)
    stored = dict(double.clients["interop-client"])
    result = run(url, tmp_path)
    assert result.exit_code == 0, result.output
    assert double.clients["interop-client"] == stored
    assert not any(path.startswith("/clients") for _, path in writes(double))


def test_no_client_password_is_a_clear_error(core: tuple[OpenHimDouble, str], tmp_path: Path) -> None:
    _, url = core
    result = run(url, tmp_path, INTEROP_CLIENT_PASSWORD="")
    assert result.exit_code != 0
    assert "INTEROP_CLIENT_PASSWORD" in result.output


def test_refused_credentials_exit_1_without_the_password(
    core: tuple[OpenHimDouble, str], tmp_path: Path
) -> None:
    _, url = core
    result = run(url, tmp_path, OPENHIM_PASSWORD="not-the-password")
    assert result.exit_code == 1
    assert "refused the credentials" in result.output
    assert "not-the-password" not in result.output


@pytest.fixture
def tls_core(tmp_path: Path) -> Iterator[tuple[OpenHimDouble, str, Path]]:
    """A core serving its API over HTTPS with a certificate from a CA no system trusts."""
    cert_file, key_file, ca_file = loopback_certificate(tmp_path)
    double = OpenHimDouble()
    with serve_in_thread(double.app(), tls=(str(cert_file), str(key_file))) as url:
        yield double, url, ca_file


def test_tls_is_verified_by_default(tls_core: tuple[OpenHimDouble, str, Path], tmp_path: Path) -> None:
    double, url, ca_file = tls_core
    refused = run(url, tmp_path)
    assert refused.exit_code == 1
    assert double.channels == {}

    trusted = run(url, tmp_path, "--ca-bundle", str(ca_file))
    assert trusted.exit_code == 0, trusted.output
    assert sorted(double.channels) == ["FHIR Server", "Mediator"]


def test_insecure_says_what_it_does(tls_core: tuple[OpenHimDouble, str, Path], tmp_path: Path) -> None:
    double, url, _ = tls_core
    result = run(url, tmp_path, "--insecure")
    assert result.exit_code == 0, result.output
    assert "TLS verification is OFF" in result.output
    assert "interop-client" in double.clients
