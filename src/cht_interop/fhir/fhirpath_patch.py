"""FHIRPath Patch (FHIR R4 fhirpatch.html): a ``Parameters`` resource whose ``operation``
parameters add, insert, delete, replace or move elements, applied to a resource's JSON.

Only simple paths are understood: the resource type, then element names, each optionally with an
index (``Patient.name[0].given``); a path with a FHIRPath function (``where(...)``, ``first()``)
is refused with a 400 ``not-supported``. Whether an element repeats (a JSON array) comes from the
R4B models of ``fhir.resources``, the ones ``validation`` checks resources with. Semantics as the
specification gives them (and HAPI's ``FhirPatch``): ``add`` puts ``name`` under the one element
``path`` selects (appended when the element repeats); ``insert`` / ``move`` work on a list by
index; ``delete`` of nothing is no error; ``replace`` needs the element to exist. A ``value`` made
of ``part``s (an anonymous backbone element) is not supported.
"""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from cht_interop.fhir.errors import InvalidRequest, IssueType

_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_TYPE_NAME = re.compile(r"(\w+?)Type\b")


class NotSupported(InvalidRequest):
    """A FHIRPath Patch this server does not apply (a FHIRPath function, a ``part`` value)."""

    issue_type = IssueType.NOT_SUPPORTED


@dataclass(frozen=True, slots=True)
class Operation:
    type: str
    path: str
    name: str | None = None
    value: Any = None
    has_value: bool = False
    index: int | None = None
    source: int | None = None
    destination: int | None = None


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid FHIRPath Patch: {message}")


def parse(parameters: Any) -> list[Operation]:
    """The operations of a FHIRPath Patch ``Parameters`` resource (400 when it is malformed)."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise _bad("the body must be a Parameters resource")
    ops: list[Operation] = []
    params = parameters.get("parameter") or []
    if not isinstance(params, list):
        raise _bad("parameter must be an array")
    for n, param in enumerate(params):
        if not isinstance(param, dict) or param.get("name") != "operation":
            raise _bad(f"parameter {n} is not named 'operation'")
        fields: dict[str, Any] = {}
        parts = param.get("part") or []
        if not isinstance(parts, list):
            raise _bad(f"operation {n} has parts that are no array")
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("name"), str):
                raise _bad(f"operation {n} has a part without a name")
            values = [k for k in part if k.startswith("value")]
            if part["name"] == "value":
                if "part" in part:
                    raise NotSupported("FHIRPath Patch: a value made of parts is not supported")
                if len(values) != 1:
                    raise _bad(f"operation {n} has a value part without one value[x]")
                fields["value"] = part[values[0]]
                fields["has_value"] = True
            elif len(values) == 1:
                fields[part["name"]] = part[values[0]]
        kind = fields.get("type")
        if not isinstance(kind, str) or kind not in {"add", "insert", "delete", "replace", "move"}:
            raise _bad(f"operation {n} has an unknown type {kind!r}")
        if "name" in fields and not isinstance(fields["name"], str):
            raise _bad(f"operation {n} has a name that is no string")
        for key in ("index", "source", "destination"):  # a JSON true is no index
            if key in fields and (not isinstance(fields[key], int) or isinstance(fields[key], bool)):
                raise _bad(f"operation {n} has a {key} that is no integer")
        if not isinstance(fields.get("path"), str):
            raise _bad(f"operation {n} has no path")
        needed = {
            "add": ("name", "value"),
            "insert": ("index", "value"),
            "replace": ("value",),
            "move": ("source", "destination"),
        }.get(kind, ())
        missing = [k for k in needed if k not in fields]
        if missing:
            raise _bad(f"operation {n} ({kind}) has no {', '.join(missing)}")
        known = {
            k: fields[k]
            for k in ("name", "value", "has_value", "index", "source", "destination")
            if k in fields
        }
        ops.append(Operation(type=kind, path=fields["path"], **known))
    if not ops:
        raise _bad("no operation")
    return ops


@lru_cache(maxsize=256)
def _model(type_name: str) -> type[BaseModel] | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(type_name)
    except (KeyError, ValueError):
        return None


def _child(model: type[BaseModel] | None, name: str) -> tuple[bool, type[BaseModel] | None]:
    """Whether element ``name`` of ``model`` repeats, and its model (None for a primitive)."""
    if model is None:
        raise _bad(f"'{name}' is below a primitive element")
    field = model.model_fields.get(name)
    if field is None or name.endswith("__ext"):
        raise _bad(f"unknown element '{name}' in {model.__name__}")
    text = str(field.annotation)
    found = _TYPE_NAME.findall(text.rsplit(".", 1)[-1]) or _TYPE_NAME.findall(text)
    return "List[" in text or "list[" in text, _model(found[-1]) if found else None


@dataclass(slots=True)
class _Target:
    parent: dict[str, Any]  # the object holding the element
    name: str
    index: int | None  # the list position, for a repeating element named with an index
    repeats: bool
    model: type[BaseModel] | None

    def get(self) -> Any:
        value = self.parent.get(self.name)
        if self.index is None:
            return value
        if not isinstance(value, list) or self.index >= len(value):
            return None
        return value[self.index]


def _resolve(
    resource: dict[str, Any], path: str
) -> tuple[dict[str, Any], type[BaseModel] | None, _Target | None]:
    """Walk ``path``: the last step's target (None for the resource itself) and the object and
    model it sits in."""
    steps = path.split(".")
    if not all(_STEP.match(step) for step in steps):
        raise NotSupported(
            f"FHIRPath Patch: only simple paths (names and [index]) are supported, not '{path}'"
        )
    if steps[0] != resource.get("resourceType"):
        raise _bad(f"path '{path}' does not start with {resource.get('resourceType')}")
    node: dict[str, Any] = resource
    model = _model(str(resource["resourceType"]))
    target: _Target | None = None
    for n, step in enumerate(steps[1:]):
        m = _STEP.match(step)
        assert m is not None
        name, index = m.group(1), (int(m.group(2)) if m.group(2) is not None else None)
        repeats, child_model = _child(model, name)
        target = _Target(node, name, index if repeats else None, repeats, child_model)
        if index is not None and not repeats and index != 0:
            raise _bad(f"'{name}' does not repeat: index {index} in '{path}'")
        if n == len(steps) - 2:
            break
        value = target.get()
        if repeats and target.index is None:
            if not isinstance(value, list) or len(value) != 1:
                raise _bad(f"'{path}' does not select one element ('{name}' has {len(value or [])})")
            value = value[0]
        if not isinstance(value, dict):
            raise _bad(f"no element at '{'.'.join(steps[: n + 2])}'")
        node, model = value, child_model
    return node, model, target


def _apply_one(resource: dict[str, Any], op: Operation) -> None:
    node, model, target = _resolve(resource, op.path)
    if op.type == "add":
        assert op.name is not None
        container = target.get() if target is not None else node
        if target is not None:
            if target.repeats and target.index is None:
                items = container if isinstance(container, list) else []
                if len(items) != 1:
                    raise _bad(f"'{op.path}' does not select one element")
                container = items[0]
            model = target.model
        if not isinstance(container, dict):
            raise _bad(f"no element at '{op.path}' to add '{op.name}' to")
        repeats, _m = _child(model, op.name)
        if repeats:
            container.setdefault(op.name, []).append(op.value)
        elif op.name in container:
            raise _bad(f"'{op.path}.{op.name}' already has a value; use replace")
        else:
            container[op.name] = op.value
        return
    if target is None:
        raise _bad(f"{op.type} cannot apply to the whole resource")
    if op.type in {"insert", "move"}:
        if not target.repeats or target.index is not None:
            raise _bad(f"{op.type} needs a repeating element, not '{op.path}'")
        items = target.parent.setdefault(target.name, []) if op.type == "insert" else target.get()
        if not isinstance(items, list):
            raise _bad(f"no list at '{op.path}'")
        if op.type == "insert":
            if not isinstance(op.index, int) or not 0 <= op.index <= len(items):
                raise _bad(f"insert index {op.index} is out of range at '{op.path}'")
            items.insert(op.index, op.value)
            return
        for i in (op.source, op.destination):
            if not isinstance(i, int) or not 0 <= i < len(items):
                raise _bad(f"move index {i} is out of range at '{op.path}'")
        assert op.source is not None and op.destination is not None
        items.insert(op.destination, items.pop(op.source))
        return
    current = target.get()
    if op.type == "delete":
        if current is None:
            return
        if target.index is not None:
            del target.parent[target.name][target.index]
            if not target.parent[target.name]:
                del target.parent[target.name]
        elif target.repeats and isinstance(current, list) and len(current) > 1:
            raise _bad(f"'{op.path}' selects {len(current)} elements; delete one at a time")
        else:
            del target.parent[target.name]
        return
    # replace
    if current is None:
        raise _bad(f"no element at '{op.path}' to replace")
    if target.index is not None:
        target.parent[target.name][target.index] = op.value
    elif target.repeats:
        if not isinstance(current, list) or len(current) != 1:
            raise _bad(f"'{op.path}' does not select one element")
        target.parent[target.name] = [op.value]
    else:
        target.parent[target.name] = op.value


def apply(resource: dict[str, Any], ops: typing.Sequence[Operation]) -> dict[str, Any]:
    """The patched copy of ``resource``; the original is left as it was."""
    out = copy.deepcopy(resource)
    for op in ops:
        _apply_one(out, op)
    return out


__all__ = ["NotSupported", "Operation", "apply", "parse"]
