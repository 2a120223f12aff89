"""Helpers to drive AgentTenants on the real cluster and observe their status and children."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import Client, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Secret
from tenantry.kinds import CHILD_KINDS as KINDS
from waiting import wait_until

SECRET_SOURCE_NAMESPACE = "tenantry-secrets"
# Short, so the idle test can watch two drift periods quickly.
DRIFT_INTERVAL_SECONDS = 3
# What the tests' operator (and audit) let AgentTenantTemplates render (test_templates.py).
TEMPLATE_KINDS = "v1/PersistentVolumeClaim"

AgentTenant = create_global_resource("tenantry.dev", "v1alpha1", "AgentTenant", "agenttenants")
# Every namespaced kind of child, from the operator's own table (RoleBinding included).
CHILD_KINDS = tuple(child.resource for child in KINDS if child.kind != "Namespace")
MANAGED = {"app.kubernetes.io/managed-by": "tenantry"}
# Tests that run operators of their own label their tenants with this key, each with a value of
# its own, and select them with --tenant-selector; the shared `operator` fixture selects only
# the tenants without it. So no tenant is ever reconciled by two operators at once.
OPERATOR_LABEL = "tests.tenantry.dev/operator"


def manifest(
    name: str, spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenant",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec or {},
    }


def apply(kube: Client, body: dict[str, Any]) -> Any:
    return kube.apply(codecs.from_dict(body), field_manager="tenantry-tests", force=True)


def get(kube: Client, name: str) -> Any | None:
    try:
        return kube.get(AgentTenant, name)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def condition(kube: Client, name: str, kind: str) -> dict[str, Any]:
    tenant = get(kube, name)
    for item in ((tenant.status if tenant else None) or {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    return {}


def wait_condition(
    kube: Client,
    name: str,
    kind: str,
    status: str = "True",
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait until the tenant's condition has this status (and reason) for its current generation."""

    def matches() -> dict[str, Any] | None:
        tenant = get(kube, name)
        found = condition(kube, name, kind)
        if (
            not tenant
            or found.get("status") != status
            or (reason and found.get("reason") != reason)
        ):
            return None
        return found if found.get("observedGeneration") == tenant.metadata.generation else None

    return wait_until(matches, f"{name}: {kind}={status} {reason or ''}", timeout=timeout)


def children(kube: Client, namespace: str) -> dict[tuple[str, str], Any]:
    """Every object of a kind the operator manages in a namespace, by (kind, name)."""
    found: dict[tuple[str, str], Any] = {}
    for kind in CHILD_KINDS:
        for obj in kube.list(kind, namespace=namespace):
            found[(kind.__name__, obj.metadata.name)] = obj  # type: ignore[union-attr]
    return found


def writes_outside_status(obj: Any) -> str:
    """A digest of an object without its status and whatever records a write to it alone.

    The cluster's controllers write status at any time (the quota controller recounts a quota's
    usage when it likes); the operator never writes a child's status, so a write of the
    operator's, or anyone's outside status, changes the digest."""
    body = obj.to_dict()
    body.pop("status", None)
    metadata = body.get("metadata", {})
    metadata.pop("resourceVersion", None)
    metadata["managedFields"] = [
        entry for entry in metadata.get("managedFields", []) if entry.get("subresource") != "status"
    ]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def versions(kube: Client, namespace: str) -> dict[tuple[str, str], str]:
    """`writes_outside_status` of every managed-kind object in a namespace and of the namespace:
    equal twice when no one but the cluster's controllers, on status, wrote in between."""
    result = {key: writes_outside_status(obj) for key, obj in children(kube, namespace).items()}
    try:
        result[("Namespace", namespace)] = writes_outside_status(kube.get(Namespace, namespace))
    except ApiError as error:
        if error.status.code != 404:
            raise
    return result


def namespace_gone(kube: Client, namespace: str) -> bool:
    try:
        kube.get(Namespace, namespace)
    except ApiError as error:
        return error.status.code == 404
    return False


def delete(kube: Client, name: str) -> None:
    try:
        kube.delete(AgentTenant, name)
    except ApiError as error:
        if error.status.code != 404:
            raise
    wait_until(lambda: get(kube, name) is None, f"AgentTenant {name} to be deleted")


def audit(kubeconfig: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`tenantry audit --json ARGS` as an admin runs it: exit code and report."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tenantry"), "audit", "--json", *args],
        env={
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "TENANTRY_SECRET_SOURCE_NAMESPACE": SECRET_SOURCE_NAMESPACE,
            "TENANTRY_TEMPLATE_KINDS": TEMPLATE_KINDS,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def drift_events(kube: Client, name: str) -> list[str]:
    """The messages of the DriftCorrected events posted on a tenant, oldest first."""
    events = [
        e
        for e in kube.list(Event, namespace="default")
        if e.involvedObject.name == name and e.reason == "DriftCorrected"
    ]
    events.sort(key=lambda e: e.metadata.creationTimestamp)  # type: ignore[union-attr]
    return [e.message or "" for e in events]


def writes_logged(log: Path, since: int, name: str, kind: str = "") -> list[str]:
    """The operator's log lines after offset `since` that wrote a child of the tenant (of that
    kind): a forced apply that changes nothing leaves no trace in the API server, only here."""
    lines = log.read_text()[since:].splitlines()
    return [
        line
        for line in lines
        if f'"tenant": "{name}"' in line and f'"message": "applied {kind}' in line
    ]


def assert_quiet_at_rest(kube: Client, name: str, log: Path) -> None:
    """Two drift periods (and their jitter) over a tenant write none of its children, change
    nothing in its namespace and post no DriftCorrected event."""
    namespace = get(kube, name).status["namespace"]
    time.sleep(2)  # the pass the last change caused
    before, events, since = (
        versions(kube, namespace),
        len(drift_events(kube, name)),
        len(log.read_text()),
    )
    time.sleep(DRIFT_INTERVAL_SECONDS * 2.5)
    written = writes_logged(log, since, name)
    assert not written, f"{len(written)} writes at rest, the last: {written[-1:]}"
    posted = drift_events(kube, name)[events:]
    assert not posted, f"DriftCorrected at rest: {posted}"
    after = versions(kube, namespace)
    changed = sorted(
        key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
    )
    assert not changed, f"changed at rest: {changed}"


def source_secret(
    kube: Client, name: str, allowed: str | None, data: dict[str, str] | None = None
) -> None:
    """A Secret in the secret-source namespace, granted to the tenants `allowed` names."""
    annotations = {"tenantry.dev/allowed-tenants": allowed} if allowed is not None else {}
    secret = Secret(
        metadata=ObjectMeta(name=name, namespace=SECRET_SOURCE_NAMESPACE, annotations=annotations),
        stringData=data or {"api-key": "sk-test"},
    )
    kube.apply(secret, field_manager="tenantry-tests", force=True)


def model_spec(secret_from: str) -> dict[str, Any]:
    """A spec with a model whose key is copied from the source Secret `secret_from`."""
    return {
        "runtime": {
            "topicTypes": ["default", "code"],
            "agents": [
                {"name": "assistant", "kind": "assistant", "topicType": "default"},
                {"name": "coder", "kind": "coder", "topicType": "code"},
            ],
            "model": {
                "model": "m",
                "baseUrl": "https://203.0.113.7/v1",
                "credentialsSecret": "model-credentials",
            },
        },
        "secrets": [{"name": "model-credentials", "from": secret_from}],
        "network": {"egress": [{"cidr": "203.0.113.0/24", "ports": [443]}]},
    }
