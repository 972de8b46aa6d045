"""The test suite reads nothing beside the repository and talks to nothing beyond loopback.

A clone must pass its own tests with nothing next to it: a test that opens a file in the folder
around the checkout (another project's fixtures, notes) or in the user's home, or that connects
to a non-loopback address, passes on one machine and fails on the next. An audit hook
(``sys.addaudithook``, PEP 578) sees every ``open`` (files, imports, ``os.open``), every
``sqlite3.connect`` and every ``socket.connect``/``sendto`` of this process, whichever thread makes
it; it refuses the ones that leave and records them, so a test fails even where the code under
test swallows the error. Child processes (``cht-interop`` runs, Node, Chromium) and libpq's own
sockets are not audited: their inputs are given by the tests, on loopback.

Allowed: the repository, the Python installation (venv, stdlib, site-packages, user site), the
pytest temporary directories and the temp dir, and read-only system places (``/etc``, ``/usr``,
``/proc``, ``/dev``…). Refused, even where a broader rule would allow it: the folder around the
repository (but the repository and the venv) and the user's home (but the Python installation).
"""

from __future__ import annotations

import ipaddress
import os
import site
import socket
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SYSTEM_ROOTS = (
    "/etc",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
)


class LeftTheRepository(PermissionError):
    """A test opened a file or a connection the suite must not depend on."""


def _prefixes(paths: Iterable[str | Path]) -> tuple[str, ...]:
    """``/a/b/`` for each path: ``startswith`` then matches the folder and what is inside it."""
    out = {os.path.normpath(os.path.abspath(os.fspath(p))).rstrip("/") + "/" for p in paths if p}
    return tuple(sorted(out))


def python_paths() -> list[str]:
    """Where this interpreter and its packages live (a venv may sit beside the repo or in home)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [p for p in sysconfig.get_paths().values() if p]
    paths += [*site.getsitepackages(), site.getusersitepackages()]
    return paths


class Guard:
    """Decides which files and addresses a test may use, and keeps what it refused."""

    def __init__(
        self,
        repository: Path,
        *,
        allowed: Iterable[str | Path] = (),
        home: Path | None = None,
        temp: Iterable[str | Path] = (),
        system: Iterable[str] = SYSTEM_ROOTS,
    ) -> None:
        self.repository = Path(os.path.abspath(repository))
        temp = [os.fspath(t) for t in temp]
        # the repository as given and as resolved: a path through a symlink is still inside
        self._always = _prefixes([self.repository, self.repository.resolve(), *allowed])
        # beside the repository and in home, unless that would also refuse the temp dir (a
        # checkout directly in /tmp): then only the broad rules below apply
        never = [self.repository.parent, *([home] if home else [])]
        self._never = tuple(
            p for p in _prefixes(never) if not any((t.rstrip("/") + "/").startswith(p) for t in temp)
        )
        self._system = _prefixes([*system, *temp])
        self._lock = threading.Lock()
        self.violations: list[str] = []  # refused and not yet charged to a test

    # -- the decisions ---------------------------------------------------------------------------

    def file_allowed(self, path: str) -> bool:
        name = os.path.normpath(path) + "/"
        if name.startswith(self._always):
            return True
        if name.startswith(self._never):
            return False
        return name.startswith(self._system)

    @staticmethod
    def address_allowed(family: int, address: Any) -> bool:
        """Loopback (127.0.0.0/8, ::1, ``localhost``) and non-IP sockets (unix) only."""
        if family not in (socket.AF_INET, socket.AF_INET6):
            return True
        host = str(address[0]).split("%", 1)[0]
        if host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name resolved by connect() itself: may be anywhere
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def check(self, event: str, args: tuple[Any, ...]) -> str | None:
        """The refusal for one audit event, or None."""
        if event == "open":
            path = _file_name(args[0])
            if path is not None and not self.file_allowed(path):
                return f"open {path}"
        elif event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[1]
            if not self.address_allowed(getattr(sock, "family", -1), address):
                return f"{event} {address!r}"
        elif event == "sqlite3.connect":
            path = _sqlite_file(args[0])
            if path is not None and not self.file_allowed(path):
                return f"sqlite3.connect {path}"
        return None

    # -- as an audit hook ------------------------------------------------------------------------

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _EVENTS:  # every audited call in the process comes here: keep it short
            return
        refused = self.check(event, args)
        if refused is not None:
            with self._lock:
                self.violations.append(refused)
            raise LeftTheRepository(f"tests must not depend on anything outside the repository: {refused}")

    def install(self) -> None:
        """For the rest of the process (audit hooks cannot be removed)."""
        sys.addaudithook(self)

    def allow(self, path: str | Path) -> None:
        """One more allowed folder (pytest's ``--basetemp``, known only once pytest runs)."""
        self._always = tuple(sorted({*self._always, *_prefixes([path])}))

    def mark(self) -> int:
        with self._lock:
            return len(self.violations)

    def consume(self, mark: int) -> list[str]:
        """The refusals since ``mark``, now charged to whoever asked (a test, a block)."""
        with self._lock:
            taken = self.violations[mark:]
            del self.violations[mark:]
        return taken

    @contextmanager
    def expected(self) -> Iterator[list[str]]:
        """The refusals made inside the block, which are then not counted against the test."""
        seen: list[str] = []
        start = self.mark()
        try:
            yield seen
        finally:
            seen.extend(self.consume(start))


_EVENTS = frozenset({"open", "socket.connect", "socket.sendto", "sqlite3.connect"})


def _file_name(target: Any) -> str | None:
    """An absolute path for what ``open`` was given (None for a file descriptor)."""
    if isinstance(target, int):
        return None
    try:
        name = os.fsdecode(target)
    except TypeError:
        return None
    if not name.startswith("/"):
        try:
            name = os.path.join(os.getcwd(), name)
        except OSError:
            return None  # the working directory is gone: nothing to compare with
    return name


def _sqlite_file(database: Any) -> str | None:
    """The file behind a ``sqlite3.connect`` argument (None: in memory)."""
    try:
        name = os.fsdecode(database)
    except TypeError:
        return None
    if name.startswith("file:"):
        name, _, query = name.removeprefix("file:").partition("?")
        if "mode=memory" in query:
            return None
    if name in ("", ":memory:"):
        return None
    return _file_name(name)


def default_guard(repository: Path) -> Guard:
    """The guard for this checkout, this interpreter and this user."""
    return Guard(
        repository,
        allowed=python_paths(),
        home=Path.home(),
        temp=[tempfile.gettempdir()],
    )
