"""The connectivity matrix measured with packets on the real node, against the computed one.

From every tenant pod, a gateway pod and an outsider pod, a TCP connection (and a DNS query over
UDP) to every other pod, to cluster DNS, to the API server, to a stand-in metadata endpoint and
to stand-ins inside and outside the tenants' listed egress ranges. np-guard's netpol-analyzer
computes the same matrix from the live policies; the two must be equal. Every probed address
is a pod's (namespaces the CNI made), the API server's (this machine's link to the node), or a
stand-in the `outside` fixture started before the first probe: nothing can leave the machine.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Any

from realnode.nodekit import (
    INSIDE_ACME_EGRESS,
    METADATA,
    MODEL,
    OUTSIDE_EVERY_EGRESS,
    Outside,
    exec_python,
    node,
    pods,
)

# Runs inside each source pod with the pod's own Python: every probe at once, 2 s each.
PROBE = r"""
import concurrent.futures, json, socket, struct, sys

def dns_query():
    name = b"".join(bytes([len(p)]) + p for p in b"kubernetes.default.svc.cluster.local".split(b"."))
    return struct.pack(">HHHHHH", 0x7E57, 0x0100, 1, 0, 0, 0) + name + b"\0" + struct.pack(">HH", 1, 1)

def probe(target):
    host, port, protocol = target
    try:
        if protocol == "TCP":
            socket.create_connection((host, port), timeout=2).close()
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(2)
            udp.sendto(dns_query(), (host, port))
            return udp.recvfrom(512)[0][:2] == b"\x7e\x57"
    except OSError:
        return False

targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


@dataclass(frozen=True)
class Peer:
    """A pod as the analyzer names its workload: namespace and owner (Deployment or Pod)."""

    namespace: str
    workload: str
    pod: str
    ip: str
    ports: tuple[tuple[int, str], ...]

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.workload}"


def peer(pod: dict[str, Any]) -> Peer:
    metadata = pod["metadata"]
    owners = metadata.get("ownerReferences", [])
    # A ReplicaSet's pods are "<deployment>-<hash>-<suffix>": the workload is the Deployment.
    workload = metadata["generateName"].rsplit("-", 2)[0] if owners else metadata["name"]
    ports = tuple(
        (port["containerPort"], port.get("protocol", "TCP"))
        for container in pod["spec"]["containers"]
        for port in container.get("ports", [])
    )
    return Peer(metadata["namespace"], workload, metadata["name"], pod["status"]["podIP"], ports)


@dataclass(frozen=True)
class Target:
    label: str
    host: str
    port: int
    protocol: str
    # How the analyzer sees it: a workload "namespace/name", or an external address.
    workload: str | None = None


def conn_allows(conn: str, port: int, protocol: str) -> bool:
    """Does an analyzer connection set ("All Connections", "TCP 53,UDP 53", "TCP 1-79,81") allow?"""
    if conn == "All Connections":
        return True
    current = ""
    for item in conn.split(","):
        match = re.fullmatch(r"\s*(?:(TCP|UDP|SCTP) )?(\d+)(?:-(\d+))?\s*", item)
        if match is None:
            raise AssertionError(f"cannot read the analyzer's connection set {conn!r}")
        current = match.group(1) or current
        low = int(match.group(2))
        high = int(match.group(3) or low)
        if current == protocol and low <= port <= high:
            return True
    return False


def in_range(ranges: str, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for item in ranges.split(","):
        first, _, last = item.strip().partition("-")
        try:
            if ipaddress.ip_address(first) <= ip <= ipaddress.ip_address(last or first):
                return True
        except ValueError:
            return False
    return False


def workload_of(analyzer_name: str) -> str:
    """ "ns/runtime-6d9f7c[ReplicaSet]" -> "ns/runtime"; "ns/edge[Pod]" -> "ns/edge"."""
    name, _, kind = analyzer_name.partition("[")
    if kind.startswith("ReplicaSet"):
        name = name.rsplit("-", 1)[0]
    return name


def computed(connections: list[dict[str, str]], source: Peer, target: Target) -> bool:
    for connection in connections:
        if "/" not in connection["src"] or workload_of(connection["src"]) != source.label:
            continue
        destination = connection["dst"]
        if target.workload is not None:
            reaches = "/" in destination and workload_of(destination) == target.workload
        else:
            reaches = "/" not in destination and in_range(destination, target.host)
        if reaches and conn_allows(connection["conn"], target.port, target.protocol):
            return True
    return False


def analyse() -> list[dict[str, str]]:
    result = subprocess.run(
        [str(node.BIN_DIR / "netpolicy"), "list", "--kubeconfig", str(node.KUBECONFIG),
         "-o", "json", "-q"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return list(json.loads(result.stdout))


def measure(source: Peer, targets: list[Target]) -> list[bool]:
    argv = json.dumps([[t.host, t.port, t.protocol] for t in targets])
    return list(json.loads(exec_python(source.namespace, source.pod, PROBE, argv, timeout=60)))


def matrix_targets(peers: list[Peer]) -> list[Target]:
    dns = next(p for p in peers if p.workload == "coredns")
    replicas = Counter(p.label for p in peers)

    def name(p: Peer) -> str:  # the operator has two pods of one workload
        return p.label if replicas[p.label] == 1 else f"{p.label} ({p.pod})"

    targets = [
        Target(f"{name(p)}:{port}/{protocol}", p.ip, port, protocol, p.label)
        for p in peers
        for port, protocol in p.ports
        if p is not dns
    ]
    targets += [
        Target(f"{dns.label}:53/{protocol}", dns.ip, 53, protocol, dns.label)
        for protocol in ("TCP", "UDP")
    ]
    # Through kube-proxy's service translation, the same pod: the analyzer sees the pod.
    targets += [
        Target(
            f"kube-dns Service {node.DNS_IP}:53/{protocol}", node.DNS_IP, 53, protocol, dns.label
        )
        for protocol in ("TCP", "UDP")
    ]
    api = (node.HOST_IP, node.api_port())
    targets.append(Target(f"API server {api[0]}:{api[1]}", api[0], api[1], "TCP"))
    for name, (host, port) in {
        "metadata stand-in": METADATA,
        "model stand-in": MODEL,
        "inside acme's egress": INSIDE_ACME_EGRESS,
        "outside every egress": OUTSIDE_EVERY_EGRESS,
    }.items():
        targets.append(Target(f"{name} {host}:{port}", host, port, "TCP"))
    return targets


def live_peers(tenants: list[str], neighbours: dict[str, str]) -> list[Peer]:
    namespaces = [f"tenant-{t}" for t in tenants] + list(neighbours.values())
    namespaces += ["kube-system", "tenantry-system"]
    return [peer(p) for namespace in namespaces for p in pods(namespace)]


def test_measured_connectivity_equals_the_computed_matrix(
    tenants: list[str], outside: Outside, neighbours: dict[str, str]
) -> None:
    peers = live_peers(tenants, neighbours)
    sources = [
        p for p in peers if p.namespace.startswith("tenant-") or p.namespace in neighbours.values()
    ]
    assert len(sources) == 6, sources  # two runtimes, two sandboxes, the gateway, the outsider
    targets = matrix_targets(peers)
    connections = analyse()

    measured: dict[tuple[str, str], bool] = {}
    expected: dict[tuple[str, str], bool] = {}
    for source in sources:
        others = [t for t in targets if t.host != source.ip]
        for target, reached in zip(others, measure(source, others), strict=True):
            measured[source.label, target.label] = reached
            expected[source.label, target.label] = computed(connections, source, target)

    rows = [
        f"  {'allowed' if measured[key] else 'blocked':8} {'(computed: ' + ('allowed' if expected[key] else 'blocked') + ')' if measured[key] != expected[key] else '':22} {key[0]} -> {key[1]}"
        for key in sorted(measured)
    ]
    print(f"measured matrix ({len(measured)} probes):\n" + "\n".join(rows))
    differences = [key for key in measured if measured[key] != expected[key]]
    assert not differences, (
        f"{len(differences)} probe(s) differ from netpol-analyzer's matrix:\n"
        + "\n".join(
            f"  {s} -> {t}: measured {'allowed' if measured[s, t] else 'blocked'}, "
            f"computed {'allowed' if expected[s, t] else 'blocked'}"
            for s, t in sorted(differences)
        )
        + "\nanalyzer connections:\n"
        + "\n".join(f"  {c['src']} -> {c['dst']}: {c['conn']}" for c in connections)
    )
    # The matrix is not vacuous: the paths the tenants need are open, and the ones that matter
    # most are measured closed.
    allowed = {key for key, reached in measured.items() if reached}
    acme_runtime, globex_runtime = "tenant-acme/runtime", "tenant-globex/runtime"
    assert ("e2e-gateway/edge", f"{acme_runtime}:8080/TCP") in allowed
    assert (acme_runtime, "tenant-acme/sandbox:8080/TCP") in allowed
    assert (acme_runtime, f"inside acme's egress {INSIDE_ACME_EGRESS[0]}:443") in allowed
    assert (globex_runtime, f"model stand-in {MODEL[0]}:443") in allowed
    assert (acme_runtime, "kube-system/coredns:53/UDP") in allowed
    assert ("e2e-outsider/intruder", f"metadata stand-in {METADATA[0]}:80") in allowed
    for key in (
        (acme_runtime, "tenant-globex/runtime:8080/TCP"),
        (acme_runtime, "tenant-globex/sandbox:8080/TCP"),
        (globex_runtime, "tenant-acme/runtime:8080/TCP"),
        (globex_runtime, f"inside acme's egress {INSIDE_ACME_EGRESS[0]}:443"),
        ("e2e-outsider/intruder", f"{acme_runtime}:8080/TCP"),
        ("e2e-gateway/edge", "tenant-acme/sandbox:8080/TCP"),
        ("e2e-gateway/edge", f"{globex_runtime}:8080/TCP"),
        (acme_runtime, f"metadata stand-in {METADATA[0]}:80"),
        # globex may reach 0.0.0.0/0 on port 80, except the metadata range: the `except` holds.
        (globex_runtime, f"metadata stand-in {METADATA[0]}:80"),
        ("tenant-acme/sandbox", "kube-system/coredns:53/UDP"),
        ("tenant-acme/sandbox", f"model stand-in {MODEL[0]}:443"),
    ):
        assert key in measured and not measured[key], key
