"""Log lines for people (``LOG_FORMAT=text``, the default) or for a log pipeline (``json``).

Our lines and the libraries' go through one structlog formatter on the root logger, so each
carries the context bound where it was logged: ``transaction_id`` (the request's,
see ``journal/middleware.py``; a job attempt's own, with ``job_id``, ``job_kind`` and
``follow_up_id``, see ``journal/jobs.py``). uvicorn's lines join them in ``json`` only: in
``text`` uvicorn keeps its own cheap formatter (the access line, one per request, costs a few µs
there and ~10 times more through structlog's renderer). Credentials are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(
    log_format: str = "text", level: str = "INFO", *, stream: IO[str] | None = None
) -> None:
    """Install the formatter on the root logger (replacing its handlers); uvicorn's loggers
    hand their lines to it (pass ``log_config=None`` to uvicorn so it keeps them)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if log_format == "json":
        for name in UVICORN_LOGGERS:
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its own (text), or none so its lines reach ours (json)."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
