"""HTTP Basic authentication: answers, the verified-password memory and its invalidation, the
unknown-id check's cost, the failure throttle."""

from __future__ import annotations

import base64
import hmac
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from cht_interop.app import create_app
from cht_interop.db import Database
from cht_interop.gateway import passwords
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.clients import ClientDirectory
from cht_interop.gateway.credentials import (
    ADMIN_SECRET_FILE,
    SECRET_FILE,
    load_or_create_admin_credentials,
    load_or_create_client_credentials,
)
from cht_interop.gateway.errors import AuthenticationRequired, TooManyFailures
from cht_interop.gateway.passwords import ScryptCost, hash_password
from cht_interop.gateway.principals import Role
from cht_interop.gateway.throttle import FailureThrottle
from cht_interop.settings import Settings
from tests.conftest import make_settings


def _request(authorization: str | None, address: str = "10.0.0.1") -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request(
        {"type": "http", "method": "GET", "path": "/fhir/Patient", "headers": headers, "client": (address, 1)}
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class KdfCalls:
    """Counts the key derivations (scrypt) actually run, with their cost parameters."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.costs: list[ScryptCost] = []
        real = passwords.derive

        def counting(password: str, salt: bytes, cost: ScryptCost, length: int) -> bytes:
            self.costs.append(cost)
            return real(password, salt, cost, length)

        monkeypatch.setattr(passwords, "derive", counting)


@pytest.fixture
def authenticator() -> ClientAuthenticator:
    return ClientAuthenticator({"interop-client": hash_password("right")})


async def test_valid_credentials_name_the_client_and_the_second_time_costs_no_scrypt(
    authenticator: ClientAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    kdf = KdfCalls(monkeypatch)
    principal = await authenticator.authenticate(_request(_basic("interop-client", "right")))
    assert (principal.client_id, principal.roles) == ("interop-client", frozenset({Role.INTEROP}))
    assert len(kdf.costs) == 1
    again = await authenticator.authenticate(_request(_basic("interop-client", "right")))
    assert again == principal
    assert len(kdf.costs) == 1  # remembered


async def test_a_remembered_client_costs_one_hmac_per_request(
    authenticator: ClientAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request pays the remembered check (singles: one per follow-up); it was computed
    twice, once for the failure throttle and once for the check."""
    await authenticator.authenticate(_request(_basic("interop-client", "right")))
    hmacs: list[bytes] = []
    real_digest, real_new = hmac.digest, hmac.new

    def counting_digest(key: bytes, msg: bytes, digest: Any) -> bytes:
        hmacs.append(msg)
        return real_digest(key, msg, digest)

    def counting_new(key: bytes, msg: bytes | None = None, digestmod: Any = "") -> hmac.HMAC:
        hmacs.append(msg or b"")
        return real_new(key, msg, digestmod)

    monkeypatch.setattr(hmac, "digest", counting_digest)
    monkeypatch.setattr(hmac, "new", counting_new)
    principal = await authenticator.authenticate(_request(_basic("interop-client", "right")))
    assert principal.client_id == "interop-client"
    assert len(hmacs) == 1


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
async def test_missing_or_bad_credentials_are_401_with_a_challenge(
    authenticator: ClientAuthenticator, header: str | None
) -> None:
    with pytest.raises(AuthenticationRequired) as excinfo:
        await authenticator.authenticate(_request(header))
    assert excinfo.value.status == 401
    assert excinfo.value.headers["WWW-Authenticate"].startswith("Basic ")
    assert "right" not in excinfo.value.reason


async def test_a_wrong_password_is_not_remembered_as_right(authenticator: ClientAuthenticator) -> None:
    assert await authenticator.login("interop-client", "right") is not None
    assert await authenticator.login("interop-client", "right ") is None
    assert await authenticator.login("interop-client", "right") is not None


async def test_an_unknown_client_id_costs_the_same_scrypt_as_a_wrong_password(
    authenticator: ClientAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without it, "no such client" answered ~50x faster than "wrong password": the timing told
    which ids exist. Both now run exactly one derivation, with today's cost."""
    kdf = KdfCalls(monkeypatch)  # the dummy hash was made with the authenticator, not here
    assert await authenticator.login("interop-client", "wrong") is None
    wrong_password = list(kdf.costs)
    kdf.costs.clear()
    assert await authenticator.login("nobody", "wrong") is None
    unknown_id = list(kdf.costs)
    assert wrong_password == unknown_id == [passwords.SCRYPT]
    kdf.costs.clear()
    assert await authenticator.login("nobody", "wrong") is None
    assert kdf.costs == [passwords.SCRYPT]  # an unknown id is never remembered either


async def test_a_changed_or_removed_password_stops_working_here_at_once_and_elsewhere_after_the_recheck(
    db: Database,
) -> None:
    directory = ClientDirectory(db)
    await directory.add("emr", frozenset({Role.REQUESTER}), "first-password-1")
    clock = Clock()
    here = ClientAuthenticator(directory, clock=clock, recheck_seconds=5)
    directory.on_change(here.forget)
    elsewhere = ClientAuthenticator(ClientDirectory(db), clock=clock, recheck_seconds=5)  # another process
    assert await here.login("emr", "first-password-1") is not None
    assert await elsewhere.login("emr", "first-password-1") is not None

    await directory.set_password("emr", "second-password-2")
    assert await here.login("emr", "first-password-1") is None
    assert await elsewhere.login("emr", "first-password-1") is not None  # remembered, not re-read yet
    clock.now += 5
    assert await elsewhere.login("emr", "first-password-1") is None
    assert await elsewhere.login("emr", "second-password-2") is not None

    await directory.remove("emr")
    assert await here.login("emr", "second-password-2") is None
    clock.now += 5
    assert await elsewhere.login("emr", "second-password-2") is None


async def test_the_recheck_reads_roles_without_paying_scrypt_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = ClientDirectory(db)
    await directory.add("emr", frozenset({Role.REQUESTER}), "first-password-1")
    clock = Clock()
    authenticator = ClientAuthenticator(ClientDirectory(db), clock=clock, recheck_seconds=5)
    assert await authenticator.login("emr", "first-password-1") is not None
    kdf = KdfCalls(monkeypatch)
    await directory.ensure("emr", frozenset({Role.CHT}), "first-password-1")  # same password
    kdf.costs.clear()
    clock.now += 6
    principal = await authenticator.login("emr", "first-password-1")
    assert principal is not None and principal.roles == frozenset({Role.CHT})
    assert kdf.costs == []


async def test_repeated_failures_from_one_address_are_slowed_but_a_proven_client_is_not(
    authenticator: ClientAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    authenticator.throttle = FailureThrottle(max_failures=3, window_seconds=60, clock=clock)
    await authenticator.authenticate(_request(_basic("interop-client", "right"), "10.0.0.9"))
    for _ in range(3):
        with pytest.raises(AuthenticationRequired):
            await authenticator.authenticate(_request(_basic("interop-client", "guess"), "10.0.0.9"))
    kdf = KdfCalls(monkeypatch)
    with pytest.raises(TooManyFailures) as excinfo:
        await authenticator.authenticate(_request(_basic("interop-client", "guess"), "10.0.0.9"))
    assert excinfo.value.status == 429
    assert excinfo.value.headers == {"Retry-After": "60"}
    assert kdf.costs == []  # a refused guess costs no scrypt
    # the client that proved its password, from the same address (e.g. behind the same proxy)
    principal = await authenticator.authenticate(_request(_basic("interop-client", "right"), "10.0.0.9"))
    assert principal.client_id == "interop-client"
    # another address is not held back
    with pytest.raises(AuthenticationRequired):
        await authenticator.authenticate(_request(_basic("interop-client", "guess"), "10.0.0.10"))
    clock.now += 20
    with pytest.raises(TooManyFailures) as excinfo:
        await authenticator.authenticate(_request(_basic("someone", "guess"), "10.0.0.9"))
    assert excinfo.value.headers == {"Retry-After": "40"}
    clock.now += 40
    with pytest.raises(AuthenticationRequired):  # the window has passed: checked again
        await authenticator.authenticate(_request(_basic("interop-client", "guess"), "10.0.0.9"))


async def test_a_request_without_credentials_is_not_counted_as_a_failure(
    authenticator: ClientAuthenticator,
) -> None:
    authenticator.throttle = FailureThrottle(max_failures=1, window_seconds=60)
    for _ in range(3):
        with pytest.raises(AuthenticationRequired):
            await authenticator.authenticate(_request(None, "10.0.0.9"))
    assert authenticator.throttle.retry_after("10.0.0.9") is None


def test_password_from_environment_wins_and_is_not_written(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path, INTEROP_CLIENT_PASSWORD="from-env")  # type: ignore[call-arg]
    creds = load_or_create_client_credentials(settings)
    assert (creds.client_id, creds.password, creds.generated_now) == ("interop-client", "from-env", False)
    assert not (tmp_path / SECRET_FILE).exists()


@pytest.mark.parametrize(
    ("load", "file"),
    [(load_or_create_client_credentials, SECRET_FILE), (load_or_create_admin_credentials, ADMIN_SECRET_FILE)],
)
def test_generated_password_is_kept_private_and_reused(tmp_path: Path, load: object, file: str) -> None:
    assert callable(load)
    settings = Settings(_env_file=None, DATA_DIR=tmp_path / "data")  # type: ignore[call-arg]
    first = load(settings)
    assert first.generated_now
    secret = tmp_path / "data" / file
    assert secret.stat().st_mode & 0o777 == 0o600
    again = load(settings)
    assert again.password == first.password
    assert not again.generated_now


def test_admin_password_from_environment(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DATA_DIR=tmp_path, ADMIN_PASSWORD="admin-from-env")  # type: ignore[call-arg]
    creds = load_or_create_admin_credentials(settings)
    assert (creds.client_id, creds.password, creds.generated_now) == ("admin", "admin-from-env", False)
    assert not (tmp_path / ADMIN_SECRET_FILE).exists()


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
        (_basic("nobody", "test-password"), "Invalid credentials"),
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


async def test_the_console_login_with_an_address_is_throttled_too(authenticator: ClientAuthenticator) -> None:
    authenticator.throttle = FailureThrottle(max_failures=2, window_seconds=60)
    assert await authenticator.login("interop-client", "right", "10.0.0.7") is not None
    for _ in range(2):
        assert await authenticator.login("interop-client", "guess", "10.0.0.7") is None
    with pytest.raises(TooManyFailures):
        await authenticator.login("interop-client", "guess", "10.0.0.7")
    assert await authenticator.login("interop-client", "right", "10.0.0.7") is not None
    assert await authenticator.login("interop-client", "guess") is None  # no address: not throttled
