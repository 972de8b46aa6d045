"""The ``cht-interop`` command. Thin: every command calls the same services the API uses.

Domain command groups live beside their domain (``<domain>/cli.py`` exposing ``app``) and are
mounted here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="cht-interop: LTFU interoperability between FHIR R4 systems and the CHT.", no_args_is_help=True
)
console = Console(stderr=True)

# (module, group name) — a module exposing ``app`` (typer.Typer) mounted as a sub-command group,
# or ``register(app)`` adding top-level commands.
_COMMAND_MODULES = (
    "cht_interop.delivery.cli",
    "cht_interop.cht.cli",
    "cht_interop.sandbox.cli",
)


def _apply_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        os.environ["DATA_DIR"] = str(data_dir)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port of the interop API (default: PORT or 5001).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the embedded database and secrets live.")
    ] = None,
    cht_sandbox: Annotated[
        bool, typer.Option(help="Also start the CHT sandbox and point CHT_URL at it.")
    ] = False,
    cht_sandbox_port: Annotated[int, typer.Option(help="Port of the CHT sandbox.")] = 5988,
) -> None:
    """Run everything in one process on the embedded default: FHIR, mediator, outbox worker."""
    from cht_interop.runner import run_up

    _apply_data_dir(data_dir)
    run_up(host=host, port=port, cht_sandbox=cht_sandbox, cht_sandbox_port=cht_sandbox_port)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: PORT or 5001).")] = None,
) -> None:
    """Production: the interop API without an outbox worker (run `worker` replicas beside it)."""
    from cht_interop.runner import run_serve

    run_serve(host=host, port=port)


@app.command()
def worker() -> None:
    """Production: one outbox worker (several may run against PostgreSQL; they never take the same job)."""
    from cht_interop.runner import run_worker

    run_worker()


@app.command()
def migrate(
    data_dir: Annotated[Path | None, typer.Option(help="Data dir of the embedded database.")] = None,
) -> None:
    """Apply database migrations (``up`` does this itself)."""
    from cht_interop.db import migrate as run_migrations
    from cht_interop.settings import Settings

    _apply_data_dir(data_dir)
    settings = Settings()
    run_migrations(settings.resolved_database_url)
    console.print("[green]database is up to date[/green]")


def _mount_domain_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(app)
        elif hasattr(module, "app"):
            app.add_typer(module.app, name=getattr(module, "GROUP_NAME", name.rsplit(".", 2)[-2]))


_mount_domain_commands()
