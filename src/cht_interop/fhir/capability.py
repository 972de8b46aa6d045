"""The CapabilityStatement, generated from the same registry that drives routes and search."""

from __future__ import annotations

from typing import Any

from cht_interop import __version__
from cht_interop.fhir.datetimes import format_instant, now_us
from cht_interop.fhir.registry import RESOURCE_TYPES

_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "create", "search-type"]


def capability_statement(base_url: str) -> dict[str, Any]:
    resources = []
    for rt in RESOURCE_TYPES.values():
        params = [
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
            *(
                {"name": p.name, "type": "token" if p.type == "uri" else str(p.type)}
                | ({"documentation": p.description} if p.description else {})
                for p in rt.params.values()
            ),
        ]
        resources.append(
            {
                "type": rt.name,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{rt.name}",
                "interaction": [{"code": code} for code in _INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical", "enforced"],
                "searchInclude": [f"{rt.name}:{p.name}" for p in rt.params.values() if p.type == "reference"],
                "searchRevInclude": [
                    f"{other.name}:{p.name}"
                    for other in RESOURCE_TYPES.values()
                    for p in other.params.values()
                    if p.type == "reference" and (not p.targets or rt.name in p.targets)
                ],
                "searchParam": params,
            }
        )
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
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
