"""One serving process per SQLite database: a second ``serve`` (or ``up``) on the same file is
refused at start, saying why; PostgreSQL takes replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cht_interop.db.serving import AlreadyServing, sole_server
from tests.reliability.stack import answers_live, eventually
from tests.support.live import free_port

pytestmark = pytest.mark.e2e


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DATA_DIR"))}
    return {
        **env,
        "DATA_DIR": str(data_dir),
        "INTEROP_CLIENT_PASSWORD": "a-long-test-password",
        "LOG_LEVEL": "WARNING",
    }


def _run(args: list[str], data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cht_interop", *args],
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_second_server_of_one_sqlite_database_is_refused_and_the_first_goes_on(tmp_path: Path) -> None:
    port = free_port()
    first = _run(["serve", "--port", str(port)], tmp_path)
    try:
        eventually(lambda: answers_live(f"http://127.0.0.1:{port}"), "the first serve to answer")
        for args in (["serve", "--port", str(free_port())], ["up", "--port", str(free_port())]):
            second = _run(args, tmp_path)
            out, _ = second.communicate(timeout=60)
            assert second.returncode == 1, out
            assert f"pid {first.pid}" in out and "already serves the SQLite database" in out, out
            assert "PostgreSQL" in out, out  # what to run for replicas
        assert answers_live(f"http://127.0.0.1:{port}")
        # killed without a chance to clean up, the first lets go: a new server starts
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=20)
        port = free_port()
        first = _run(["serve", "--port", str(port)], tmp_path)
        eventually(lambda: answers_live(f"http://127.0.0.1:{port}"), "a new serve after the kill")
    finally:
        first.terminate()
        first.communicate(timeout=30)


def test_the_lock_is_per_database_file_and_none_on_postgresql(tmp_path: Path) -> None:
    one, other = f"sqlite:///{tmp_path / 'one.sqlite3'}", f"sqlite:///{tmp_path / 'other.sqlite3'}"
    with sole_server(one), sole_server(other):
        second_holder = sole_server(one)
        with pytest.raises(AlreadyServing, match=r"one\.sqlite3"):
            second_holder.__enter__()
    with sole_server(one):  # released when the holder's block ended
        pass
    pg = "postgresql://127.0.0.1:5432/test"
    with sole_server(pg), sole_server(pg):
        pass
