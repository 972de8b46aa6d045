"""The mediator's registration document for OpenHIM core (``POST /mediators``), from the package.

Shape (core ``src/model/mediators.js``, ``src/api/mediators.js``): ``urn``, ``version`` (semver
``x.y.z``), ``name`` required; ``endpoints`` (routes, each with a ``name``; at least one);
``defaultChannelConfig`` (channels: ``name``, ``urlPattern``, and ``methods``, without which a
channel never matches since core 7.0.1); ``configDefs`` (``param``, ``displayName``,
``description``, ``type``); ``config`` (every key a def ``param``, of the def's type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cht_interop import __version__
from cht_interop.openhim import channels
from cht_interop.settings import Settings

URN = "urn:mediator:cht-interop"
NAME = "CHT interop"
DESCRIPTION = (
    "Loss-to-follow-up (LTFU) interoperability between FHIR R4 health systems and the Community "
    "Health Toolkit: /mediator (LTFU workflow) and, when embedded, /fhir (a FHIR R4 server)."
)


@dataclass(frozen=True)
class ConfigDef:
    """One value an administrator may change from the OpenHIM console: a ``Tunables`` field."""

    param: str
    display_name: str
    description: str
    integer: bool = False
    minimum: float = 0  # accepted values are >= minimum (> 0 when ``positive``)
    positive: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "param": self.param,
            "displayName": self.display_name,
            "description": self.description,
            "type": "number",
        }


CONFIG_DEFS = (
    ConfigDef(
        "follow_up_expiry_seconds",
        "Follow-up expiry (seconds)",
        "A follow-up not completed this long after the CHT accepted it fails (FOLLOW_UP_EXPIRY_SECONDS).",
    ),
    ConfigDef(
        "delivery_horizon_seconds",
        "Delivery retry horizon (seconds)",
        "How long a failing delivery (callback, notification) is retried before it is dead-lettered "
        "(DELIVERY_HORIZON_SECONDS).",
    ),
    ConfigDef(
        "ltfu_list_sync_max",
        "LTFU list synchronous maximum (entries)",
        "LTFU lists up to this many entries are written before the answer; longer ones are staged "
        "and written in the background (LTFU_LIST_SYNC_MAX).",
        integer=True,
        positive=False,
    ),
)


def default_channels(settings: Settings) -> list[dict[str, Any]]:
    """``/mediator/*`` always; ``/fhir/*`` when this process serves FHIR (``FHIR_URL`` unset). A
    channel to an external FHIR server carries that server's credentials: only ``openhim
    configure`` writes it, never a registration every replica repeats."""
    offered = [channels.mediator_channel(settings)]
    if settings.fhir_url is None:
        offered.append(channels.fhir_channel(settings))
    return offered


def current_config(settings: Settings) -> dict[str, float | int]:
    live = settings.live
    return {d.param: getattr(live, d.param) for d in CONFIG_DEFS}


def registration(settings: Settings) -> dict[str, Any]:
    """The body of ``POST /mediators``: re-sent on every start (a newer version replaces core's
    copy, keeping the values an administrator set)."""
    return {
        "urn": URN,
        "version": __version__,
        "name": NAME,
        "description": DESCRIPTION,
        "endpoints": [channels.route_to(channels.mediator_url(settings), "CHT interop", forward_auth=True)],
        "defaultChannelConfig": default_channels(settings),
        "configDefs": [d.as_json() for d in CONFIG_DEFS],
        "config": current_config(settings),
    }
