"""Imports every domain's table module so the shared MetaData is complete (Alembic, tests)."""

from __future__ import annotations

import importlib
import importlib.util

_DOMAIN_TABLE_MODULES = (
    "cht_interop.fhir.tables",
    "cht_interop.delivery.tables",
    "cht_interop.ltfu.tables",
    "cht_interop.gateway.tables",
)

for _name in _DOMAIN_TABLE_MODULES:
    # a domain without tables simply has no module; an error inside one must still surface
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
