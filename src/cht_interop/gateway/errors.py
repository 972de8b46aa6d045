"""Why the gateway refuses a request. The gateway knows nothing of FHIR: the app (``app.py``) renders
these as the OperationOutcome its clients expect, with ``code`` as the issue type."""

from __future__ import annotations

REALM = 'Basic realm="cht-interop", charset="UTF-8"'


class GatewayRefusal(Exception):
    """A request the gateway turns away: HTTP ``status``, FHIR issue type ``code``, a reason that
    never carries a credential, and the headers to send."""

    status = 400
    code = "security"

    def __init__(self, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}


class AuthenticationRequired(GatewayRefusal):
    """No valid client credentials: HTTP 401, with a Basic challenge to answer."""

    status = 401
    code = "login"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, {"WWW-Authenticate": REALM})


class Forbidden(GatewayRefusal):
    """Authenticated, but the client's roles do not cover this request: HTTP 403."""

    status = 403
    code = "forbidden"


class TooManyFailures(GatewayRefusal):
    """Too many failed authentications from this address lately: HTTP 429 with Retry-After."""

    status = 429
    code = "throttled"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many failed authentications from this address; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after
