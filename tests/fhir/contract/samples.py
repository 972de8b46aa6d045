"""One small, valid resource of every registered type, for contract tests that exercise each type.

``sample(rtype, tag, refs)``: ``tag`` goes into the identifier (searchable, unique to a test);
``refs`` gives the ids of already created resources a type must point at (a ServiceRequest's
subject is a Patient). Every sample passes ``$validate`` (the tests check it).
"""

from __future__ import annotations

from typing import Any

SYSTEM = "urn:cht-interop:contract"
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">sample</div>'


def identifier(tag: str) -> str:
    return f"{SYSTEM}|{tag}"


def sample(rtype: str, tag: str, refs: dict[str, str] | None = None) -> dict[str, Any]:
    refs = refs or {}
    patient = {"reference": f"Patient/{refs['Patient']}"} if "Patient" in refs else None
    body: dict[str, Any] = {
        "Patient": {"name": [{"family": f"Fam-{tag}", "given": ["Ann"]}], "gender": "female"},
        "Practitioner": {"name": [{"family": f"Doc-{tag}"}]},
        "Organization": {"name": f"Org {tag}", "active": True},
        "Endpoint": {
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "hl7-fhir-rest",
            },
            "payloadType": [{"text": "FHIR"}],
            "address": "http://127.0.0.1:9/fhir",
        },
        "ServiceRequest": {"status": "active", "intent": "order", "subject": patient},
        "Task": {"status": "requested", "intent": "order"},
        "Encounter": {"status": "finished", "class": {"code": "AMB"}},
        "Observation": {"status": "final", "code": {"text": f"obs {tag}"}},
        "Subscription": {
            "status": "off",
            "reason": "contract test",
            "criteria": f"Patient?identifier={identifier(tag)}",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"},
        },
    }[rtype]
    if body.get("subject", "") is None:
        raise ValueError(f"{rtype} needs refs['Patient']")
    out: dict[str, Any] = {"resourceType": rtype, "text": {"status": "generated", "div": XHTML}, **body}
    if rtype != "Subscription":  # the one R4 type here without an identifier element
        out["identifier"] = [{"system": SYSTEM, "value": tag}]
    return out
