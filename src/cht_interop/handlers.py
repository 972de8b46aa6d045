"""Registers every domain's outbox job handlers on the Services' registry."""

from __future__ import annotations

import importlib
import importlib.util

from cht_interop.services import Services

# Each module exposes ``register_handlers(services: Services) -> None``.
_HANDLER_MODULES = (
    "cht_interop.fhir.subscriptions.delivery",
    "cht_interop.ltfu.jobs",
)


def register_all_handlers(services: Services) -> None:
    for name in _HANDLER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # parent package not there (yet)
            found = False
        if found:
            importlib.import_module(name).register_handlers(services)
