"""The CapabilityStatement (``GET /fhir/metadata``): what the server supports, built from
:data:`SUPPORTED` (the one table of interactions, conditional modes and operations) and the
registry that drives routes and search (types, search parameters, _include / _revinclude).

Claim only what works: ``tests/fhir/contract/test_capability.py`` reads the statement and performs
every claimed interaction against a live server, and checks a sample of unclaimed ones is refused
cleanly. Adding a line here means adding a way to exercise it there (its ``EXERCISE`` table).
"""

from __future__ import annotations

from typing import Any

from cht_interop import __version__
from cht_interop.fhir.datetimes import format_instant, now_us
from cht_interop.fhir.registry import RESOURCE_TYPES, ResourceType

# The one table of what the server supports (FHIR R4 CapabilityStatement.rest codes).
SUPPORTED: dict[str, Any] = {
    # per resource type (rest.resource.interaction)
    "type": (
        "read",
        "vread",
        "update",
        "patch",  # JSON Patch and FHIRPath Patch (simple paths); conditional; in Bundles too
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ),
    # whole system (rest.interaction)
    "system": (
        "transaction",
        "batch",
        "history-system",
    ),
    # per resource type: the conditional interactions and their modes
    "conditionalCreate": True,  # POST with If-None-Exist
    "conditionalUpdate": True,  # PUT [type]?params
    "conditionalDelete": "single",  # DELETE [type]?params, one match at most (412 on several)
    "conditionalRead": "full-support",  # If-None-Match and If-Modified-Since → 304 (read, vread)
    # operations (rest.resource.operation): name → its OperationDefinition
    "operation": {
        "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    },
}


def _resource(rt: ResourceType) -> dict[str, Any]:
    params = [
        {"name": "_id", "type": "token"},
        {"name": "_lastUpdated", "type": "date"},
        *(
            {"name": p.name, "type": "token" if p.type == "uri" else str(p.type)}
            | ({"documentation": p.description} if p.description else {})
            for p in rt.params.values()
        ),
    ]
    return {
        "type": rt.name,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rt.name}",
        "interaction": [{"code": code} for code in SUPPORTED["type"]],
        "versioning": "versioned-update",
        "readHistory": "vread" in SUPPORTED["type"],
        "updateCreate": "update" in SUPPORTED["type"],
        "conditionalCreate": SUPPORTED["conditionalCreate"],
        "conditionalRead": SUPPORTED["conditionalRead"],
        "conditionalUpdate": SUPPORTED["conditionalUpdate"],
        "conditionalDelete": SUPPORTED["conditionalDelete"],
        "referencePolicy": ["literal", "logical", "enforced"],
        "searchInclude": [f"{rt.name}:{p.name}" for p in rt.params.values() if p.type == "reference"],
        "searchRevInclude": [
            f"{other.name}:{p.name}"
            for other in RESOURCE_TYPES.values()
            for p in other.params.values()
            if p.type == "reference" and (not p.targets or rt.name in p.targets)
        ],
        "searchParam": params,
        "operation": [{"name": name, "definition": url} for name, url in SUPPORTED["operation"].items()],
    }


def capability_statement(base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(now_us()),
        "publisher": "cht-interop",
        "kind": "instance",
        "software": {"name": "cht-interop embedded FHIR store", "version": __version__},
        "implementation": {"description": "cht-interop embedded FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "resource": [_resource(rt) for rt in RESOURCE_TYPES.values()],
                "interaction": [{"code": code} for code in SUPPORTED["system"]],
            }
        ],
    }
