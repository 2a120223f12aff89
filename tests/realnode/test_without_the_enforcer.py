"""What happens when the NetworkPolicy enforcer (kube-router) crashes, measured with packets.

Runs last among the real node's tests: it kills kube-router, replaces a pod while it is down,
starts it again and waits until the tenant is Ready and reachable as before.
"""

from __future__ import annotations

import subprocess

from tenantry.names import COMPONENT_LABEL

from realnode.nodekit import KUBECTL, WAIT_FOR_URL, exec_python, kubectl, node, pods, wait_until
from realnode.test_connectivity_measured import Peer, Target, live_peers, measure, peer

RUNTIME_PODS = f"{COMPONENT_LABEL}=runtime"
LISTENING = "import socket; socket.create_connection(('127.0.0.1', 8080), timeout=2).close()"


def reach(source: Peer, *targets: Peer) -> list[bool]:
    return measure(source, [Target(t.label, t.ip, 8080, "TCP", t.label) for t in targets])


def listening(pod: Peer) -> bool:
    argv = ["exec", "-n", pod.namespace, pod.pod, "--", "python", "-c", LISTENING]
    return (
        subprocess.run(
            [KUBECTL, "--kubeconfig", str(node.KUBECONFIG), *argv], capture_output=True, check=False
        ).returncode
        == 0
    )


def new_runtime_pod(old: Peer) -> Peer | None:
    fresh = [p for p in pods(old.namespace, RUNTIME_PODS) if p["status"].get("podIP")]
    return peer(fresh[0]) if fresh and fresh[0]["metadata"]["name"] != old.pod else None


def test_a_crashed_enforcer_keeps_old_pods_isolated_and_leaves_new_pods_open(
    tenants: list[str], neighbours: dict[str, str]
) -> None:
    """kube-router's iptables rules outlive it: the pods it knew stay isolated. A pod created
    while it is down has no rules of its own (anyone reaches it) and is in no set its peers
    allow (it cannot reach its own sandbox, so its tenant is not Ready) until kube-router is
    back. docs/security.md says so."""
    by_label = {p.label: p for p in live_peers(tenants, neighbours)}
    acme, globex = by_label["tenant-acme/runtime"], by_label["tenant-globex/runtime"]
    sandbox = by_label["tenant-acme/sandbox"]
    outsider = by_label["e2e-outsider/intruder"]
    assert reach(outsider, acme, globex) == [False, False]

    node.kill_enforcer()
    try:
        assert reach(outsider, acme, globex) == [False, False]
        assert reach(acme, globex) == [False]
        kubectl("delete", "pod", "-n", "tenant-acme", acme.pod, "--wait=true")
        wait_until(lambda: new_runtime_pod(acme) is not None, "a new acme runtime pod")
        fresh = new_runtime_pod(acme)
        assert fresh is not None
        wait_until(lambda: listening(fresh), "the new runtime pod's server", 120)
        down = {
            "outsider -> new runtime": reach(outsider, fresh),
            "new runtime -> globex": reach(fresh, globex),
            "new runtime -> its own sandbox": reach(fresh, sandbox),
        }
        print(f"with kube-router down: {down}")
        assert down == {
            "outsider -> new runtime": [True],  # open: no policy of acme's applies to it yet
            "new runtime -> globex": [False],  # globex's own rules still hold
            "new runtime -> its own sandbox": [False],  # and so do its sandbox's
        }
    finally:
        node.start_enforcer()
    wait_until(lambda: reach(outsider, fresh) == [False], "kube-router enforcing again", 60)
    assert reach(fresh, sandbox) == [True]
    kubectl("wait", "--for=condition=Ready", "agenttenant/acme", "--timeout=120s", timeout=150)
    (gateway,) = pods(neighbours["gateway"])
    exec_python(neighbours["gateway"], gateway["metadata"]["name"], WAIT_FOR_URL,
                "http://runtime.tenant-acme.svc.cluster.local:8080/readyz", timeout=90)  # fmt: skip
