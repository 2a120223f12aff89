"""Tenants on the real node: containers from the built images, a task answered through a tenant's
runtime and sandbox pods, the operator itself running from its image as the chart installs it.
"""

from __future__ import annotations

import json

from tenantry.models import AgentTenant
from tenantry.names import RUNTIME, SANDBOX
from tenantry.render import tenant_uid

from realnode.nodekit import (
    API_KEY,
    Chart,
    Outside,
    exec_python,
    get,
    kubectl,
    pods,
    post_task,
    tenant_pod,
)

WHO_AM_I = (
    "import json, os\n"
    "writable = []\n"
    "for path in ('/', '/usr', '/app', '/etc'):\n"
    "    try:\n"
    "        open(os.path.join(path, '.probe'), 'w').close(); writable.append(path)\n"
    "    except OSError:\n"
    "        pass\n"
    "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'writable': writable,\n"
    "    'token': os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token')}))\n"
)


def test_tenants_run_real_containers_under_restricted(tenants: list[str], real_node: str) -> None:
    for name in tenants:
        namespace = get("namespace", f"tenant-{name}")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        tenant = AgentTenant.model_validate({"metadata": {"name": name}, "spec": {}})
        for component in (RUNTIME, SANDBOX):
            pod = tenant_pod(name, component)
            assert pod["spec"]["nodeName"] == real_node
            (status,) = pod["status"]["containerStatuses"]
            # A container containerd started from the imported image, not a kwok stand-in.
            assert status["containerID"].startswith("containerd://"), status
            assert status["imageID"], status
            assert status["ready"] and "running" in status["state"], status
            seen = json.loads(exec_python(f"tenant-{name}", pod["metadata"]["name"], WHO_AM_I))
            uid = tenant_uid(tenant, component)
            assert seen == {"uid": uid, "gid": uid, "writable": [], "token": False}, (
                name,
                component,
            )


def test_the_operator_runs_from_its_image_as_the_charts_identity(
    chart_operator: Chart, tenants: list[str], real_node: str
) -> None:
    operator_pods = pods(chart_operator.namespace)
    assert len(operator_pods) == 2  # the chart's default: two replicas, one leader
    for pod in operator_pods:
        assert pod["spec"]["nodeName"] == real_node
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "tenantry/operator:0.1.0"
        (status,) = pod["status"]["containerStatuses"]
        assert status["containerID"].startswith("containerd://") and status["ready"], status
        assert status["restartCount"] == 0, status
        assert pod["spec"]["serviceAccountName"] == "tenantry"
    # The identity the chart gives it cannot do what it does not need, checked by the API server.
    impersonate = ["--as", f"system:serviceaccount:{chart_operator.namespace}:tenantry"]
    assert (
        kubectl("auth", "can-i", "create", "agenttenants", *impersonate, check=False).strip()
        == "no"
    )
    assert (
        kubectl(
            "auth", "can-i", "get", "secrets", "-n", "kube-system", *impersonate, check=False
        ).strip()
        == "no"
    )
    # And the tenants it provisioned are Ready: it reached the API server from its pod.
    for name in tenants:
        conditions = get("agenttenant", name)["status"]["conditions"]
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in conditions), conditions


def test_a_task_from_the_gateway_is_answered_by_the_model_and_the_sandbox(
    tenants: list[str], outside: Outside, neighbours: dict[str, str]
) -> None:
    (gateway,) = pods(neighbours["gateway"])
    before = len(outside.model_requests())

    answer = post_task(gateway["metadata"]["name"], "acme", "What is 7 times the sum of 1 to 100?")

    assert answer["status"] == 200, answer
    # 35350 was computed in acme's sandbox pod: the model only wrote the program.
    assert "sum: 35350" in answer["body"]["result"], answer
    requests = outside.model_requests()[before:]
    assert len(requests) == 2, requests
    assert {r["authorization"] for r in requests} == {f"Bearer {API_KEY}"}
    assert requests[1]["messages"][-1]["content"].startswith("Output of the code (exit code 0)")
