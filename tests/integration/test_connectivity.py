"""The connectivity proof: np-guard's netpol-analyzer over the policies of three tenants.

It computes every allowed connection from the NetworkPolicies and workloads, rendered (with a
few neighbours: cluster DNS, a gateway namespace the first tenant admits, an outsider) and
live on the cluster. The invariants: no path between tenants, no egress from any sandbox,
and runtime egress only to DNS, its own sandbox and the CIDRs its tenant lists, with cloud
metadata and private ranges carved out of broader ones.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tenants
import yaml
from lightkube import Client
from lightkube.resources.core_v1 import Namespace
from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant
from tenantry.render import BLOCKED_RANGES, render

BIN_DIR = (
    Path(
        os.environ.get("TENANTRY_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tenantry"
    )
    / "bin"
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def specs(suffix: str = "") -> dict[str, dict[str, Any]]:
    """Three tenants: one admitting a gateway and reaching one API, one bare, one with wide egress."""
    return {
        f"acme{suffix}": {
            "network": {
                "ingressFrom": [
                    {"namespaceSelector": {"matchLabels": {"tenantry.dev/gateway": "true"}}}
                ],
                "egress": [{"cidr": "203.0.113.0/24", "ports": [443]}],
            },
        },
        f"globex{suffix}": {"sandbox": {"enabled": False}},
        f"initech{suffix}": {
            "runtime": {"agents": [{"name": "coder", "kind": "coder", "topicType": "code"}]},
            "network": {
                "egress": [
                    {"cidr": "0.0.0.0/0", "ports": [443]},
                    {"cidr": "10.20.0.0/16", "ports": [5432]},
                ]
            },
        },
    }


def deployment(
    namespace: str, name: str, labels: dict[str, str], **namespace_labels: str
) -> list[dict[str, Any]]:
    namespace_labels["kubernetes.io/metadata.name"] = namespace
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": namespace_labels},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": name, "image": "example.invalid/x:1"}]},
                },
            },
        },
    ]


NEIGHBOURS = [
    *deployment("kube-system", "coredns", {"k8s-app": "kube-dns"}),
    *deployment("gateway", "edge", {"app": "edge"}, **{"tenantry.dev/gateway": "true"}),
    *deployment("outsider", "intruder", {"app": "intruder"}),
]


@dataclass(frozen=True)
class Connection:
    src: str
    dst: str
    conn: str

    @property
    def src_namespace(self) -> str | None:
        return self.src.split("/", 1)[0] if "/" in self.src else None

    @property
    def dst_namespace(self) -> str | None:
        return self.dst.split("/", 1)[0] if "/" in self.dst else None

    def dst_networks(self) -> list[IPNetwork]:
        """The IP range "a-b" of an external destination, as networks."""
        first, _, last = self.dst.partition("-")
        start, end = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
        return list(ipaddress.summarize_address_range(start, end))  # type: ignore[arg-type]


def analyse(*args: str) -> list[Connection]:
    result = subprocess.run(
        [str(BIN_DIR / "netpolicy"), "list", "-o", "json", "-q", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return [Connection(c["src"], c["dst"], c["conn"]) for c in json.loads(result.stdout)]


def check_isolation(
    connections: Iterable[Connection],
    tenant_specs: dict[str, dict[str, Any]],
    gateways: frozenset[str] = frozenset({"gateway"}),
) -> set[tuple[str, str, str]]:
    """Assert the invariants; return the connections that involve a tenant, for positive checks.

    GATEWAYS: the namespaces labelled as the tenants' `ingressFrom` selects (on a live cluster,
    every one so labelled: `make demo` leaves one behind)."""
    namespaces = {f"tenant-{name}": spec for name, spec in tenant_specs.items()}
    involved = set()
    for c in connections:
        src_ns, dst_ns = c.src_namespace, c.dst_namespace
        if src_ns not in namespaces and dst_ns not in namespaces:
            continue
        involved.add((c.src, c.dst, c.conn))
        assert not (src_ns in namespaces and dst_ns in namespaces and src_ns != dst_ns), (
            f"cross-tenant path: {c}"
        )
        assert not (src_ns in namespaces and "/sandbox" in c.src), f"a sandbox has egress: {c}"
        if dst_ns in namespaces:
            own_sandbox = (
                src_ns == dst_ns
                and "/runtime" in c.src
                and "/sandbox" in c.dst
                and c.conn == "TCP 8080"
            )
            admitted = (
                src_ns in gateways
                and c.dst.startswith(f"{dst_ns}/runtime")
                and c.conn == "TCP 8080"
                and bool(namespaces[dst_ns].get("network", {}).get("ingressFrom"))
            )
            assert own_sandbox or admitted, f"unexpected path into a tenant: {c}"
        if src_ns in namespaces and dst_ns is None:
            listed = [
                ipaddress.ip_network(rule["cidr"])
                for rule in namespaces[src_ns].get("network", {}).get("egress", [])
            ]
            for network in c.dst_networks():
                assert any(network.subnet_of(allowed) for allowed in listed), (
                    f"egress outside the listed CIDRs: {c}"
                )  # type: ignore[arg-type]
                for blocked in BLOCKED_RANGES:
                    if network.version == blocked.version and network.overlaps(blocked):  # type: ignore[arg-type]
                        assert any(
                            a.version == blocked.version and a.subnet_of(blocked) for a in listed
                        ), f"egress into {blocked}: {c}"  # type: ignore[arg-type]
        if src_ns in namespaces and dst_ns is not None and dst_ns != src_ns:
            assert (
                dst_ns == "kube-system"
                and "coredns" in c.dst
                and set(c.conn.split(",")) <= {"TCP 53", "UDP 53"}
            ), f"egress to another namespace: {c}"
    return involved


def test_rendered_policies_isolate_tenants(tmp_path: Path) -> None:
    tenant_specs = specs()
    manifests = list(NEIGHBOURS)
    for name, spec in tenant_specs.items():
        manifests += render(
            AgentTenant.model_validate({"metadata": {"name": name}, "spec": spec}), OperatorConfig()
        )
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(manifests))

    involved = check_isolation(analyse("--dirpath", str(tmp_path)), tenant_specs)
    print("connections involving tenants (rendered):")
    for connection in sorted(involved):
        print("  ", *connection)
    # The paths that must exist do: without them the invariants above would hold vacuously.
    assert (
        "tenant-acme/runtime[Deployment]",
        "tenant-acme/sandbox[Deployment]",
        "TCP 8080",
    ) in involved
    assert ("gateway/edge[Deployment]", "tenant-acme/runtime[Deployment]", "TCP 8080") in involved
    assert ("tenant-acme/runtime[Deployment]", "203.0.113.0-203.0.113.255", "TCP 443") in involved
    assert ("tenant-initech/runtime[Deployment]", "10.20.0.0-10.20.255.255", "TCP 5432") in involved
    assert any(c[0] == "tenant-globex/runtime[Deployment]" and "coredns" in c[1] for c in involved)
    assert not any(c[0] == "outsider/intruder[Deployment]" for c in involved)


@pytest.mark.cluster
def test_live_policies_isolate_tenants(kube: Client, kubeconfig: Path, operator: Path) -> None:
    suffix = f"-{uuid.uuid4().hex[:4]}"
    tenant_specs = specs(suffix)
    try:
        for name, spec in tenant_specs.items():
            tenants.apply(kube, tenants.manifest(name, spec))
        for name in tenant_specs:
            tenants.wait_condition(kube, name, "Ready")
        gateways = frozenset(
            str(namespace.metadata.name)  # type: ignore[union-attr]
            for namespace in kube.list(Namespace, labels={"tenantry.dev/gateway": "true"})
        )
        involved = check_isolation(analyse("--kubeconfig", str(kubeconfig)), tenant_specs, gateways)
        print("connections involving tenants (live):")
        for connection in sorted(involved):
            print("  ", *connection)
        acme = f"tenant-acme{suffix}"
        # Live workloads are named by ReplicaSet ("runtime-<hash>"); the paths that must exist do.
        assert any(
            src.startswith(f"{acme}/runtime")
            and dst.startswith(f"{acme}/sandbox")
            and conn == "TCP 8080"
            for src, dst, conn in involved
        )
        assert any(
            src.startswith(f"{acme}/runtime") and dst == "203.0.113.0-203.0.113.255"
            for src, dst, _ in involved
        )
    finally:
        for name in tenant_specs:
            tenants.delete(kube, name)
