"""Every domain's tables on the one MetaData (Alembic, tests): ``import cht_interop.tables``.

A domain with tables adds its ``tables`` module here (``tests/test_architecture.py`` fails if one
is missing); a misspelt name fails at import.
"""

from __future__ import annotations

from cht_interop.db.meta import metadata
from cht_interop.delivery import tables as delivery_tables
from cht_interop.fhir import tables as fhir_tables
from cht_interop.gateway import tables as gateway_tables
from cht_interop.journal import tables as journal_tables
from cht_interop.ltfu import tables as ltfu_tables

DOMAIN_TABLES = (fhir_tables, delivery_tables, ltfu_tables, gateway_tables, journal_tables)

__all__ = ["DOMAIN_TABLES", "metadata"]
