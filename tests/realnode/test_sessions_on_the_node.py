"""Sessions on the real node: real containers writing to real volumes of a hard size.

Two tenants keep sessions, each on its own `local` PersistentVolume (an ext4 file system in a
loop-mounted file of the node's, node.local_volume), bound to its claim by the volume binder.
A session's history survives its runtime pod being replaced (a config change rolls it out with
strategy Recreate); the other tenant, asked with the same session id, sees none of it; and a
tenant that fills its volume gets a refused turn, while its runtime, the other tenant and the
node carry on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from realnode.nodekit import (
    MODEL,
    Chart,
    Outside,
    apply,
    diagnosis,
    exec_python,
    kubectl,
    model_key_source,
    node,
    pods,
    ready,
    tenant_pod,
    wait_until,
)

TENANTS = ("memo-a", "memo-b")
CLASS = "tenantry-local-sessions"
VOLUME_MIB = 8
DECLARED = "512Mi"
"""What the volume says it holds: more than its file system (8 MiB) does, as a disk shared with
something else or fuller than expected would. Retention fits what it says (the operator checks
that), not what it holds, so a tenant can fill it."""
SESSIONS_DIR = "/var/lib/tenantry/sessions"

# POSTs JSON bodies to the runtime from its own pod: argv[1] the path, then (content, size) pairs
# where a content of "" means `size` bytes of filler (argv cannot carry a megabyte). Prints one
# JSON line per request: the status and the body.
POST = (
    "import json, sys, urllib.error, urllib.request\n"
    "path = sys.argv[1]\n"
    "for content, size in zip(sys.argv[2::2], sys.argv[3::2]):\n"
    "    body = {'topicType': 'default', 'content': content or 'x' * int(size)}\n"
    "    request = urllib.request.Request('http://127.0.0.1:8080' + path,"
    " data=json.dumps(body).encode(), method='POST', headers={'Content-Type': 'application/json'})\n"
    "    try:\n"
    "        with urllib.request.urlopen(request, timeout=100) as response:\n"
    "            print(json.dumps({'status': response.status, 'body': json.load(response)}))\n"
    "    except urllib.error.HTTPError as error:\n"
    "        print(json.dumps({'status': error.code, 'body': json.load(error)}))\n"
)
LIST_SESSIONS = (
    "import json, os, sys\n"
    "d = sys.argv[1]\n"
    "print(json.dumps({n: open(os.path.join(d, n)).read() for n in os.listdir(d)"
    " if n.endswith('.json')}))\n"
)


def manifest(name: str, system_message: str = "You remember what users said.") -> dict[str, Any]:
    host, port = MODEL
    return {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenant",
        "metadata": {"name": name},
        "spec": {
            "runtime": {
                "topicTypes": ["default"],
                "agents": [
                    {
                        "name": "assistant",
                        "kind": "assistant",
                        "topicType": "default",
                        "systemMessage": system_message,
                    }
                ],
                "model": {
                    "model": "scripted",
                    "baseUrl": f"http://{host}:{port}/v1",
                    "credentialsSecret": "model-credentials",
                },
                "sessions": {
                    "enabled": True,
                    "storage": {"size": DECLARED, "storageClassName": CLASS},
                    # 4 sessions of at most 2 MiB: more than the file system holds.
                    "retention": {"maxSessions": 4, "maxSessionBytes": 2 * 1024 * 1024},
                },
            },
            "sandbox": {"enabled": False},
            "secrets": [{"name": "model-credentials", "from": f"{name}-model"}],
            "network": {"egress": [{"cidr": f"{host}/32", "ports": [port]}]},
        },
    }


def volume(name: str) -> dict[str, Any]:
    """A `local` volume on the real node, bound ahead to the tenant's claim alone."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"sessions-{name}"},
        "spec": {
            "capacity": {"storage": DECLARED},
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": CLASS,
            "claimRef": {"namespace": f"tenant-{name}", "name": "sessions"},
            "local": {"path": str(node.local_volume(f"sessions-{name}", VOLUME_MIB))},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node.NODE_NAME],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def post(tenant: str, path: str, *turns: tuple[str, int]) -> list[dict[str, Any]]:
    pod = tenant_pod(tenant, "runtime")["metadata"]["name"]
    args = [str(item) for turn in turns for item in turn]
    out = exec_python(f"tenant-{tenant}", pod, POST, path, *args, timeout=300)
    return [json.loads(line) for line in out.splitlines()]


def stored(tenant: str) -> dict[str, str]:
    pod = tenant_pod(tenant, "runtime")["metadata"]["name"]
    return dict(json.loads(exec_python(f"tenant-{tenant}", pod, LIST_SESSIONS, SESSIONS_DIR)))


def user_turns(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def runtime_ready(tenant: str, not_pod: str = "") -> bool:
    found = pods(f"tenant-{tenant}", "tenantry.dev/component=runtime")
    return len(found) == 1 and found[0]["metadata"]["name"] != not_pod and ready(found[0])


@pytest.fixture(scope="module")
def memo_tenants(chart_operator: Chart, outside: Outside) -> Iterator[tuple[str, ...]]:
    apply(
        *(volume(name) for name in TENANTS),
        *(model_key_source(name) for name in TENANTS),
        *(manifest(name) for name in TENANTS),
    )
    try:
        for name in TENANTS:
            try:
                wait_until(lambda name=name: runtime_ready(name), f"{name}'s runtime", 240)
            except AssertionError:
                pytest.fail(
                    f"{name} did not start:\n" + diagnosis([f"tenant-{t}" for t in TENANTS])
                )
        yield TENANTS
    finally:
        kubectl("delete", "agenttenants", *TENANTS, "--wait=false", check=False)
        wait_until(
            lambda: (
                not any(kubectl("get", "namespace", f"tenant-{n}", check=False) for n in TENANTS)
            ),
            "the memo tenants' namespaces to go",
            240,
        )
        kubectl("delete", "pv", *(f"sessions-{n}" for n in TENANTS), check=False)
        for name in TENANTS:
            node.local_volume_down(f"sessions-{name}")


def test_a_history_survives_a_new_pod_and_stays_in_its_tenant(
    memo_tenants: tuple[str, ...], outside: Outside
) -> None:
    first, second = memo_tenants
    (answer,) = post(first, "/v1/sessions/s1/tasks", ("canary-MEMO-A remember me", 0))
    assert answer["status"] == 200, answer

    # A config change replaces the runtime pod (Recreate: the old one goes first).
    old_pod = tenant_pod(first, "runtime")["metadata"]["name"]
    apply(manifest(first, system_message="You still remember what users said."))
    wait_until(lambda: runtime_ready(first, not_pod=old_pod), f"{first}'s new runtime pod", 240)

    (answer,) = post(first, "/v1/sessions/s1/tasks", ("What did I say?", 0))
    assert answer["status"] == 200, answer
    request = outside.model_requests()[-1]
    assert request["messages"][0]["content"] == "You still remember what users said."
    assert user_turns(request) == ["canary-MEMO-A remember me", "What did I say?"]

    # The other tenant, with the same session id, has a history of its own: empty.
    (answer,) = post(second, "/v1/sessions/s1/tasks", ("Hello", 0))
    assert answer["status"] == 200, answer
    assert user_turns(outside.model_requests()[-1]) == ["Hello"]
    files = stored(second)
    assert list(files) == ["s1.json"]
    assert "canary-MEMO-A" not in files["s1.json"]
    assert "canary-MEMO-A" in stored(first)["s1.json"]


def test_filling_the_volume_fails_a_turn_not_the_runtime_nor_the_node(
    memo_tenants: tuple[str, ...],
) -> None:
    first, second = memo_tenants
    megabyte = 1000 * 1000  # under the 1 MiB request limit and half of maxSessionBytes
    turns = [("", megabyte)] * 3
    answers = [
        answer
        for session in ("f1", "f2", "f3", "f4")
        for answer in post(second, f"/v1/sessions/{session}/tasks", *turns)
    ]
    refused = [a for a in answers if a["status"] != 200]
    assert refused, "8 MiB took 8 MB of histories and more: the volume was not bounded"
    assert all(a["status"] == 502 for a in refused), refused
    assert all("cannot be saved" in a["body"]["error"] for a in refused), refused

    # What was saved is whole (every file parses), the runtime answers, the node and the other
    # tenant are fine.
    for name, text in stored(second).items():
        assert json.loads(text)["format"] == 1, name
    pod = tenant_pod(second, "runtime")
    assert ready(pod) and pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert node.node_ready()
    (answer,) = post(first, "/v1/tasks", ("Still there?", 0))
    assert answer["status"] == 200, answer

    # Forgetting a session frees its share: the tenant can continue.
    pod_name = pod["metadata"]["name"]
    deleted = exec_python(
        f"tenant-{second}",
        pod_name,
        "import sys, urllib.request\n"
        "r = urllib.request.Request('http://127.0.0.1:8080/v1/sessions/f1', method='DELETE')\n"
        "print(urllib.request.urlopen(r, timeout=30).status)\n",
    )
    assert deleted.strip() == "204"
    (answer,) = post(second, "/v1/sessions/f6/tasks", ("small", 0))
    assert answer["status"] == 200, answer
