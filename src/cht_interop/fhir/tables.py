"""Tables of the embedded FHIR store.

Resources are kept as JSON text (current row + one row per version); every search parameter is
extracted at write time into narrow index tables, so search never scans JSON. Times are stored as
integer microseconds since the epoch (UTC): portable, exact and cheap to compare on both backends.
Every statement on them is in ``cht_interop.fhir.sql``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, Sequence, String, Table, Text

from cht_interop.db.meta import metadata

# PostgreSQL draws resource sequence numbers from this sequence (no row lock shared by writers);
# SQLite uses the counter table below (SQLite serialises writers anyway).
resource_seq = Sequence("fhir_resource_seq", metadata=metadata)

fhir_counter = Table(
    "fhir_counter",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

fhir_resource = Table(
    "fhir_resource",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # creation order: default sort, numeric ids
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),  # µs since epoch
    Column("deleted", Boolean, nullable=False),
    Column("content", Text, nullable=True),  # JSON of the current version; NULL once deleted
)
Index("ix_fhir_resource_type_seq", fhir_resource.c.res_type, fhir_resource.c.seq)
Index("ix_fhir_resource_type_updated", fhir_resource.c.res_type, fhir_resource.c.last_updated)

fhir_version = Table(
    "fhir_version",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("content", Text, nullable=True),  # NULL for the version that records a delete
)
# history, newest first: of the whole server, and of one type (an instance's uses the primary key)
Index(
    "ix_fhir_version_updated",
    fhir_version.c.last_updated,
    fhir_version.c.res_type,
    fhir_version.c.res_id,
    fhir_version.c.version_id,
)
Index(
    "ix_fhir_version_type_updated",
    fhir_version.c.res_type,
    fhir_version.c.last_updated,
    fhir_version.c.res_id,
    fhir_version.c.version_id,
)

# token parameters (identifier, status, code, gender, …): system is NULL when the element has none
fhir_token = Table(
    "fhir_token",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("value", String(255), nullable=False),
    Column("res_id", String(64), nullable=False),
)
Index("ix_fhir_token_lookup", fhir_token.c.res_type, fhir_token.c.param, fhir_token.c.value)
Index("ix_fhir_token_res", fhir_token.c.res_type, fhir_token.c.res_id)

# reference parameters: local targets as (type, id); external absolute references in target_url
fhir_reference = Table(
    "fhir_reference",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("target_url", String(1024), nullable=True),
    Column("res_id", String(64), nullable=False),
)
Index(
    "ix_fhir_reference_lookup", fhir_reference.c.res_type, fhir_reference.c.param, fhir_reference.c.target_id
)
Index("ix_fhir_reference_res", fhir_reference.c.res_type, fhir_reference.c.res_id)
Index("ix_fhir_reference_target", fhir_reference.c.target_type, fhir_reference.c.target_id)

# string parameters: ``norm`` is case- and accent-folded for the default (starts-with) match
fhir_string = Table(
    "fhir_string",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", String(512), nullable=False),
    Column("norm", String(512), nullable=False),
    Column("res_id", String(64), nullable=False),
)
Index("ix_fhir_string_lookup", fhir_string.c.res_type, fhir_string.c.param, fhir_string.c.norm)
Index("ix_fhir_string_res", fhir_string.c.res_type, fhir_string.c.res_id)

# date parameters as a half-open range [low, high) in µs
fhir_date = Table(
    "fhir_date",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", BigInteger, nullable=False),
    Column("high", BigInteger, nullable=False),
    Column("res_id", String(64), nullable=False),
)
Index("ix_fhir_date_lookup", fhir_date.c.res_type, fhir_date.c.param, fhir_date.c.low)
Index("ix_fhir_date_res", fhir_date.c.res_type, fhir_date.c.res_id)

# Active Subscriptions: one row each. ``indexed`` false means the criteria had no indexable token,
# so the subscription is also in ``fhir_subscription_unindexed`` (the "always check" set).
fhir_subscription = Table(
    "fhir_subscription",
    metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("resource_type", String(64), nullable=False),  # "*" for criteria over every type
    Column("criteria", Text, nullable=False),
    Column("endpoint", String(1024), nullable=False),
    Column("indexed", Boolean, nullable=False),
)

# The "always check" set: Subscriptions whose criteria has no indexable token. A table of its own so
# that it stays small and no planner statistics about ``fhir_subscription`` can turn it into a scan.
fhir_subscription_unindexed = Table(
    "fhir_subscription_unindexed",
    metadata,
    Column("resource_type", String(64), primary_key=True),  # "*" for criteria over every type
    Column("sub_id", String(64), primary_key=True),
)

# The criteria index: (type, param, system, value) → subscription. system NULL = any system.
fhir_subscription_token = Table(
    "fhir_subscription_token",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("value", String(1024), nullable=False),
    Column("sub_id", String(64), nullable=False),
)
# value first: it is what makes a lookup selective, whatever the planner's statistics say
Index(
    "ix_fhir_subscription_token_value",
    fhir_subscription_token.c.value,
    fhir_subscription_token.c.resource_type,
)
Index("ix_fhir_subscription_token_sub", fhir_subscription_token.c.sub_id)
