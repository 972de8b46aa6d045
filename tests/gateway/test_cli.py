"""``cht-interop clients …`` through typer's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cht_interop.cli import app
from cht_interop.db import Database
from cht_interop.gateway.auth import ClientAuthenticator
from cht_interop.gateway.clients import ClientDirectory

runner = CliRunner()


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data")}


async def _login(url: str, client_id: str, password: str) -> frozenset[str] | None:
    db = Database(url)
    try:
        principal = await ClientAuthenticator(ClientDirectory(db)).login(client_id, password)
        return None if principal is None else frozenset(principal.roles)
    finally:
        await db.dispose()


def test_add_list_set_password_remove(env: dict[str, str], database_url: str) -> None:
    added = runner.invoke(
        app,
        [
            "clients",
            "add",
            "emr",
            "--role",
            "requester",
            "--role",
            "cht",
            "--name",
            "District EMR",
            "--password-stdin",
        ],
        input="emr-password-01\n",
        env=env,
    )
    assert added.exit_code == 0, added.output
    assert added.output == "added client emr (cht, requester)\n"
    assert asyncio.run(_login(database_url, "emr", "emr-password-01")) == {"requester", "cht"}

    listed = runner.invoke(app, ["clients", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "emr" in listed.output and "District EMR" in listed.output and "cht, requester" in listed.output
    assert "scrypt" not in listed.output and "emr-password-01" not in listed.output

    changed = runner.invoke(
        app, ["clients", "set-password", "emr", "--password-stdin"], input="new-password-02\n", env=env
    )
    assert changed.exit_code == 0, changed.output
    assert asyncio.run(_login(database_url, "emr", "emr-password-01")) is None
    assert asyncio.run(_login(database_url, "emr", "new-password-02")) is not None

    removed = runner.invoke(app, ["clients", "remove", "emr"], env=env)
    assert removed.exit_code == 0, removed.output
    assert asyncio.run(_login(database_url, "emr", "new-password-02")) is None
    assert "emr" not in runner.invoke(app, ["clients", "list"], env=env).output


def test_mistakes_exit_non_zero_with_a_reason(env: dict[str, str]) -> None:
    no_stdin = runner.invoke(app, ["clients", "add", "emr", "--role", "requester"], env=env)
    assert no_stdin.exit_code == 2
    assert "--password-stdin" in no_stdin.output

    bad_role = runner.invoke(
        app,
        ["clients", "add", "emr", "--role", "root", "--password-stdin"],
        input="emr-password-01\n",
        env=env,
    )
    assert bad_role.exit_code == 2
    assert "unknown role 'root'" in bad_role.output

    short = runner.invoke(
        app, ["clients", "add", "emr", "--role", "cht", "--password-stdin"], input="short\n", env=env
    )
    assert short.exit_code == 1
    assert "at least 12 characters" in short.output
    assert "short\n" not in short.output.replace("error: ", "")

    unknown = runner.invoke(app, ["clients", "remove", "nobody"], env=env)
    assert unknown.exit_code == 1
    assert "no client 'nobody'" in unknown.output

    twice = ["clients", "add", "emr", "--role", "cht", "--password-stdin"]
    assert runner.invoke(app, twice, input="emr-password-01\n", env=env).exit_code == 0
    again = runner.invoke(app, twice, input="emr-password-01\n", env=env)
    assert again.exit_code == 1
    assert "already exists" in again.output
