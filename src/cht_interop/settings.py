"""One settings object for the whole process.

Env names follow the reference mediator where one exists (``PORT``, ``FHIR_URL``, ``CHT_URL`` …)
so that an existing deployment's environment works unchanged; the rest are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# FHIR_TRANSACTION_MAX_ENTRIES unset, on SQLite: a transaction holds the one writer ~0.07 ms per
# entry, so 2,000 entries keep every other write waiting ~150 ms at most (docs/performance.md)
SQLITE_TRANSACTION_MAX_ENTRIES = 2000


@dataclass
class Tunables:
    """The settings an administrator may change while the process runs (from the OpenHIM console):
    the code that uses them reads them here, at each use, through ``Settings.live``."""

    follow_up_expiry_seconds: float
    delivery_horizon_seconds: float
    ltfu_list_sync_max: int


class Settings(BaseSettings):
    """Everything configurable, read from the environment and ``.env``; never written at runtime,
    except ``live`` (the few values OpenHIM's mediator config may change, see ``Tunables``)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)
    _live: Tunables | None = PrivateAttr(default=None)

    # reference-compatible names
    port: int = Field(default=5001, alias="PORT")
    fhir_url: str | None = Field(default=None, alias="FHIR_URL")
    fhir_username: str | None = Field(default=None, alias="FHIR_USERNAME")
    fhir_password: SecretStr | None = Field(default=None, alias="FHIR_PASSWORD")
    cht_url: str | None = Field(default=None, alias="CHT_URL")
    cht_username: str = Field(default="admin", alias="CHT_USERNAME")
    cht_password: SecretStr | None = Field(default=None, alias="CHT_PASSWORD")
    cht_max_concurrent_requests: int = Field(
        default=16,
        ge=1,
        alias="CHT_MAX_CONCURRENT_REQUESTS",
        description="Requests open at once at the CHT per process; fewer while it answers 429/503.",
    )
    cht_write_batch_size: int = Field(
        default=100,
        ge=1,
        alias="CHT_WRITE_BATCH_SIZE",
        description="CHT records written together in one `_bulk_docs` request, at most.",
    )
    openhim_api_url: str | None = Field(default=None, alias="OPENHIM_API_URL")
    openhim_username: str | None = Field(default=None, alias="OPENHIM_USERNAME")
    openhim_password: SecretStr | None = Field(default=None, alias="OPENHIM_PASSWORD")
    openhim_mediator_url: str | None = Field(
        default=None,
        alias="OPENHIM_MEDIATOR_URL",
        description=(
            "Where OpenHIM core reaches this process (the mediator's endpoint and default channels' "
            "route); default http://cht-interop:<PORT>, the Compose service name."
        ),
    )
    openhim_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        alias="OPENHIM_HEARTBEAT_SECONDS",
        description="Seconds between heartbeats to OpenHIM core (it shows a mediator offline after 60).",
    )
    openhim_max_backoff_seconds: float = Field(
        default=300.0,
        gt=0,
        alias="OPENHIM_MAX_BACKOFF_SECONDS",
        description="The longest wait between attempts while OpenHIM core is down or refuses us.",
    )

    # ours
    data_dir: Path = Field(default=Path(".cht-interop"), alias="DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    interop_client_id: str = Field(default="interop-client", alias="INTEROP_CLIENT_ID")
    interop_client_password: SecretStr | None = Field(default=None, alias="INTEROP_CLIENT_PASSWORD")
    # gateway: the console administrator `up` makes (ADMIN_PASSWORD, or generated into admin.secret)
    admin_client_id: str = Field(default="admin", alias="ADMIN_CLIENT_ID")
    admin_password: SecretStr | None = Field(default=None, alias="ADMIN_PASSWORD")
    public_base_url: str | None = Field(
        default=None,
        alias="PUBLIC_BASE_URL",
        description=(
            "The server's absolute root URL as clients reach it (FHIR at <root>/fhir, the mediator at "
            "<root>/mediator), for fullUrl, Location and links; derived from the request if unset. "
            "A value ending in /fhir is taken as the FHIR base and the root is the part before it."
        ),
    )
    allow_private_callbacks: bool = Field(
        default=False,
        alias="ALLOW_PRIVATE_CALLBACKS",
        description="Accept loopback/private callback addresses. `up` turns it on for local trials.",
    )
    delivery_horizon_seconds: float = Field(default=24 * 3600, alias="DELIVERY_HORIZON_SECONDS")
    delivery_initial_backoff_seconds: float = Field(default=1.0, alias="DELIVERY_INITIAL_BACKOFF_SECONDS")
    delivery_max_backoff_seconds: float = Field(default=600.0, alias="DELIVERY_MAX_BACKOFF_SECONDS")
    delivery_lease_seconds: float = Field(default=60.0, alias="DELIVERY_LEASE_SECONDS")
    delivery_poll_seconds: float = Field(default=0.5, alias="DELIVERY_POLL_SECONDS")
    delivery_concurrency: int = Field(
        default=64,
        ge=1,
        alias="DELIVERY_CONCURRENCY",
        description="Outbox jobs one worker runs at once (CHT jobs also within the CHT's window).",
    )
    http_timeout_seconds: float = Field(default=10.0, alias="HTTP_TIMEOUT_SECONDS")
    db_busy_timeout_seconds: float = Field(
        default=30.0,
        alias="DB_BUSY_TIMEOUT_SECONDS",
        description=(
            "SQLite: how long a write waits for another process's write lock (a second `serve`, a "
            "`worker`, a CLI command) before the request is answered 503 with Retry-After."
        ),
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, alias="MAX_BODY_BYTES")
    fhir_transaction_max_entries: int | None = Field(
        default=None,
        ge=0,
        alias="FHIR_TRANSACTION_MAX_ENTRIES",
        description=(
            "The most entries a client's `/fhir` transaction Bundle may hold (413 beyond; 0: no limit "
            "but MAX_BODY_BYTES). Unset: 2,000 on SQLite, whose single writer the whole transaction "
            "holds while every other write waits (~0.07 ms per entry); no limit on PostgreSQL."
        ),
    )
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    access_log: bool = Field(
        default=True,
        alias="ACCESS_LOG",
        description=(
            "A line per HTTP request from `up`/`serve` (method, path, status; never credentials). "
            "Behind OpenHIM, which records every transaction, it can go (~0.1-0.2 ms per request)."
        ),
    )
    follow_up_expiry_seconds: float = Field(
        default=8 * 24 * 3600,
        alias="FOLLOW_UP_EXPIRY_SECONDS",
        description=(
            "Fail a follow-up not completed this long after the CHT accepted it (task window + 1 day)."
        ),
    )
    ltfu_list_sync_max: int = Field(
        default=1000,
        ge=0,
        alias="LTFU_LIST_SYNC_MAX",
        description=(
            "LTFU lists up to this many entries are written before the answer (201s); longer ones, "
            "or any sent with `Prefer: respond-async`, are checked, committed and answered 202, and "
            "their follow-ups written in the background (poll the list's status URL)."
        ),
    )
    external_subscription_off_delay_seconds: float = Field(
        default=120.0,
        ge=0,
        alias="EXTERNAL_SUBSCRIPTION_OFF_DELAY_SECONDS",
        description=(
            "With an external FHIR server (FHIR_URL), how long after a follow-up completes its "
            "Subscription is switched off: that server delivers the completing Encounter's "
            "notification itself, asynchronously, and must still find the Subscription active."
        ),
    )
    ltfu_list_chunk: int = Field(
        default=500,
        ge=1,
        alias="LTFU_LIST_CHUNK",
        description="Follow-ups written per background job (at most a list's turn: 500).",
    )
    ltfu_list_retention_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        alias="LTFU_LIST_RETENTION_SECONDS",
        description=(
            "How long a staged LTFU list's status (its batch-response) stays readable at "
            "/mediator/ltfu-lists/<id> after its last follow-up is written; then its rows are "
            "deleted by the outbox worker. The follow-ups themselves are FHIR resources and stay."
        ),
    )

    # -- console (issue 12) --
    console_session_hours: float = Field(
        default=8.0, gt=0, alias="CONSOLE_SESSION_HOURS", description="How long a console login lasts."
    )
    # -- transaction log and observability (journal/, observability/) --
    journal_enabled: bool = Field(
        default=True,
        alias="JOURNAL_ENABLED",
        description="Keep a transaction log row per /mediator and /fhir request and per outbox job attempt.",
    )
    journal_bodies: bool = Field(
        default=True,
        alias="JOURNAL_BODIES",
        description=(
            "Keep request, response and orchestration bodies in the transaction log (redacted, cut to "
            "JOURNAL_MAX_BODY_CHARS). Off for privacy: rows keep everything but the bodies."
        ),
    )
    journal_max_body_chars: int = Field(default=16 * 1024, ge=0, alias="JOURNAL_MAX_BODY_CHARS")
    journal_retention_seconds: float = Field(
        default=30 * 24 * 3600,
        gt=0,
        alias="JOURNAL_RETENTION_SECONDS",
        description="Transaction log rows older than this are deleted by the outbox worker (hourly).",
    )
    journal_queue_max: int = Field(
        default=10_000,
        ge=1,
        alias="JOURNAL_QUEUE_MAX",
        description="Rows waiting to be written; beyond it rows are dropped and counted (a slow database).",
    )
    log_format: str = Field(
        default="text",
        pattern="^(text|json)$",
        alias="LOG_FORMAT",
        description="`text` (readable, the default) or `json` (one JSON object a line, with transaction_id).",
    )

    @field_validator("public_base_url")
    @classmethod
    def _server_root(cls, value: str | None) -> str | None:
        """One meaning for every consumer (FHIR links, mediator links, the CHT's push target): the root.

        Deployments write both ``https://host`` and ``https://host/fhir``; without this the mediator
        appended a second ``/fhir`` to the latter.
        """
        if value is None or not value.strip():
            return None
        root = value.strip().rstrip("/")
        if not root.lower().startswith(("http://", "https://")):
            raise ValueError(f"PUBLIC_BASE_URL must be an absolute http(s) URL, not {value!r}")
        if root.endswith("/fhir"):
            root = root[: -len("/fhir")]
        return root

    @property
    def live(self) -> Tunables:
        """The current values of the tunable settings: the environment's until changed live."""
        if self._live is None:
            self._live = Tunables(
                follow_up_expiry_seconds=self.follow_up_expiry_seconds,
                delivery_horizon_seconds=self.delivery_horizon_seconds,
                ltfu_list_sync_max=self.ltfu_list_sync_max,
            )
        return self._live

    def transaction_entry_limit(self) -> int | None:
        """``FHIR_TRANSACTION_MAX_ENTRIES`` as it applies to this database (None: no limit)."""
        limit = self.fhir_transaction_max_entries
        if limit is None:
            on_sqlite = self.resolved_database_url.startswith("sqlite")
            return SQLITE_TRANSACTION_MAX_ENTRIES if on_sqlite else None
        return limit or None

    @property
    def resolved_database_url(self) -> str:
        """The configured database, or the embedded SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cht-interop.sqlite3').resolve()}"
