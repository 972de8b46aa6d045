"""The LTFU records as the CHT stores them, under ids derived from the follow-up: written once.

The CHT's records API (``POST /api/v2/records``) gives every record a new server-made ``_id``, so a
worker that dies between the CHT's answer and its own bookkeeping sends a second record when the
job is resent. Instead the record is written as the doc that API would have stored
(cht-core ``api/src/services/records.js`` ``getDataRecord``: ``type``, upper-cased ``form``,
``fields``, ``errors``, ``tasks``, ``reported_date``, ``sms_message``) with an ``_id`` derived from
the follow-up, through ``PUT /medic/<_id>``: CouchDB answers a second write of the same ``_id``
with 409, which means "already there" (docs/cht-contract.md §1).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

#: ``_id`` prefixes of the two records of a follow-up (never reused for anything else).
FOLLOW_UP_ID_PREFIX = "interop-follow-up-"
CANCEL_ID_PREFIX = "interop-follow-up-cancel-"


def follow_up_record_id(follow_up_id: str) -> str:
    """The CHT ``_id`` of the follow-up record of this follow-up."""
    return f"{FOLLOW_UP_ID_PREFIX}{follow_up_id}"


def cancel_record_id(follow_up_id: str) -> str:
    """The CHT ``_id`` of the cancel record of this follow-up."""
    return f"{CANCEL_ID_PREFIX}{follow_up_id}"


def record_doc(
    doc_id: str, body: Mapping[str, Any], *, reported_date_ms: int | None = None
) -> dict[str, Any]:
    """The data_record the records API stores for ``body`` (``{"_meta": {"form": …}, field: value}``).

    As that API does: the form code upper-cased, field keys lower-cased, ``_meta`` kept as
    ``sms_message``, ``reported_date`` now (epoch ms). The fields are ours, so all are kept.
    """
    meta = body.get("_meta")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("form"), str) or not meta["form"]:
        raise ValueError("a record needs _meta.form")
    form = str(meta["form"]).upper()
    return {
        "_id": doc_id,
        "type": "data_record",
        "form": form,
        "errors": [],
        "tasks": [],
        "fields": {str(key).lower(): value for key, value in body.items() if key != "_meta"},
        "reported_date": reported_date_ms if reported_date_ms is not None else int(time.time() * 1000),
        "sms_message": {**meta, "form": form},
    }
