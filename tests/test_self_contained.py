"""The guard that keeps the suite inside the repository and on loopback (tests/support/self_contained.py).

Its rules are checked on a made-up layout (a checkout beside another project's folder, a venv
beside the checkout, a Python in home), so they hold whatever the machine; the installed hook is
checked with what is refused everywhere: a path in no allowed place and a non-loopback address.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.conftest import GUARD
from tests.support.self_contained import Guard, LeftTheRepository

LAYOUT = Guard(
    Path("/work/app"),
    allowed=["/work/app-venv", "/home/dev/.pyenv/versions/3.11.7"],
    home=Path("/home/dev"),
    temp=["/tmp"],
)
NOWHERE = "/no-such-root-for-the-guard/fixture.json"  # under no allowed folder on any machine
TEST_NET = ("192.0.2.1", 9)  # RFC 5737 documentation address: never routed


@pytest.mark.parametrize(
    "path",
    [
        "/work/app/tests/fixtures/reference_deployment.py",
        "/work/app",
        "/work/app-venv/lib/python3.11/site-packages/httpx/__init__.py",
        "/home/dev/.pyenv/versions/3.11.7/lib/python3.11/os.py",
        "/tmp/pytest-of-dev/pytest-1/test_x0/db.sqlite3",
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/share/zoneinfo/UTC",
        "/proc/self/stat",
        "/dev/null",
    ],
)
def test_the_repository_python_temp_and_system_files_are_allowed(path: str) -> None:
    assert LAYOUT.file_allowed(path)


@pytest.mark.parametrize(
    "path",
    [
        "/work/other-project/data/app-settings.json",  # beside the checkout
        "/work/app/../other-project/notes.md",  # the same, written from inside it
        "/work/app-other/README.md",  # a sibling whose name starts like ours
        "/home/dev/.netrc",
        "/home/dev/notes/cht.md",
        "/srv/data/export.json",
    ],
)
def test_files_beside_the_repository_in_home_or_elsewhere_are_refused(path: str) -> None:
    assert not LAYOUT.file_allowed(path)


def test_a_checkout_directly_in_the_temp_dir_still_gets_its_temp_files() -> None:
    guard = Guard(Path("/tmp/app"), temp=["/tmp"])
    assert guard.file_allowed("/tmp/pytest-of-dev/pytest-1/x")
    assert guard.file_allowed("/tmp/app/tests/conftest.py")


@pytest.mark.parametrize(
    ("family", "address", "allowed"),
    [
        (socket.AF_INET, ("127.0.0.1", 5432), True),
        (socket.AF_INET, ("127.0.0.53", 53), True),
        (socket.AF_INET6, ("::1", 8000, 0, 0), True),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 8000, 0, 0), True),
        (socket.AF_INET, ("localhost", 80), True),
        (socket.AF_UNIX, "/run/postgresql/.s.PGSQL.5432", True),
        (socket.AF_INET, ("10.0.0.7", 5432), False),
        (socket.AF_INET, ("93.184.215.14", 443), False),
        (socket.AF_INET6, ("2001:db8::1", 443, 0, 0), False),
        (socket.AF_INET, ("emr.example.org", 443), False),
    ],
)
def test_only_loopback_and_unix_sockets_are_allowed(family: int, address: object, allowed: bool) -> None:
    assert Guard.address_allowed(family, address) is allowed


def test_opening_a_file_nowhere_allowed_fails_even_when_the_error_is_swallowed() -> None:
    with GUARD.expected() as refused:
        with pytest.raises(LeftTheRepository, match="outside the repository"):
            Path(NOWHERE).read_text()
        with contextlib.suppress(OSError):  # code under test treating it as an optional file
            Path(NOWHERE).read_bytes()
    assert refused == [f"open {NOWHERE}", f"open {NOWHERE}"]


def test_a_sqlite_file_nowhere_allowed_is_refused(tmp_path: Path) -> None:
    with GUARD.expected() as refused, pytest.raises(LeftTheRepository):
        sqlite3.connect(NOWHERE)
    assert refused == [f"sqlite3.connect {NOWHERE}"]
    sqlite3.connect(tmp_path / "ok.sqlite3").close()
    sqlite3.connect(":memory:").close()


def test_connecting_beyond_loopback_is_refused_before_any_packet_leaves() -> None:
    with GUARD.expected() as refused, socket.socket() as sock, pytest.raises(LeftTheRepository):
        sock.connect(TEST_NET)
    assert refused == [f"socket.connect {TEST_NET!r}"]


def test_a_loopback_connection_goes_through() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_a_connection_from_another_thread_is_refused_too() -> None:
    errors: list[BaseException] = []

    def beyond() -> None:
        try:
            with socket.socket() as sock:
                sock.connect(TEST_NET)
        except BaseException as exc:
            errors.append(exc)

    with GUARD.expected() as refused:
        thread = threading.Thread(target=beyond)
        thread.start()
        thread.join(10)
    assert [type(e) for e in errors] == [LeftTheRepository]
    assert refused == [f"socket.connect {TEST_NET!r}"]
