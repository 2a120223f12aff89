"""The runtime and sandbox of examples/acme.yaml, started exactly as `tenantry render` describes.

The pods' env, args and files come from the rendered Deployments and ConfigMap; only what
cannot exist on one machine is mapped: mount paths live under a temporary root, the Service
names and the model's address point to processes on 127.0.0.1, each process gets a free port,
and binds to loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tenantry_runtime.sandbox import STOP_MARGIN_SECONDS

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


def rendered(
    tenant_file: Path = REPO / "examples" / "acme.yaml",
) -> dict[tuple[str, str], dict[str, Any]]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tenantry"), "render", str(tenant_file)],
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


def acme_with(directory: Path, sandbox: dict[str, Any]) -> Path:
    """examples/acme.yaml with `sandbox` as its spec.sandbox, written below `directory`."""
    tenant = yaml.safe_load((REPO / "examples" / "acme.yaml").read_text())
    tenant["spec"]["sandbox"] = sandbox
    path = directory / "acme.yaml"
    path.write_text(yaml.safe_dump(tenant))
    return path


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


# The time limit of a run in the tests below: beyond the minute for which the server used to
# wait for the runs in flight when stopped.
LONG_RUN_LIMIT = 65


async def test_a_rendered_sandbox_stopped_mid_run_audits_and_answers_the_run_before_it_exits(
    pod_root: Path,
) -> None:
    """A run may last its whole time limit, spec.sandbox.timeoutSeconds (600 s at most). On
    SIGTERM the server used to wait a minute for the runs in flight, then cancel them: killed,
    neither answered nor audited. It now waits for them to end, even a run that meets its limit
    long after that minute (the pod's grace period outlasts the wait: the test below)."""
    manifests = rendered(acme_with(pod_root, {"timeoutSeconds": LONG_RUN_LIMIT}))
    sandbox_pod = Pod(manifests, "sandbox", pod_root / "sandbox")
    env = sandbox_pod.env(TENANTRY_PORT=str(free_port()))
    assert env["TENANTRY_SANDBOX_TIMEOUT_SECONDS"] == str(LONG_RUN_LIMIT)
    workspace = Path(env["TENANTRY_SANDBOX_WORKDIR"])
    sandbox = start_service(
        "sandbox", env, pod_root / "logs-sandbox", as_sandbox_user=True, cwd=workspace
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            run = asyncio.create_task(
                session.post(
                    f"{sandbox.url}/v1/execute",
                    json={"language": "sh", "code": "touch started; sleep 600", "taskId": "t"},
                    headers={"Authorization": f"Bearer {SECRET_VALUES['sandbox-token']['token']}"},
                )
            )
            while not (workspace / "t" / "started").exists():
                answered, _ = await asyncio.wait({run}, timeout=0.05)
                assert not answered, "the run was answered before it started"
            sandbox.proc.send_signal(signal.SIGTERM)  # as the kubelet stops the pod
            async with await run as response:
                answer = await response.json()
        assert response.status == 200, answer
        assert (answer["exitCode"], answer["timedOut"]) == (124, True)  # met its limit
        assert await asyncio.to_thread(sandbox.proc.wait) == 0
    finally:
        sandbox.stop()
    (audited,) = [r for r in json_lines(sandbox.stdout) if r.get("event") == "code_execution"]
    assert (audited["taskId"], audited["exitCode"], audited["timedOut"]) == ("t", 124, True)


@pytest.mark.parametrize("limit", [1, 30, LONG_RUN_LIMIT, 600])
async def test_the_kubelet_kills_a_stopped_sandbox_only_after_the_servers_wait_for_its_runs(
    pod_root: Path, limit: int
) -> None:
    """The kubelet sends SIGKILL terminationGracePeriodSeconds after SIGTERM (30 s unless the
    pod sets it): later than the longest the server waits for the runs in flight, its time
    limit (from the env the pod gives it) and STOP_MARGIN_SECONDS, with time to exit."""
    manifests = rendered(acme_with(pod_root, {"timeoutSeconds": limit}))
    spec = manifests[("Deployment", "sandbox")]["spec"]["template"]["spec"]
    sandbox_pod = Pod(manifests, "sandbox", pod_root / "sandbox")
    run_limit = float(sandbox_pod.env()["TENANTRY_SANDBOX_TIMEOUT_SECONDS"])
    assert run_limit == limit
    assert spec["terminationGracePeriodSeconds"] >= run_limit + STOP_MARGIN_SECONDS + 10
