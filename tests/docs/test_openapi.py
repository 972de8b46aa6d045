"""/openapi.json and /docs as a developer uses them: behind the API's login, readable offline, and
every documented example valid against its schema and accepted by the real server with the status
the document gives it (``x-expected-status``); every answer checked against its documented schema."""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import httpx
from jsonschema import Draft202012Validator

FHIR_JSON = "application/fhir+json"


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    res = await client.get("/openapi.json")
    assert res.status_code == 200, res.text
    document: dict[str, Any] = res.json()
    return document


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) whose ``#/components`` refs resolve."""
    root = {**schema, "components": document["components"]}
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


def _errors(document: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in _validator(document, schema).iter_errors(value)]


class Checker:
    """Posts documented examples and checks each answer against the document."""

    def __init__(self, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.used: set[tuple[str, str]] = set()

    def operation(self, method: str, path: str) -> dict[str, Any]:
        operation: dict[str, Any] = self.document["paths"][path][method]
        return operation

    def example(self, method: str, path: str, name: str) -> tuple[dict[str, Any], int]:
        body = self.operation(method, path)["requestBody"]["content"][FHIR_JSON]
        example = body["examples"][name]
        value = copy.deepcopy(example["value"])
        problems = _errors(self.document, body["schema"], value)
        assert not problems, f"{method} {path} example {name}: {problems}"
        self.used.add((path, name))
        return value, int(example["x-expected-status"])

    async def send(
        self, method: str, path: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        res = await self.client.request(
            method, url, json=body, headers={"Content-Type": FHIR_JSON, **(headers or {})}
        )
        self.check_answer(method, path, res)
        return res

    def check_answer(self, method: str, path: str, res: httpx.Response) -> None:
        answers = self.operation(method, path)["responses"]
        assert str(res.status_code) in answers, f"{method} {url_of(res)}: {res.status_code} is not documented"
        content = answers[str(res.status_code)]["content"]
        schema = next(iter(content.values()))["schema"]
        problems = _errors(self.document, schema, res.json())
        assert not problems, f"{method} {url_of(res)} {res.status_code} answer: {problems}\n{res.text}"

    async def post_example(
        self, path: str, name: str, url: str | None = None, **change: Any
    ) -> httpx.Response:
        value, expected = self.example("post", path, name)
        value.update(change)
        res = await self.send("post", path, url or path, value)
        assert res.status_code == expected, f"{path} example {name}: {res.status_code} {res.text}"
        return res


def url_of(res: httpx.Response) -> str:
    return str(res.request.url)


def _id_from_location(location: str, rtype: str) -> str:
    match = re.search(rf"(?:^|/){rtype}/([^/]+)", location)
    assert match, location
    return match.group(1)


async def test_docs_and_the_document_need_the_api_login(anonymous: httpx.AsyncClient) -> None:
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
        res = await anonymous.get(path)
        assert res.status_code == 401, path
        assert res.headers["www-authenticate"].startswith("Basic"), path
        assert res.json()["resourceType"] == "OperationOutcome"
    assert (await anonymous.get("/docs", auth=("interop-client", "wrong"))).status_code == 401


async def test_the_docs_page_loads_everything_from_this_server(client: httpx.AsyncClient) -> None:
    """No CDN: every script, stylesheet and icon the page names is served here (an offline site works)."""
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "https://" not in page.text and "http://" not in page.text, "the page names an outside address"
    assert '"validatorUrl": null' in page.text  # no call to Swagger's online validator
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for asset in assets:
        res = await client.get(asset)
        assert res.status_code == 200, asset
        assert len(res.content) > 500, asset
    script = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in script.text
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    escaped = await client.get("/docs/assets/../../etc/passwd")  # the path is /etc/passwd by then
    assert escaped.status_code in (403, 404) and "root:" not in escaped.text
    assert (await client.get("/docs/assets/index.html")).status_code == 404


async def test_the_document_links_the_fhir_capability_statement(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    assert document["openapi"].startswith("3.1")
    assert "http://test/fhir/metadata" in document["info"]["description"]
    assert document["servers"] == [{"url": "http://test"}]
    metadata = await client.get("/fhir/metadata")
    assert metadata.status_code == 200 and metadata.json()["resourceType"] == "CapabilityStatement"
    assert not [p for p in document["paths"] if p.startswith("/fhir")]


async def test_every_mediator_route_documents_its_answers(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    mediator = {p: item for p, item in document["paths"].items() if p.startswith("/mediator")}
    assert set(mediator) == {
        "/mediator/",
        "/mediator/endpoint",
        "/mediator/organization",
        "/mediator/patient",
        "/mediator/service-request",
        "/mediator/ltfu-lists/{list_id}",
        "/mediator/service-request/{service_request_id}",
        "/mediator/service-request/{service_request_id}/$cancel",
        "/mediator/encounter",
    }
    outcome = {"$ref": "#/components/schemas/OperationOutcome"}
    for path, item in mediator.items():
        for method, operation in item.items():
            answers = operation["responses"]
            assert "401" in answers, (method, path)
            assert "422" not in answers or "FHIR_URL" in answers["422"]["description"], (method, path)
            for status, answer in answers.items():
                (schema,) = [c["schema"] for c in answer["content"].values()]
                if int(status) >= 400:
                    assert schema == outcome, (method, path, status)
                    (example,) = [c["example"] for c in answer["content"].values()]
                    assert not _errors(document, schema, example)
            if method in ("post", "put") and path != "/mediator/":
                examples = operation["requestBody"]["content"][FHIR_JSON]["examples"]
                assert examples, (method, path)
                assert {"400", "413"} <= set(answers), (method, path)
    assert document["security"] == [{"interopClient": []}]
    assert document["paths"]["/health/live"]["get"]["security"] == []


async def test_every_example_is_valid_and_accepted_with_its_documented_status(
    client: httpx.AsyncClient,
) -> None:
    document = await _document(client)
    check = Checker(client, document)

    # register the requester
    endpoint = await check.post_example("/mediator/endpoint", "callback")
    endpoint_id = endpoint.json()["id"]
    assert endpoint.headers["location"].endswith(f"/fhir/Endpoint/{endpoint_id}")
    again = await check.send(
        "post",
        "/mediator/endpoint",
        "/mediator/endpoint",
        check.example("post", "/mediator/endpoint", "callback")[0],
    )
    assert again.status_code == 200 and again.json()["id"] == endpoint_id  # same identifier: updated
    await check.post_example(
        "/mediator/organization", "facility", endpoint=[{"reference": f"Endpoint/{endpoint_id}"}]
    )

    # the CHT pushes the patients, the facility asks for one follow-up, then sends a list
    await check.post_example("/mediator/patient", "cht-push")
    await check.post_example("/mediator/patient", "another")
    one = await check.post_example("/mediator/service-request", "one")
    assert one.json()["resourceType"] == "Subscription"
    first_sr = _id_from_location(one.headers["location"], "ServiceRequest")
    listed = await check.post_example("/mediator/service-request", "ltfu-list")
    statuses = [e["response"]["status"] for e in listed.json()["entry"]]
    assert statuses == ["201 Created", "200 OK"], statuses  # a new follow-up; the open one returned
    second_sr = _id_from_location(listed.json()["entry"][0]["response"]["location"], "ServiceRequest")

    # the CHW's answer completes the first follow-up
    await check.post_example("/mediator/encounter", "cht-push")
    tasks = (await client.get("/fhir/Task", params={"based-on": f"ServiceRequest/{first_sr}"})).json()
    assert [e["resource"]["status"] for e in tasks["entry"]] == ["completed"]

    # cancel the second; revoke a new follow-up of the first patient (the first is completed)
    cancel_path = "/mediator/service-request/{service_request_id}/$cancel"
    cancelled = await check.post_example(
        cancel_path, "reason", url=f"/mediator/service-request/{second_sr}/$cancel"
    )
    assert cancelled.json()["status"] == "revoked"
    renewed = await check.post_example("/mediator/service-request", "one")
    third_sr = _id_from_location(renewed.headers["location"], "ServiceRequest")
    assert third_sr != first_sr
    revoke_path = "/mediator/service-request/{service_request_id}"
    value, expected = check.example("put", revoke_path, "revoke")
    revoked = await check.send("put", revoke_path, f"/mediator/service-request/{third_sr}", value)
    assert revoked.status_code == expected and revoked.json()["status"] == "revoked"

    documented = {
        (path, name)
        for path, item in document["paths"].items()
        for operation in item.values()
        for name in operation.get("requestBody", {}).get("content", {}).get(FHIR_JSON, {}).get("examples", {})
    }
    assert check.used == documented


async def test_the_documented_answers_of_lists_and_errors(client: httpx.AsyncClient) -> None:
    """202 and its status URL, and the errors, each in its documented shape."""
    document = await _document(client)
    check = Checker(client, document)
    endpoint = await check.post_example("/mediator/endpoint", "callback")
    await check.post_example(
        "/mediator/organization", "facility", endpoint=[{"reference": f"Endpoint/{endpoint.json()['id']}"}]
    )
    patient_id = str(uuid.uuid4())
    patient, _ = check.example("post", "/mediator/patient", "cht-push")
    patient["identifier"][0]["value"] = patient_id
    assert (await check.send("post", "/mediator/patient", "/mediator/patient", patient)).status_code == 201

    bundle, _ = check.example("post", "/mediator/service-request", "ltfu-list")
    bundle["entry"] = bundle["entry"][:1]
    bundle["entry"][0]["resource"]["subject"]["reference"] = f"Patient/{patient_id}"
    staged = await check.send(
        "post", "/mediator/service-request", "/mediator/service-request", bundle, {"Prefer": "respond-async"}
    )
    assert staged.status_code == 202, staged.text
    status_url = staged.headers["content-location"]
    assert status_url.startswith("http://test/mediator/ltfu-lists/")
    status = await client.get(status_url)
    check.check_answer("get", "/mediator/ltfu-lists/{list_id}", status)
    assert status.status_code == 202 and status.headers["x-progress"] == "0 of 1 follow-ups done"

    missing = await client.get("/mediator/ltfu-lists/no-such-list")
    check.check_answer("get", "/mediator/ltfu-lists/{list_id}", missing)
    assert missing.status_code == 404

    no_gender = {k: v for k, v in patient.items() if k != "gender"}
    refused = await check.send("post", "/mediator/patient", "/mediator/patient", no_gender)
    assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["Patient.gender"]
    schema = check.operation("post", "/mediator/patient")["requestBody"]["content"][FHIR_JSON]["schema"]
    assert _errors(document, schema, no_gender), "the documented schema must refuse it too"

    unknown, _ = check.example("post", "/mediator/service-request", "one")
    unknown["subject"]["reference"] = f"Patient/{uuid.uuid4()}"
    not_found = await check.send("post", "/mediator/service-request", "/mediator/service-request", unknown)
    assert not_found.status_code == 404

    anonymous = await client.post("/mediator/patient", json=patient, auth=("interop-client", "wrong"))
    check.check_answer("post", "/mediator/patient", anonymous)
    assert anonymous.status_code == 401
