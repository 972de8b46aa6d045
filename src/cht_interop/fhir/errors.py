"""Typed FHIR errors; one handler renders any of them as an OperationOutcome.

FhirError (status, issue code, diagnostics)
├── InvalidRequest        400  (parse errors, bad parameters, dangling references)
├── AuthenticationRequired 401
├── Forbidden             403
├── ResourceNotFound      404
├── MethodNotAllowed      405
├── VersionConflict       409
├── ResourceGone          410
├── PreconditionFailed    412  (several matches for a conditional operation)
├── PayloadTooLarge       413
├── UnsupportedMediaType  415
└── Unprocessable         422  (business rules, e.g. Subscription criteria)
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import Any


class IssueSeverity(StrEnum):
    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


class IssueType(StrEnum):
    INVALID = "invalid"
    STRUCTURE = "structure"
    REQUIRED = "required"
    VALUE = "value"
    SECURITY = "security"
    LOGIN = "login"
    FORBIDDEN = "forbidden"
    PROCESSING = "processing"
    NOT_SUPPORTED = "not-supported"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not-found"
    DELETED = "deleted"
    TOO_LONG = "too-long"
    TOO_COSTLY = "too-costly"
    CONFLICT = "conflict"
    BUSINESS_RULE = "business-rule"
    EXCEPTION = "exception"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    INFORMATIONAL = "informational"


def operation_outcome(
    diagnostics: str,
    *,
    severity: IssueSeverity = IssueSeverity.ERROR,
    code: IssueType = IssueType.PROCESSING,
    expression: list[str] | None = None,
) -> dict[str, Any]:
    """An OperationOutcome resource with one issue."""
    issue: dict[str, Any] = {"severity": str(severity), "code": str(code), "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirError(Exception):
    """Base of every error that becomes an OperationOutcome response."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    issue_type: IssueType = IssueType.PROCESSING

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}
        self._outcome = outcome

    def to_outcome(self) -> dict[str, Any]:
        if self._outcome is not None:
            return self._outcome
        return operation_outcome(self.diagnostics, code=self.issue_type, expression=self.expression)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int(self.status)}, {self.diagnostics!r})"


class InvalidRequest(FhirError):
    status = HTTPStatus.BAD_REQUEST
    issue_type = IssueType.INVALID


class AuthenticationRequired(FhirError):
    status = HTTPStatus.UNAUTHORIZED
    issue_type = IssueType.LOGIN


class Forbidden(FhirError):
    status = HTTPStatus.FORBIDDEN
    issue_type = IssueType.FORBIDDEN


class ResourceNotFound(FhirError):
    status = HTTPStatus.NOT_FOUND
    issue_type = IssueType.NOT_FOUND


class MethodNotAllowed(FhirError):
    status = HTTPStatus.METHOD_NOT_ALLOWED
    issue_type = IssueType.NOT_SUPPORTED


class VersionConflict(FhirError):
    status = HTTPStatus.CONFLICT
    issue_type = IssueType.CONFLICT


class ResourceGone(FhirError):
    status = HTTPStatus.GONE
    issue_type = IssueType.DELETED


class PreconditionFailed(FhirError):
    status = HTTPStatus.PRECONDITION_FAILED
    issue_type = IssueType.DUPLICATE


class PayloadTooLarge(FhirError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    issue_type = IssueType.TOO_LONG


class TransactionTooLarge(FhirError):
    """A transaction Bundle with more entries than this server takes in one atomic write."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    issue_type = IssueType.TOO_COSTLY


class UnsupportedMediaType(FhirError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    issue_type = IssueType.NOT_SUPPORTED


class Unprocessable(FhirError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    issue_type = IssueType.BUSINESS_RULE


def delete_conflict(rtype: str, rid: str, ref_type: str, ref_id: str, param: str) -> VersionConflict:
    """409: another resource refers to ``rtype/rid`` (a delete, or ``$validate`` mode delete)."""
    return VersionConflict(
        f"HAPI-0550: Unable to delete {rtype}/{rid} because at least one resource has a reference to "
        f"this resource. First reference found was resource {ref_type}/{ref_id} in path {ref_type}.{param}"
    )


_BY_STATUS: dict[int, type[FhirError]] = {
    int(cls.status): cls
    for cls in (
        InvalidRequest,
        AuthenticationRequired,
        Forbidden,
        ResourceNotFound,
        MethodNotAllowed,
        VersionConflict,
        ResourceGone,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
    )
}


def error_for_status(status: int, diagnostics: str, outcome: dict[str, Any] | None = None) -> FhirError:
    """The typed error for an HTTP status a FHIR server answered (used by the HTTP client)."""
    cls = _BY_STATUS.get(status, FhirError)
    err = cls(diagnostics, outcome=outcome)
    if cls is FhirError:
        try:
            err.status = HTTPStatus(status)
        except ValueError:  # not an HTTP status we know: the upstream answered nonsense
            err.status = HTTPStatus.BAD_GATEWAY
    return err
