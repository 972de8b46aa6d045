"""Why a call to OpenHIM core did not succeed (messages never carry credentials)."""

from __future__ import annotations


class OpenHimError(Exception):
    """A management API call failed; ``str()`` is a one-line reason fit for the log; ``status``:
    core's HTTP status, when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OpenHimUnavailable(OpenHimError):
    """Core cannot be reached, timed out, or answered 5xx: try again later."""


class OpenHimRefused(OpenHimError):
    """Core refused us (401 with every scheme, 403): a configuration problem, retried slowly."""


class OpenHimRejected(OpenHimError):
    """Core answered 4xx to what we sent (e.g. 400 on a registration it finds invalid)."""
