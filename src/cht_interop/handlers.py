"""Registers every domain's outbox job handlers on the Services' registry.

A domain with outbox jobs adds its ``register_handlers(...)`` here (``tests/test_architecture.py``
fails if one is missing).
"""

from __future__ import annotations

from cht_interop.fhir.subscriptions import delivery as fhir_subscriptions
from cht_interop.journal import jobs as journal_jobs
from cht_interop.ltfu import jobs as ltfu_jobs
from cht_interop.services import Services


def register_all_handlers(services: Services) -> None:
    """Each domain gets what its handlers need, never the whole Services."""
    fhir_subscriptions.register_handlers(
        services.handlers, services.fhir, services.callback_http, services.settings
    )
    ltfu_jobs.register_handlers(services.handlers, services.ltfu, services.http, services.callback_http)
    journal_jobs.register_handlers(services.handlers, services.db, services.settings)
