"""``cht-interop cht-sandbox``: run the CHT sandbox on its own (trials, demos, ``cht configure``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command("cht-sandbox")
    def cht_sandbox(
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 5988,
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        data_dir: Annotated[Path | None, typer.Option(help="Where the sandbox keeps its data.")] = None,
        interop_url: Annotated[
            str | None,
            typer.Option(help="Where outbound pushes go (default: PUBLIC_BASE_URL or the local API)."),
        ] = None,
        bare: Annotated[
            bool, typer.Option(help="Start without installing the shipped CHT configuration.")
        ] = False,
        outbound_retry_seconds: Annotated[
            float, typer.Option(help="Outbound retry period (the CHT's is 300 s).")
        ] = 300.0,
    ) -> None:
        """A local emulator of the CHT API the LTFU workflow touches (never presented as a CHT)."""
        import uvicorn

        from cht_interop.gateway.credentials import SECRET_FILE
        from cht_interop.sandbox.app import create_sandbox_app
        from cht_interop.sandbox.runner import ShippedConfigMissing, sandbox_config
        from cht_interop.settings import Settings

        if data_dir is not None:
            os.environ["DATA_DIR"] = str(data_dir)
        settings = Settings()
        url = interop_url or settings.public_base_url or f"http://127.0.0.1:{settings.port}"
        password = (
            settings.interop_client_password.get_secret_value() if settings.interop_client_password else None
        )
        secret = Path(settings.data_dir) / SECRET_FILE
        if password is None and secret.exists():
            password = secret.read_text().strip()
        try:
            config = sandbox_config(
                settings,
                interop_url=url,
                interop_password=password,
                install=not bare,
                outbound_retry_seconds=outbound_retry_seconds,
            )
        except ShippedConfigMissing as exc:
            console.print(f"[red]{exc}[/red] (use --bare to start without it)")
            raise typer.Exit(1) from None
        console.print(
            f"CHT sandbox on http://{host}:{port} (admin {config.admin_username}); data in "
            f"{config.data_path.resolve()}; CHW page at /sandbox/chw"
            + ("" if bare else f"; outbound push to {url}")
        )
        uvicorn.run(create_sandbox_app(config), host=host, port=port, log_level="info")
