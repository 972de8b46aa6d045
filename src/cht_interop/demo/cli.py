"""``cht-interop demo``: the LTFU story end to end, with a timeline at the end.

On the embedded default (the interop app and the CHT sandbox started here, on free ports, in a
throwaway data directory) or against a running ``up --cht-sandbox`` (``--url``). Exit status 0
only if every patient's callback arrived within ``--timeout``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cht_interop.demo.stack import Stack, embedded_stack

SECRET_FILES = ("interop-client.secret", "cht-sandbox-admin.secret")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        patients: Annotated[int, typer.Option(min=1, help="How many patients are lost to follow-up.")] = 5,
        per_chw: Annotated[int, typer.Option(min=1, help="Patients per CHW (one CHW each so many).")] = 25,
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the CHWs and every callback.")
        ] = 300,
        show: Annotated[int, typer.Option(help="Timeline rows shown (the summary counts all).")] = 50,
        url: Annotated[
            str | None, typer.Option(help="A running `up --cht-sandbox` instead of the embedded default.")
        ] = None,
        cht_url: Annotated[str, typer.Option(help="Its CHT sandbox (with --url).")] = "http://127.0.0.1:5988",
        data_dir: Annotated[
            Path | None,
            typer.Option(
                help="Embedded: keep the data here (default: a temporary directory, removed). "
                "With --url: where `up` keeps its secrets (default DATA_DIR or ./.cht-interop)."
            ),
        ] = None,
    ) -> None:
        """Run the LTFU story end to end: register, send the list, CHWs follow up, callbacks return."""
        import httpx

        from cht_interop.client import InteropError
        from cht_interop.demo.report import summary, timeline
        from cht_interop.demo.story import Demo
        from cht_interop.demo.world import ChtError

        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 132)  # a log or a pipe: the timeline on one line a patient
        with _stack(url, cht_url, data_dir, console) as stack:
            progress = Progress(
                TextColumn("{task.description:<32}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            with progress:
                runner = Demo(stack, patients=patients, per_chw=per_chw, timeout=timeout, progress=progress)
                try:
                    story = asyncio.run(runner.run())
                except (ChtError, InteropError, TimeoutError, httpx.HTTPError) as exc:
                    console.print(f"[red bold]The demo stopped:[/red bold] {exc or type(exc).__name__}")
                    raise typer.Exit(1) from None
        console.print(timeline(story, show=show))
        summary(story, console)
        if story.missing:
            raise typer.Exit(1)


@contextmanager
def _stack(url: str | None, cht_url: str, data_dir: Path | None, console: Console) -> Iterator[Stack]:
    if url is not None:
        yield _running(url, cht_url, data_dir)
        return
    where = data_dir or Path(tempfile.mkdtemp(prefix="cht-interop-demo-"))
    console.print(f"Starting the interop app and the CHT sandbox (data in {where}) …")
    try:
        with embedded_stack(where) as stack:
            console.print(f"interop API {stack.interop_url}, CHT sandbox {stack.cht_url}")
            yield stack
    finally:
        if data_dir is None:
            shutil.rmtree(where, ignore_errors=True)


def _running(url: str, cht_url: str, data_dir: Path | None) -> Stack:
    """A running ``up``: passwords from the environment, else the secrets ``up`` kept."""
    where = data_dir or Path(os.environ.get("DATA_DIR", ".cht-interop"))
    found = [os.environ.get(name) for name in ("INTEROP_CLIENT_PASSWORD", "CHT_PASSWORD")]
    for n, file_name in enumerate(SECRET_FILES):
        path = where / file_name
        if not found[n] and path.exists():
            found[n] = path.read_text().strip()
    interop_password, cht_password = found
    if not interop_password or not cht_password:
        raise typer.BadParameter(
            f"set INTEROP_CLIENT_PASSWORD and CHT_PASSWORD, or point --data-dir at `up`'s ({where})"
        )
    return Stack(
        interop_url=url.rstrip("/"),
        interop_username=os.environ.get("INTEROP_CLIENT_ID", "interop-client"),
        interop_password=interop_password,
        cht_url=cht_url.rstrip("/"),
        cht_username=os.environ.get("CHT_USERNAME", "admin"),
        cht_password=cht_password,
    )
