"""``cht-interop clients …``: the API clients and their roles (the console calls the same
``ClientDirectory``). Passwords come on standard input only, never as arguments (they would sit in
the shell history and the process list)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cht_interop.db import Database, migrate
from cht_interop.gateway.clients import ClientDirectory, ClientError, ClientInfo, parse_roles
from cht_interop.gateway.principals import Role
from cht_interop.settings import Settings

GROUP_NAME = "clients"
app = typer.Typer(help="API clients: add, list, set a password, remove.", no_args_is_help=True)

T = TypeVar("T")
DataDir = Annotated[Path | None, typer.Option(help="Data dir of the embedded database.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input (required).")
]
ROLE_NAMES = ", ".join(r.value for r in Role)


def _run(data_dir: Path | None, work: Callable[[ClientDirectory], Awaitable[T]]) -> T:
    settings = Settings(DATA_DIR=data_dir) if data_dir is not None else Settings()
    url = settings.resolved_database_url
    migrate(url)  # a no-op when current; lets the command run on a fresh data dir

    async def main() -> T:
        db = Database(url)
        try:
            return await work(ClientDirectory(db))
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _password(from_stdin: bool) -> str:
    if not from_stdin:
        typer.echo("error: give the password on standard input with --password-stdin", err=True)
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        typer.echo("error: no password on standard input", err=True)
        raise typer.Exit(2)
    return password


@app.command("add")
def add(
    client_id: Annotated[str, typer.Argument(metavar="ID", help="The client id (HTTP Basic user name).")],
    role: Annotated[list[str], typer.Option("--role", help=f"A role ({ROLE_NAMES}); repeat for more.")],
    password_stdin: PasswordStdin = False,
    name: Annotated[str | None, typer.Option(help="A readable name (default: the id).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a client with its roles; its password is read from standard input."""
    try:
        roles = parse_roles(role)
    except ClientError as exc:
        raise typer.BadParameter(str(exc), param_hint="--role") from None
    password = _password(password_stdin)
    info = _run(data_dir, lambda clients: clients.add(client_id, roles, password, name))
    typer.echo(f"added client {info.client_id} ({_roles(info)})")


@app.command("list")
def list_clients(data_dir: DataDir = None) -> None:
    """The clients with their roles (never a password hash)."""
    clients = _run(data_dir, lambda directory: directory.list())
    table = Table("id", "name", "roles", "created", "updated")
    for c in clients:
        table.add_row(c.client_id, c.name, _roles(c), _when(c.created_at), _when(c.updated_at))
    Console(width=120).print(table)


@app.command("set-password")
def set_password(
    client_id: Annotated[str, typer.Argument(metavar="ID")],
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
) -> None:
    """Give a client a new password (from standard input); the old one stops working."""
    password = _password(password_stdin)
    _run(data_dir, lambda clients: clients.set_password(client_id, password))
    typer.echo(f"password of {client_id} changed")


@app.command("remove")
def remove(client_id: Annotated[str, typer.Argument(metavar="ID")], data_dir: DataDir = None) -> None:
    """Remove a client: its requests are refused from then on."""
    _run(data_dir, lambda clients: clients.remove(client_id))
    typer.echo(f"removed client {client_id}")


def _roles(info: ClientInfo) -> str:
    return ", ".join(sorted(r.value for r in info.roles))


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")
