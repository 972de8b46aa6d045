"""The ``cht-interop`` command. Thin: every command calls the same services the API uses.

Domain commands live beside their domain (``<domain>/cli.py``) and are mounted at the end of this
module (``tests/test_architecture.py`` fails if one is missing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cht_interop.cht import cli as cht_cli
from cht_interop.delivery import cli as delivery_cli
from cht_interop.demo import cli as demo_cli
from cht_interop.gateway import cli as gateway_cli
from cht_interop.openhim import cli as openhim_cli
from cht_interop.sandbox import cli as sandbox_cli

app = typer.Typer(
    help="cht-interop: LTFU interoperability between FHIR R4 systems and the CHT.", no_args_is_help=True
)
console = Console(stderr=True)


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


# each domain's commands: a group (``<domain>/cli.py`` exposing ``app`` and ``GROUP_NAME``) or,
# for the sandbox, top-level commands added by ``register(app)``
app.add_typer(delivery_cli.app, name=delivery_cli.GROUP_NAME)
app.add_typer(cht_cli.app, name=cht_cli.GROUP_NAME)
app.add_typer(openhim_cli.app, name=openhim_cli.GROUP_NAME)
sandbox_cli.register(app)
app.add_typer(gateway_cli.app, name=gateway_cli.GROUP_NAME)
demo_cli.register(app)  # `cht-interop demo`: the LTFU story end to end
