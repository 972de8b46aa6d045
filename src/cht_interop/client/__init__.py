"""A requesting system's side of cht-interop, usable on its own (imports nothing of the server).

``AsyncInteropClient`` / ``InteropClient``: register, ask for follow-ups (one, or an LTFU list),
read their state, cancel. ``CallbackReceiver``: the ASGI app the server notifies with the CHW's
answers. See docs/client.md.
"""

from cht_interop.client.api import AsyncInteropClient, InteropClient, service_request
from cht_interop.client.receiver import CallbackReceiver, Notification
from cht_interop.client.results import (
    FollowUpStatus,
    InteropError,
    ListResult,
    Registration,
    Submission,
)

__all__ = [
    "AsyncInteropClient",
    "CallbackReceiver",
    "FollowUpStatus",
    "InteropClient",
    "InteropError",
    "ListResult",
    "Notification",
    "Registration",
    "Submission",
    "service_request",
]
