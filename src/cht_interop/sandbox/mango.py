"""A small Mango (``_find``) evaluator: equality, ``$eq``/``$ne``, ``$in``/``$nin``, ``$exists``,
comparisons, ``$and``/``$or``/``$not``; dotted field paths. Unknown operators are rejected as
CouchDB rejects them."""

from __future__ import annotations

from typing import Any

from cht_interop.sandbox.store import StoreError

_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", "$gt", "$gte", "$lt", "$lte"}
_COMBINATORS = {"$and", "$or", "$nor", "$not"}
_MISSING = object()


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def validate_selector(selector: dict[str, Any]) -> None:
    for key, value in selector.items():
        if key.startswith("$"):
            if key not in _COMBINATORS:
                raise StoreError(400, "invalid_operator", f"Invalid operator: {key}")
            if key in ("$and", "$or", "$nor"):
                if not isinstance(value, list):
                    raise StoreError(400, "bad_arg", f"{key} operator requires an array argument")
                for sub in value:
                    if isinstance(sub, dict):
                        validate_selector(sub)
            elif isinstance(value, dict):
                validate_selector(value)
        elif isinstance(value, dict):
            for op, arg in value.items():
                if op.startswith("$"):
                    if op not in _FIELD_OPS:
                        raise StoreError(400, "invalid_operator", f"Invalid operator: {op}")
                    if op in ("$in", "$nin") and not isinstance(arg, list):
                        raise StoreError(400, "bad_arg", f"{op} operator requires an array argument")
                    if op == "$exists" and not isinstance(arg, bool):
                        raise StoreError(400, "bad_arg", "Bad argument for operator $exists")


def _compare(value: Any, op: str, arg: Any) -> bool:
    if op == "$exists":
        return (value is not _MISSING) is bool(arg)
    if value is _MISSING:
        return op == "$ne" or op == "$nin"
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op == "$in":
        return value in arg
    if op == "$nin":
        return value not in arg
    try:
        if op == "$gt":
            return bool(value > arg)
        if op == "$gte":
            return bool(value >= arg)
        if op == "$lt":
            return bool(value < arg)
        if op == "$lte":
            return bool(value <= arg)
    except TypeError:
        return False
    return False


def _match_value(value: Any, condition: Any) -> bool:
    if isinstance(condition, dict) and condition and all(k.startswith("$") for k in condition):
        return all(_compare(value, op, arg) for op, arg in condition.items())
    if isinstance(condition, dict) and isinstance(value, dict):
        return all(_match_value(_get(value, k), v) for k, v in condition.items())
    return value is not _MISSING and bool(value == condition)


def matches(doc: dict[str, Any], selector: dict[str, Any]) -> bool:
    for key, condition in selector.items():
        if key == "$and":
            ok = all(matches(doc, s) for s in condition)
        elif key == "$or":
            ok = any(matches(doc, s) for s in condition)
        elif key == "$nor":
            ok = not any(matches(doc, s) for s in condition)
        elif key == "$not":
            ok = not matches(doc, condition)
        else:
            ok = _match_value(_get(doc, key), condition)
        if not ok:
            return False
    return True


def project(doc: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in fields:
        value = _get(doc, path)
        if value is _MISSING:
            continue
        cur = out
        parts = path.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return out
