"""Why the gateway refuses a request. The gateway knows nothing of FHIR: the app (``app.py``) renders
these as the OperationOutcome its clients expect."""

from __future__ import annotations

REALM = 'Basic realm="cht-interop", charset="UTF-8"'


class AuthenticationRequired(Exception):
    """No valid interop client credentials: HTTP 401, with a Basic challenge to answer."""

    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = {"WWW-Authenticate": REALM}
