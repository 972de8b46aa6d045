"""Lenient validation, as HAPI's parser does it (HAPI's LenientErrorHandler, no profile validation).

The R4B models of ``fhir.resources`` find the errors; we then act like HAPI's LenientErrorHandler:
missing required elements are accepted; unknown elements and complex elements of the wrong JSON
shape are dropped; an object where an array belongs is wrapped and an array of one where a single
value belongs is unwrapped; a malformed primitive (date, boolean, number…) or an invalid code of a
required binding (gender, status, intent…) is a 400 naming the element. The stored resource is the
client's JSON with those repairs, not a model dump (keeps the client's key order, and is cheaper).
Cost: ~80-130 µs per small resource (measured), paid on every write including Bundles.

The one speed device here, ``_KnownValid``: a single follow-up's ServiceRequest spent ~200 µs of
``serve``'s CPU in the model (10% of the follow-up's CPU in-process: colder caches than the ~85 µs
of a loop over the same body). A client's ServiceRequests differ mostly in the patient and
requester references and their identifiers' values, and the model's verdict does not depend on
those strings' content (a FHIR string with any printable character is valid): a resource whose
other elements equal those of one the model passed cleanly passes too, and skips it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from cht_interop.fhir.errors import InvalidRequest
from cht_interop.fhir.registry import RESOURCE_TYPES, walk
from cht_interop.kit.json_body import MAX_JSON_DEPTH, nesting_exceeds

_MAX_PASSES = 4
# pydantic error types that mean "a primitive has a bad value": never repaired, always a 400
_PRIMITIVE_TYPES = {
    "string_type",
    "bool_parsing",
    "bool_type",
    "int_parsing",
    "int_type",
    "float_parsing",
    "float_type",
    "decimal_parsing",
    "decimal_type",
    "value_error",
    "string_pattern_mismatch",
    "date_from_datetime_inexact",
    "date_parsing",
    "datetime_parsing",
    "date_type",
    "datetime_type",
    "int_from_float",
    "url_parsing",
    "url_type",
    "string_too_short",
}


# error types that mean "a complex element has the wrong JSON shape"
_SHAPE_TYPES = {
    "json_invalid",
    "json_type",
    "model_type",
    "dict_type",
    "model_attributes_type",
    "is_instance_of",
    "dataclass_type",
}


# What the R4B models raise, besides ValidationError, on some input of the wrong JSON type (a
# contained resource of an unknown type: KeyError 'R4.<name>Type'; a number where a url belongs:
# AttributeError): the client's input, never our fault, so a 400 and not a 500.
_PARSER_FAILURES = (KeyError, TypeError, AttributeError, ValueError, RecursionError)


@lru_cache(maxsize=64)
def _model(resource_type: str) -> type[BaseModel]:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def load_models() -> None:
    """Import now the R4B models of every type this server stores, before the first request.

    Imported lazily, each type's model (ServiceRequest's: 74 ms on a fast box, with the package's
    base) held the event loop during the first request that wrote one, with every request in
    flight behind it; and, imported after the startup heap was frozen (``runner``), its thousands
    of objects stayed in the cyclic collector's reach for good. Called while the app is built:
    ~0.1 s and ~7 MiB once per process, all of which its first requests paid before."""
    for name in RESOURCE_TYPES:
        _model(name)


@lru_cache(maxsize=256)
def _is_r4_type(name: str) -> bool:
    """A resource type the R4B models know (a contained resource may be of any, not only ours)."""
    try:
        _model(name)
    except (ValueError, KeyError):
        return False
    return True


# a string holding one of these is a valid FHIR ``string`` whatever else it holds (the model's
# pattern is ``[ \r\n\t\S]+``; printable ASCII is ``\S`` in every regex engine)
_PRINTABLE = re.compile(r"[!-~]")
_PLACEHOLDER = "x"


class _KnownValid:
    """Resources the model passed cleanly, with their ``string`` elements that vary from one
    request to the next (``STRING_PATHS``) set to a placeholder: another resource equal to one of
    them once its own are set likewise passes the model too (its verdict does not depend on a
    string's content beyond ``_PRINTABLE``), so it need not be run. Only clean passes are kept, so
    repairs and 400s are the model's as before. Bounded: cleared when full."""

    # resource type -> (Reference-typed elements, whose ``reference`` varies; Identifier lists,
    # whose ``value`` varies); each path's type in the R4B model is checked by a test
    STRING_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        "ServiceRequest": (("subject", "requester"), ("identifier",)),
    }
    MAX_KEPT = 256

    def __init__(self) -> None:
        self._kept: set[bytes] = set()

    def key(self, resource: dict[str, Any], rtype: str) -> bytes | None:
        """The resource with its varying strings set to the placeholder, as sorted JSON; None for a
        type without ``STRING_PATHS`` (or that fails to serialise: the model will say why)."""
        paths = self.STRING_PATHS.get(rtype)
        if paths is None:
            return None
        references, identifiers = paths
        shown = dict(resource)
        for name in references:
            ref = shown.get(name)
            if isinstance(ref, dict) and _varying(ref.get("reference")):
                shown[name] = {**ref, "reference": _PLACEHOLDER}
        for name in identifiers:
            items = shown.get(name)
            if isinstance(items, list):
                shown[name] = [
                    {**i, "value": _PLACEHOLDER} if isinstance(i, dict) and _varying(i.get("value")) else i
                    for i in items
                ]
        try:
            return orjson.dumps(shown, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            return None

    def passed(self, key: bytes | None) -> bool:
        return key is not None and key in self._kept

    def keep(self, key: bytes | None) -> None:
        if key is None:
            return
        if len(self._kept) >= self.MAX_KEPT:
            self._kept.clear()
        self._kept.add(key)


def _varying(value: Any) -> bool:
    return isinstance(value, str) and _PRINTABLE.search(value) is not None


_KNOWN_VALID = _KnownValid()


def _unparseable(rtype: str, exc: Exception) -> InvalidRequest:
    detail = "nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
    return InvalidRequest(
        "HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1861: Failed to "
        f"parse JSON encoded FHIR content: {rtype}: an element has a value of the wrong JSON type "
        f"({_short(detail)})"
    )


def _check_shape(resource: dict[str, Any], rtype: str) -> None:
    """What the models cannot be trusted with: nesting beyond the server's limit, and contained
    resources that are no resource (the models look their type up and fail with a KeyError)."""
    if nesting_exceeds(resource, MAX_JSON_DEPTH):
        raise InvalidRequest(
            f"HAPI-0450: Failed to parse request body as JSON resource. Error was: {rtype} nests "
            f"objects and arrays deeper than {MAX_JSON_DEPTH} levels (the server's limit)"
        )
    contained = resource.get("contained")
    if contained is None:
        return
    items = contained if isinstance(contained, list) else [contained]
    for i, item in enumerate(items):
        ctype = item.get("resourceType") if isinstance(item, dict) else None
        if not isinstance(ctype, str) or not _is_r4_type(ctype):
            where = f"{rtype}.contained[{i}]"
            raise InvalidRequest(
                f"HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1838: "
                f'[element="{where}"] a contained resource needs the resourceType of an R4 resource, '
                f'not "{_short(ctype)}"',
                expression=[where],
            )


def expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    """A FHIRPath-like location: ``Patient.name[0].given``."""
    out = resource_type
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def check_resource(resource: Any, expected_type: str | None = None) -> dict[str, Any]:
    """Validate and repair ``resource`` in place (lenient, HAPI-like); return it, or raise 400."""
    if not isinstance(resource, dict):
        raise InvalidRequest("HAPI-1838: Invalid JSON content detected: the body is not a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InvalidRequest(
            "HAPI-1838: Invalid JSON content detected, missing required element: 'resourceType'",
            expression=["resourceType"],
        )
    if expected_type is not None and rtype != expected_type:
        raise InvalidRequest(
            f"HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1843: Incorrect "
            f'resource type found, expected "{expected_type}" but found "{rtype}"',
            expression=["resourceType"],
        )
    rt = RESOURCE_TYPES.get(rtype)
    if rt is None:
        raise InvalidRequest(f'HAPI-1684: Unknown resource name "{rtype}"', expression=["resourceType"])
    meta = resource.get("meta")
    if isinstance(meta, dict):  # server-owned; a client value must not fail validation
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
    elif meta is not None:
        resource.pop("meta")
    _check_shape(resource, rtype)
    model = _model(rtype)
    known = _KNOWN_VALID.key(resource, rtype)
    for attempt in range(0 if _KNOWN_VALID.passed(known) else _MAX_PASSES):
        try:
            model.model_validate(resource)
            if attempt == 0:
                _KNOWN_VALID.keep(known)
            break
        except ValidationError as exc:
            if not _repair(resource, rtype, exc.errors()):
                break
        except _PARSER_FAILURES as exc:
            raise _unparseable(rtype, exc) from None
    _check_codes(resource, rtype, rt.codes)
    return resource


def _repair(resource: dict[str, Any], rtype: str, errors: list[Any]) -> bool:
    """Apply HAPI's lenient repairs; raise on a bad primitive; True if anything changed."""
    changed = False
    # deepest first, so removing one element does not shift the indexes of another error
    for err in sorted(errors, key=lambda e: len(e["loc"]), reverse=True):
        kind: str = err["type"]
        loc: tuple[Any, ...] = tuple(err["loc"])
        if "missing" in kind or not loc:
            continue  # cardinality is never enforced
        parent, key = _locate(resource, loc)
        if parent is None:
            continue
        value = parent[key]
        if kind == "extra_forbidden" or value == "":
            # unknown elements and empty strings: HAPI's parser ignores them (an empty value is absent)
            _remove(parent, key)
            changed = True
        elif kind == "list_type" and not isinstance(value, list):
            parent[key] = [value]
            changed = True
        elif isinstance(value, list) and len(value) == 1 and kind != "list_type":
            parent[key] = value[0]
            changed = True
        elif kind in _SHAPE_TYPES or (kind not in _PRIMITIVE_TYPES and isinstance(value, dict | list)):
            # a complex element with the wrong JSON shape: HAPI leaves it empty, so it is not stored
            _remove(parent, key)
            changed = True
        else:
            where = expression(rtype, loc)
            raise InvalidRequest(
                f"HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1821: "
                f'[element="{where}"] Invalid attribute value "{_short(value)}": {err["msg"]}',
                expression=[where],
            )
    return changed


def _locate(root: Any, loc: tuple[Any, ...]) -> tuple[Any, Any]:
    node = root
    for step in loc[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None, None
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        return node, last
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        return node, last
    return None, None


def _remove(parent: Any, key: Any) -> None:
    if isinstance(parent, dict):
        parent.pop(key, None)
    else:
        parent.pop(key)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_codes(resource: dict[str, Any], rtype: str, codes: dict[str, frozenset[str]]) -> None:
    for path, allowed in codes.items():
        for value in walk(resource, path):
            if not isinstance(value, str) or value not in allowed:
                where = f"{rtype}.{path}"
                raise InvalidRequest(
                    f"HAPI-0450: Failed to parse request body as JSON resource. Error was: HAPI-1821: "
                    f'[element="{path.rsplit(".", 1)[-1]}"] Invalid attribute value "{_short(value)}": '
                    f'Unknown {where} code "{_short(value)}"',
                    expression=[where],
                )


# --- $validate: strict, every issue reported ------------------------------------------------------

_ISSUE_CODES = {"missing": "required", "extra_forbidden": "structure", "list_type": "structure"}


def validation_issues(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem the R4B model and our required-binding codes find in ``resource``, as
    OperationOutcome issues (severity error, a FHIRPath-like expression), nothing repaired.

    Stricter than :func:`check_resource` (the lenient parser of writes), as HAPI's ``$validate``
    runs its instance validator where a write only parses: a missing mandatory element, an unknown
    element or a wrong JSON shape is an error here though a create would accept (and repair) it.
    ``resource`` has a known ``resourceType`` (check it first)."""
    rtype = str(resource["resourceType"])
    body = dict(resource)
    meta = body.get("meta")
    if isinstance(meta, dict):  # server-owned, not the client's to get right
        body["meta"] = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    issues: list[dict[str, Any]] = []
    try:
        _check_shape(body, rtype)
        _model(rtype).model_validate(body)
    except InvalidRequest as exc:
        issues.append(_issue("structure", exc.diagnostics, (exc.expression or [rtype])[0]))
    except ValidationError as exc:
        for err in exc.errors():
            kind = str(err["type"])
            code = next((c for k, c in _ISSUE_CODES.items() if k in kind), "value")
            where = expression(rtype, tuple(err["loc"]))
            issues.append(_issue(code, f"{where}: {err['msg']}", where))
    except _PARSER_FAILURES as exc:
        issues.append(_issue("structure", _unparseable(rtype, exc).diagnostics, rtype))
    for path, allowed in RESOURCE_TYPES[rtype].codes.items():
        for value in walk(resource, path):
            if not isinstance(value, str) or value not in allowed:
                where = f"{rtype}.{path}"
                issues.append(_issue("code-invalid", f'Unknown {where} code "{_short(value)}"', where))
    return issues


def _issue(code: str, diagnostics: str, where: str) -> dict[str, Any]:
    return {"severity": "error", "code": code, "diagnostics": diagnostics, "expression": [where]}
