"""``cht-interop openhim …``: set up OpenHIM core for this service (the reference's configurator)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cht_interop.gateway.credentials import SECRET_FILE
from cht_interop.openhim import channels
from cht_interop.openhim.auth import Authenticator, without_userinfo
from cht_interop.openhim.configurator import Action, Plan, apply, make_plan
from cht_interop.openhim.errors import OpenHimError
from cht_interop.openhim.management import ManagementApi
from cht_interop.settings import Settings

GROUP_NAME = "openhim"
app = typer.Typer(help="OpenHIM core: the client, role and channels for this service.", no_args_is_help=True)
console = Console()

INSECURE_WARNING = (
    "TLS verification is OFF (--insecure): the OpenHIM API's certificate is not checked, so "
    "anyone on the network path could pose as OpenHIM and read the OpenHIM password and the client "
    "password hash sent to it. Prefer --ca-bundle with the certificate core uses."
)


def interop_password(settings: Settings) -> str | None:
    """The interop client's password: ``INTEROP_CLIENT_PASSWORD``, else the secret ``up``/``serve``
    keep in ``DATA_DIR`` (never made here: a one-off configure container would lose it)."""
    if settings.interop_client_password is not None and settings.interop_client_password.get_secret_value():
        return settings.interop_client_password.get_secret_value()
    path = Path(settings.data_dir) / SECRET_FILE
    kept = path.read_text().strip() if path.exists() else ""
    return kept or None


def tls_verify(ca_bundle: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return True


def show(plan: Plan, api_url: str) -> None:
    console.print(
        f"OpenHIM core at {api_url}" + (f" (version {plan.core_version})" if plan.core_version else "")
    )
    table = Table("kind", "name", "change", "fields")
    colour = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.UNCHANGED: "dim"}
    for change in plan.changes:
        table.add_row(
            change.kind.removesuffix("s"),
            change.name,
            f"[{colour[change.action]}]{change.action}[/]",
            ", ".join(change.fields) or "-",
        )
    console.print(table)
    console.print(
        f"role [bold]{channels.CLIENT_ROLE}[/bold]: on the client and in every channel's allow list"
    )


async def configure(
    settings: Settings,
    *,
    api_url: str,
    username: str,
    password: str,
    verify: ssl.SSLContext | bool,
    dry_run: bool,
) -> Plan:
    client_password = interop_password(settings)
    if client_password is None:
        raise typer.BadParameter(
            "no interop client password: set INTEROP_CLIENT_PASSWORD (the password requesting systems "
            f"and the CHT use), or run where DATA_DIR holds {SECRET_FILE}"
        )
    async with httpx.AsyncClient(timeout=settings.http_timeout_seconds, verify=verify) as http:
        api = ManagementApi(Authenticator(http, api_url, username, password))
        plan = await make_plan(api, settings.interop_client_id, client_password, channels.channels(settings))
        show(plan, without_userinfo(api_url))
        if dry_run:
            console.print("[yellow]dry run: nothing written[/yellow]")
        elif plan.changed:
            await apply(api, plan)
            console.print("[green]OpenHIM configured[/green]")
        else:
            console.print("[green]already up to date[/green]")
    return plan


@app.command("configure")
def configure_command(
    dry_run: Annotated[bool, typer.Option(help="Show what would change; write nothing.")] = False,
    openhim_url: Annotated[
        str | None, typer.Option(help="OpenHIM core's management API (default: OPENHIM_API_URL).")
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="CA certificates that sign core's API certificate."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Do not verify core's TLS certificate (says what that exposes).")
    ] = False,
) -> None:
    """Create or update the interop client (role ``interop``) and the channels ``Mediator`` and
    ``FHIR Server`` in OpenHIM core; a second run changes nothing. Credentials: OPENHIM_USERNAME /
    OPENHIM_PASSWORD (an OpenHIM admin), INTEROP_CLIENT_ID / INTEROP_CLIENT_PASSWORD (the client)."""
    settings = Settings()
    api_url = openhim_url or settings.openhim_api_url
    if not api_url or not settings.openhim_username or settings.openhim_password is None:
        raise typer.BadParameter(
            "set OPENHIM_API_URL (or --openhim-url), OPENHIM_USERNAME and OPENHIM_PASSWORD"
        )
    if insecure and ca_bundle is not None:
        raise typer.BadParameter("--insecure and --ca-bundle contradict each other")
    if insecure:
        console.print(f"[bold red]warning:[/bold red] {INSECURE_WARNING}")
    try:
        asyncio.run(
            configure(
                settings,
                api_url=api_url,
                username=settings.openhim_username,
                password=settings.openhim_password.get_secret_value(),
                verify=tls_verify(ca_bundle, insecure),
                dry_run=dry_run,
            )
        )
    except OpenHimError as exc:
        console.print(f"[red]OpenHIM: {exc}[/red]")
        raise typer.Exit(1) from None
