"""The runtime and sandbox of examples/acme.yaml, started exactly as `tenantry render` describes.

The pods' env, args and files come from the rendered Deployments and ConfigMap; only what
cannot exist on one machine is mapped: mount paths live under a temporary root, the Service
names and the model's address point to processes on 127.0.0.1, each process gets a free port,
and binds to loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.ports import free_port
from tests.support.runtime_services import SANDBOX_UID, Service, base_env, json_lines, start_service
from tests.support.scripted_model import ScriptedModel

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.asyncio(loop_scope="session")
# What the Secrets would hold in the cluster (offline rendering prints no Secret data).
SECRET_VALUES = {
    "model-credentials": {"api-key": "sk-rendered-key"},
    "sandbox-token": {"token": "rendered-token"},
}


def rendered() -> dict[tuple[str, str], dict[str, Any]]:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "tenantry"),
            "render",
            str(REPO / "examples" / "acme.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {(m["kind"], m["metadata"]["name"]): m for m in yaml.safe_load_all(result.stdout)}


class Pod:
    """One rendered pod's container, materialised under `root` on this machine."""

    def __init__(
        self, manifests: dict[tuple[str, str], dict[str, Any]], component: str, root: Path
    ) -> None:
        spec = manifests[("Deployment", component)]["spec"]["template"]["spec"]
        self.container = spec["containers"][0]
        self.root = root
        self.owner = SANDBOX_UID if component == "sandbox" and os.geteuid() == 0 else None
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in self.container["volumeMounts"]:
            self.materialise(manifests, volumes[mount["name"]], self.host(mount["mountPath"]))

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def materialise(
        self, manifests: dict[tuple[str, str], dict[str, Any]], volume: dict[str, Any], target: Path
    ) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            files = manifests[("ConfigMap", volume["configMap"]["name"])]["data"]
        elif "secret" in volume:
            files = SECRET_VALUES[volume["secret"]["secretName"]]
        else:
            files = {}  # an emptyDir
        for name, content in files.items():
            (target / name).write_text(content)
        if self.owner is not None:
            for path in (target, *target.iterdir()):
                os.chown(path, self.owner, self.owner)

    def env(self, **overrides: str) -> dict[str, str]:
        """The container's env, with paths under mounts moved below `root` and a Secret's key
        (`valueFrom.secretKeyRef`) read as the kubelet would."""
        mounts = [m["mountPath"] for m in self.container["volumeMounts"]]
        env = {}
        for item in self.container["env"]:
            if "valueFrom" in item:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = SECRET_VALUES[ref["name"]][ref["key"]]
                continue
            value = item["value"]
            env[item["name"]] = (
                str(self.host(value)) if any(value.startswith(m) for m in mounts) else value
            )
        return base_env(**{**env, "TENANTRY_HOST": "127.0.0.1", **overrides})


def localise_config(runtime_pod: Pod, model_url: str, sandbox_url: str) -> None:
    """runtime.json as rendered, with its file paths under the pod root and its addresses local."""
    config_file = Path(runtime_pod.env()["TENANTRY_CONFIG"])
    config = json.loads(config_file.read_text())
    config["model"]["apiKeyFile"] = str(runtime_pod.host(config["model"]["apiKeyFile"]))
    config["model"]["baseUrl"] = f"{model_url}/v1"
    config["sandbox"]["tokenFile"] = str(runtime_pod.host(config["sandbox"]["tokenFile"]))
    assert config["sandbox"]["url"] == "http://sandbox:8080"  # the namespace-local Service
    config["sandbox"]["url"] = sandbox_url
    config_file.write_text(json.dumps(config))


def sandbox_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def pod_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tenantry-rendered-"))
    root.chmod(0o755)  # the sandbox user must reach its workspace below it
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_a_rendered_tenant_answers_a_task_with_code_run_in_its_sandbox(
    model: ScriptedModel, pod_root: Path
) -> None:
    manifests = rendered()
    sandbox_pod = Pod(manifests, "sandbox", pod_root / "sandbox")
    runtime_pod = Pod(manifests, "runtime", pod_root / "runtime")
    assert sandbox_pod.container["args"] == ["sandbox"] and runtime_pod.container["args"] == [
        "serve"
    ]

    sandbox_env = sandbox_pod.env(TENANTRY_PORT=str(free_port()))
    assert sandbox_env["TENANTRY_TENANT"] == "acme"
    sandbox = start_service(
        "sandbox",
        sandbox_env,
        pod_root / "logs-sandbox",
        as_sandbox_user=True,
        cwd=Path(sandbox_env["TENANTRY_SANDBOX_WORKDIR"]),
    )
    try:
        localise_config(runtime_pod, model.url, sandbox.url)
        runtime_env = runtime_pod.env(TENANTRY_PORT=str(free_port()))
        assert runtime_env["TENANTRY_AUDIT_LOG"] == "-"  # audit lines go to stdout, as in the pod
        runtime: Service = start_service("serve", runtime_env, pod_root / "logs-runtime")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
                task = {"topicType": "default", "content": "What is 7 times the sum of 1 to 100?"}
                async with session.post(f"{runtime.url}/v1/tasks", json=task) as response:
                    body = await response.json()
            assert response.status == 200, (body, runtime.logs())
            assert "sum: 35350" in body["result"]
            assert [r["authorization"] for r in model.requests][-2:] == [
                "Bearer sk-rendered-key"
            ] * 2
            audit = [r for r in json_lines(runtime.stdout) if r.get("taskId") == body["taskId"]]
            assert {r["tenant"] for r in audit} == {"acme"}
            assert [r.get("messageType") or r["event"] for r in audit] == [
                "TaskRequest",
                "CodeRequest",
                "code_execution",
                "CodeOutput",
                "TaskResult",
            ]
        finally:
            runtime.stop()
    finally:
        sandbox.stop()
    # No secret is a file of the sandbox's: the model key is the runtime's, and the sandbox's
    # token reaches it in its environment (render/sandbox.py).
    files = sandbox_files(pod_root / "sandbox")
    assert "api-key" not in files and "token" not in files
    assert sandbox_env["TENANTRY_SANDBOX_TOKEN"] == SECRET_VALUES["sandbox-token"]["token"]
