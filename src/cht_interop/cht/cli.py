"""``cht-interop cht …``: install the shipped CHT configuration into a CHT instance."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from cht_interop.cht.client import ChtClient, ChtError
from cht_interop.cht.config_loader import load_app_config
from cht_interop.cht.configure import (
    PUSH_PASSWORD_KEY,
    ConfigurePlan,
    apply_configure,
    plan_configure,
    store_push_password,
)
from cht_interop.cht.export import ExportError, export_config
from cht_interop.settings import Settings

GROUP_NAME = "cht"
app = typer.Typer(help="The CHT side: install the LTFU app configuration into a CHT.", no_args_is_help=True)
console = Console()


def _show(plan: ConfigurePlan) -> None:
    if plan.diff:
        console.print("[bold]App settings[/bold] (GET/PUT /api/v1/settings):")
        console.print(Syntax("\n".join(plan.diff), "diff", theme="ansi_dark", word_wrap=True))
    else:
        console.print("[bold]App settings[/bold]: no change")
    table = Table("doc", "change")
    for form_plan in plan.forms:
        table.add_row(form_plan.form.doc_id, ", ".join(form_plan.changes) or "no change")
    for translations_plan in plan.translations:
        table.add_row(translations_plan.doc_id, ", ".join(translations_plan.changes) or "no change")
    console.print(table)


async def _configure(
    cht_url: str,
    *,
    username: str,
    password: str,
    dry_run: bool,
    interop_url: str | None,
    interop_username: str,
    push_password: str | None,
    http_timeout: float,
) -> ConfigurePlan:
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        client = ChtClient(cht_url, username, password, http)
        plan = await plan_configure(
            client, load_app_config(), interop_url=interop_url, interop_username=interop_username
        )
        _show(plan)
        if dry_run:
            console.print("[yellow]dry run: nothing written[/yellow]")
            return plan
        await apply_configure(client, plan)
        console.print(
            "[green]configuration applied[/green]" if plan.changed else "[green]already up to date[/green]"
        )
        if push_password is not None:
            await store_push_password(client, push_password)
            console.print("[green]outbound push password stored in the CHT credentials store[/green]")
        else:
            console.print(
                "[yellow]INTEROP_CLIENT_PASSWORD is not set: outbound push password not stored[/yellow]"
            )
        return plan


@app.command()
def configure(
    cht_url: Annotated[str | None, typer.Option(help="Base URL of the CHT (default: CHT_URL).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the changes without writing them.")
    ] = False,
    interop_url: Annotated[
        str | None,
        typer.Option(
            help="Where the CHT pushes patients and encounters (default: PUBLIC_BASE_URL, else as shipped)."
        ),
    ] = None,
) -> None:
    """Merge the LTFU configuration (settings, app form, translations, push password) into a CHT; shows
    the diff first.

    Credentials: CHT_USERNAME / CHT_PASSWORD (a CHT admin). The outbound push authenticates as
    INTEROP_CLIENT_ID with INTEROP_CLIENT_PASSWORD, which goes to the CHT credentials store.
    """
    settings = Settings()
    url = cht_url or settings.cht_url
    if not url:
        raise typer.BadParameter("give --cht-url or set CHT_URL", param_hint="--cht-url")
    if settings.cht_password is None:
        console.print("[red]CHT_PASSWORD is not set[/red]")
        raise typer.Exit(2)
    push_password = settings.interop_client_password
    try:
        asyncio.run(
            _configure(
                url,
                username=settings.cht_username,
                password=settings.cht_password.get_secret_value(),
                dry_run=dry_run,
                interop_url=interop_url or settings.public_base_url,
                interop_username=settings.interop_client_id,
                push_password=push_password.get_secret_value() if push_password is not None else None,
                http_timeout=settings.http_timeout_seconds,
            )
        )
    except (ChtError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@app.command("export-config")
def export_config_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the cht-conf project (new or empty).")],
    mediator_url: Annotated[
        str,
        typer.Option(help="The interop API's URL as the CHT reaches it, e.g. https://interop.example.org."),
    ],
    force: Annotated[bool, typer.Option("--force", help="Write into a directory that is not empty.")] = False,
) -> None:
    """Write the LTFU configuration as a cht-conf project whose outbound pushes go to MEDIATOR_URL.

    Deploy it the usual CHT way, from that directory, with cht-conf; the push authenticates as
    INTEROP_CLIENT_ID with the password the CHT keeps under the credentials key ``interop-client``.
    """
    username = Settings().interop_client_id
    try:
        files = export_config(directory, mediator_url=mediator_url, username=username, force=force)
    except ExportError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"[green]cht-conf project written to {directory}[/green]; pushes go to {mediator_url}")
    for path in files:
        console.print(f"  outbound base_url set in {path}")
    console.print(
        "Deploy it with cht-conf, from that directory:\n"
        "  cht --url=<the CHT's admin URL> compile-app-settings upload-app-settings"
        " convert-app-forms upload-app-forms upload-custom-translations\n"
        f"then store the push password under the credentials key '{PUSH_PASSWORD_KEY}' (a CHT admin):\n"
        f"  PUT <cht>/api/v1/credentials/{PUSH_PASSWORD_KEY} with the password as text/plain\n"
        "(`cht-interop cht configure` does all of this, merging into the CHT's settings instead of"
        " replacing them).",
        soft_wrap=True,
    )
