"""Helpers for the tests on the real node (tests/realnode): kubectl, stand-ins, tenants and tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tenantry.names import COMPONENT_LABEL

from tests.support.chartkit import run

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))
import node  # noqa: E402 - e2e/ is not a package; its scripts run before any venv exists

KUBECTL = str(node.BIN_DIR / "kubectl")
SECRET_SOURCE = "tenantry-secrets"
API_KEY = "sk-e2e-key-that-only-the-runtime-may-read"
MODEL = node.MODEL
# Inside acme's listed egress range, outside globex's (which lists the model's address alone).
INSIDE_ACME_EGRESS = ("203.0.113.20", 443)
OUTSIDE_EVERY_EGRESS = ("198.51.100.20", 443)
METADATA = ("169.254.169.254", 80)
PROBE_IMAGE = "docker.io/tenantry/runtime:0.1.0"


def kubectl(*args: str, check: bool = True, stdin: str | None = None, timeout: float = 120) -> str:
    kubeconfig = str(node.KUBECONFIG)
    return run(
        KUBECTL, "--kubeconfig", kubeconfig, *args, check=check, input=stdin, timeout=timeout
    ).stdout


def get(*args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json"))


def apply(*objects: dict[str, Any]) -> None:
    kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=tenantry-e2e", "-f", "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )  # fmt: skip


def wait_until(check: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def exec_python(namespace: str, pod: str, script: str, *args: str, timeout: float = 120) -> str:
    """Run SCRIPT with the pod's own Python, in its first container, as that container's user."""
    return kubectl(
        "exec", "-n", namespace, pod, "--", "python", "-c", script, *args, timeout=timeout
    )


@dataclass
class Outside:
    """The stand-ins outside the cluster: the scripted model and plain listeners."""

    model_log: Path
    processes: list[subprocess.Popen[bytes]]

    def model_requests(self) -> list[dict[str, Any]]:
        text = self.model_log.read_text() if self.model_log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


def pods(namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
    return [p for p in get(*args)["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def neighbour(namespace: str, name: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """A namespace with one pod that listens on 8080 (a probe target, and a probe source)."""
    return node.listener_pod(namespace, name, labels, PROBE_IMAGE)


@dataclass
class Chart:
    namespace: str
    pod: dict[str, Any]
    values: dict[str, str]


def model_key_source(tenant: str) -> dict[str, Any]:
    """The Secret, in the secret-source namespace, that TENANT's model key is copied from."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{tenant}-model",
            "namespace": SECRET_SOURCE,
            "annotations": {"tenantry.dev/allowed-tenants": tenant},
        },
        "stringData": {"api-key": API_KEY},
    }


def tenant_manifest(name: str, egress: list[dict[str, Any]]) -> dict[str, Any]:
    host, port = MODEL
    return {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenant",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.upper(),
            "runtime": {
                "topicTypes": ["default", "code"],
                "agents": [
                    {
                        "name": "assistant",
                        "kind": "assistant",
                        "topicType": "default",
                        "systemMessage": "Write Python in fenced code blocks when code helps.",
                    },
                    {"name": "coder", "kind": "coder", "topicType": "code"},
                ],
                "model": {
                    "model": "scripted",
                    "baseUrl": f"http://{host}:{port}/v1",
                    "credentialsSecret": "model-credentials",
                },
            },
            "secrets": [{"name": "model-credentials", "from": f"{name}-model"}],
            "network": {
                "ingressFrom": [
                    {"namespaceSelector": {"matchLabels": {"tenantry.dev/gateway": "true"}}}
                ]
                if name == "acme"
                else [],
                "egress": egress,
            },
        },
    }


# acme reaches one documentation range; globex the model alone, and anything on port 80, which
# the operator narrows by `except` (metadata, private and cluster ranges): the stand-in metadata
# endpoint listens on port 80, so the packets show whether the enforcer honours `except`.
TENANTS: dict[str, list[dict[str, Any]]] = {
    "acme": [{"cidr": "203.0.113.0/24", "ports": [MODEL[1]]}],
    "globex": [
        {"cidr": f"{MODEL[0]}/32", "ports": [MODEL[1]]},
        {"cidr": "0.0.0.0/0", "ports": [METADATA[1]]},
    ],
}


def tenant_pod(tenant: str, component: str) -> dict[str, Any]:
    found = pods(f"tenant-{tenant}", f"{COMPONENT_LABEL}={component}")
    assert len(found) == 1, f"expected one {component} pod of {tenant}, found {len(found)}"
    return found[0]


# Polls a URL from inside a pod until it answers 200 (60 s at most).
WAIT_FOR_URL = (
    "import sys, time, urllib.request\n"
    "for _ in range(120):\n"
    "    try:\n"
    "        urllib.request.urlopen(sys.argv[1], timeout=2).close()\n"
    "        sys.exit(0)\n"
    "    except OSError:\n"
    "        time.sleep(0.5)\n"
    "sys.exit('no answer from ' + sys.argv[1])\n"
)

TASK = (
    "import json, sys, urllib.error, urllib.request\n"
    "request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST',"
    " headers={'Content-Type': 'application/json'})\n"
    "try:\n"
    "    with urllib.request.urlopen(request, timeout=float(sys.argv[3])) as response:\n"
    "        print(json.dumps({'status': response.status, 'body': json.load(response)}))\n"
    "except urllib.error.HTTPError as error:\n"
    "    print(json.dumps({'status': error.code, 'body': json.load(error)}))\n"
)


def post_task(gateway_pod: str, tenant: str, content: str, timeout: float = 120) -> dict[str, Any]:
    """POST a task to the tenant's runtime Service from the gateway pod; the status and body."""
    url = f"http://runtime.tenant-{tenant}.svc.cluster.local:8080/v1/tasks"
    return send_task("e2e-gateway", gateway_pod, url, content, timeout)


def post_task_inside(tenant: str, content: str, timeout: float = 120) -> dict[str, Any]:
    """POST a task to a tenant's runtime from its own pod (tenants that admit no gateway)."""
    pod = tenant_pod(tenant, "runtime")["metadata"]["name"]
    return send_task(f"tenant-{tenant}", pod, "http://127.0.0.1:8080/v1/tasks", content, timeout)


def send_task(namespace: str, pod: str, url: str, content: str, timeout: float) -> dict[str, Any]:
    body = json.dumps({"topicType": "default", "content": content})
    out = exec_python(namespace, pod, TASK, url, body, str(timeout), timeout=timeout + 30)
    return dict(json.loads(out))


def fenced(code: str) -> str:
    """A task whose model (e2e/model_server.py) answers with CODE for the sandbox to run."""
    return f"Please run this:\n```python\n{code}```\n"


def diagnosis(namespaces: list[str]) -> str:
    """What a failing test needs to say: tenants' conditions, pods, recent events, operator log."""
    parts = [
        kubectl("get", "agenttenants", "-o", "custom-columns=NAME:.metadata.name,"
                "CONDITIONS:.status.conditions[*].message", check=False),
        kubectl("get", "pods", "-A", "-o", "wide", check=False),
    ]  # fmt: skip
    for namespace in namespaces:
        parts.append(f"events in {namespace}:")
        parts.append(
            kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)[
                -3000:
            ]
        )
    parts.append("operator log:")
    parts.append(
        kubectl("logs", "-n", "tenantry-system", "deploy/tenantry", "--tail=40", check=False)
    )
    return "\n".join(parts)
