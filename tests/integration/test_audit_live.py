"""`tenantry audit` on the real cluster, run as an admin runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tenants
from lightkube import Client
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    PodSpec,
    SeccompProfile,
    SecurityContext,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.resources.rbac_authorization_v1 import RoleBinding

pytestmark = pytest.mark.cluster


def test_audit_is_clean_for_a_ready_tenant_and_names_each_violation(
    kube: Client, kubeconfig: Path, operator: Path
) -> None:
    name = f"audit-{uuid.uuid4().hex[:6]}"
    namespace = f"tenant-{name}"
    tenants.apply(kube, tenants.manifest(name))
    try:
        tenants.wait_condition(kube, name, "Ready")
        code, report = tenants.audit(kubeconfig, "--tenant", name)
        assert (code, report) == (0, {"tenants": [name], "violations": []})

        kube.create(
            RoleBinding(
                metadata=ObjectMeta(name="backdoor", namespace=namespace),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name="admin"
                ),
                subjects=[Subject(kind="ServiceAccount", name="default", namespace=namespace)],
            )
        )
        kube.create(
            Secret(metadata=ObjectMeta(name="smuggled", namespace=namespace), stringData={"k": "v"})
        )
        kube.create(
            Pod(
                metadata=ObjectMeta(name="stray", namespace=namespace),
                spec=PodSpec(
                    automountServiceAccountToken=True,
                    containers=[
                        Container(
                            name="app",
                            image="example.invalid/stray:1",
                            securityContext=SecurityContext(
                                allowPrivilegeEscalation=False,
                                runAsNonRoot=True,
                                runAsUser=1000,
                                capabilities=Capabilities(drop=["ALL"]),
                                seccompProfile=SeccompProfile(type="RuntimeDefault"),
                            ),
                        )
                    ],
                ),
            )
        )
        code, report = tenants.audit(kubeconfig, "--tenant", name)
        assert code == 1
        found = {(v["check"], v["object"]) for v in report["violations"]}
        assert found >= {
            ("no extra access", f"RoleBinding/{namespace}/backdoor"),
            ("no extra identities or secrets", f"Secret/{namespace}/smuggled"),
            ("no extra workloads", f"Pod/{namespace}/stray"),
            ("no service-account tokens", f"Pod/{namespace}/stray"),
            ("pod security", f"Pod/{namespace}/stray"),  # a writable root filesystem
        }
        assert all(v["tenant"] == name for v in report["violations"])
    finally:
        tenants.delete(kube, name)


def test_audit_of_an_unknown_tenant_says_so(kubeconfig: Path, crd_installed: None) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tenantry"), "audit", "--tenant", "no-such-tenant"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AgentTenant 'no-such-tenant'" in result.stderr
