from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from cht_interop.app import create_app
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.credentials import SECRET_FILE, load_or_create_client_credentials
from cht_interop.gateway.errors import AuthenticationRequired
from cht_interop.gateway.passwords import hash_password
from cht_interop.settings import Settings
from tests.conftest import make_settings


def _request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/fhir/Patient", "headers": headers})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def authenticator() -> ClientAuthenticator:
    return ClientAuthenticator({"interop-client": hash_password("right")})


def test_valid_credentials_name_the_client(authenticator: ClientAuthenticator) -> None:
    assert authenticator.authenticate(_request(_basic("interop-client", "right"))) == "interop-client"
    # the second time is served from the verified cache, same answer
    assert authenticator.authenticate(_request(_basic("interop-client", "right"))) == "interop-client"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer abc",
        "Basic !!!not-base64",
        _basic("interop-client", "wrong"),
        _basic("someone-else", "right"),
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
)
def test_missing_or_bad_credentials_are_401_with_a_challenge(
    authenticator: ClientAuthenticator, header: str | None
) -> None:
    with pytest.raises(AuthenticationRequired) as excinfo:
        authenticator.authenticate(_request(header))
    assert excinfo.value.status == 401
    assert excinfo.value.headers["WWW-Authenticate"].startswith("Basic ")
    assert "right" not in excinfo.value.reason


def test_a_wrong_password_is_not_cached_as_right(authenticator: ClientAuthenticator) -> None:
    assert authenticator.verify("interop-client", "right")
    assert not authenticator.verify("interop-client", "right ")


def test_password_from_environment_wins_and_is_not_written(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path, INTEROP_CLIENT_PASSWORD="from-env")  # type: ignore[call-arg]
    creds = load_or_create_client_credentials(settings)
    assert (creds.client_id, creds.password, creds.generated_now) == ("interop-client", "from-env", False)
    assert not (tmp_path / SECRET_FILE).exists()


def test_generated_password_is_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path / "data")  # type: ignore[call-arg]
    first = load_or_create_client_credentials(settings)
    assert first.generated_now
    secret = tmp_path / "data" / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    again = load_or_create_client_credentials(settings)
    assert again.password == first.password
    assert not again.generated_now


async def test_async_authentication_gives_the_same_answers(authenticator: ClientAuthenticator) -> None:
    """The route dependency's path: scrypt off the event loop, remembered passwords checked inline."""
    right = _request(_basic("interop-client", "right"))
    assert authenticator.verified_before("interop-client", "right") is None  # not seen yet
    assert await authenticator.authenticate_async(right) == "interop-client"
    assert authenticator.verified_before("interop-client", "right") is True
    assert await authenticator.authenticate_async(right) == "interop-client"
    for header in (_basic("interop-client", "wrong"), _basic("someone-else", "right"), "Bearer x"):
        with pytest.raises(AuthenticationRequired):
            await authenticator.authenticate_async(_request(header))
    assert authenticator.verified_before("interop-client", "wrong") is None  # a wrong one is never remembered


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient"),
        ("POST", "/fhir/Patient"),
        ("GET", "/fhir/metadata"),
        ("GET", "/mediator/"),
        ("POST", "/mediator/service-request"),
    ],
)
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "Authentication required"),
        ("Bearer abc", "Authentication required"),
        ("Basic !!!not-base64", "Malformed Basic credentials"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "Invalid credentials"),
        (_basic("interop-client", "wrong"), "Invalid credentials"),
    ],
)
async def test_the_401_is_the_operation_outcome_clients_have_always_seen(
    tmp_path: Path, sqlite_url: str, method: str, path: str, header: str | None, reason: str
) -> None:
    """Byte for byte: the gateway's own error, rendered by the app as FHIR's 401 was before."""
    app = create_app(make_settings(tmp_path, sqlite_url), run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.request(method, path, headers={"authorization": header} if header else {})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/fhir+json;charset=utf-8"
    assert r.headers["www-authenticate"] == 'Basic realm="cht-interop", charset="UTF-8"'
    assert r.content == (
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login",'
        b'"diagnostics":"' + reason.encode() + b'"}]}'
    )
