"""A tenant's sessions volume on the real control plane: the claim the operator renders, bound by
kube-controller-manager's volume binder to a volume the test provides (this cluster has no
provisioner), counted in the tenant's quota, quiet at rest, refused when it cannot be, and
deleted when the tenant stops keeping sessions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tenants
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import HostPathVolumeSource, PersistentVolumeSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, ResourceQuota
from lightkube.types import PatchType
from tenants import DRIFT_INTERVAL_SECONDS
from waiting import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def storage_class(kube: Client) -> Iterator[str]:
    """A class name with one 1Gi volume of it, for the binder to give the tenant's claim.

    A hostPath volume the kwok node never mounts: nothing is written on this machine."""
    name = f"sessions-{uuid.uuid4().hex[:6]}"
    volume = PersistentVolume(
        metadata=ObjectMeta(name=name),
        spec=PersistentVolumeSpec(
            accessModes=["ReadWriteOnce"],
            capacity={"storage": "1Gi"},
            storageClassName=name,
            persistentVolumeReclaimPolicy="Retain",
            hostPath=HostPathVolumeSource(path=f"/nonexistent/tenantry-tests/{name}"),
        ),
    )
    kube.create(volume)
    yield name
    kube.delete(PersistentVolume, name)


@pytest.fixture
def tenant_name(kube: Client, operator: Path) -> Iterator[str]:
    name = f"sess-{uuid.uuid4().hex[:6]}"
    yield name
    tenants.delete(kube, name)


def sessions_spec(storage_class: str, **changes: Any) -> dict[str, Any]:
    sessions = {
        "enabled": True,
        "storage": {"size": "1Gi", "storageClassName": storage_class},
        "retention": {"maxSessions": 100, "maxSessionBytes": 65536},  # 10 MiB with copies
        **changes,
    }
    return {"runtime": {"sessions": sessions}}


def claim(kube: Client, namespace: str) -> PersistentVolumeClaim | None:
    try:
        return kube.get(PersistentVolumeClaim, "sessions", namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def test_a_tenant_with_sessions_gets_its_own_bound_claim_counted_in_its_quota(
    kube: Client, storage_class: str, tenant_name: str
) -> None:
    tenants.apply(kube, tenants.manifest(tenant_name, sessions_spec(storage_class)))
    # Ready means the runtime's Deployment is available: its pod was scheduled, which the
    # scheduler does only once the claim is bound.
    tenants.wait_condition(kube, tenant_name, "Ready", timeout=90)
    namespace = f"tenant-{tenant_name}"
    bound = claim(kube, namespace)
    assert bound is not None and bound.status is not None
    assert bound.status.phase == "Bound"
    assert bound.spec.volumeName == storage_class  # type: ignore[union-attr]
    assert bound.metadata.labels["tenantry.dev/tenant"] == tenant_name  # type: ignore[index,union-attr]
    assert [ref.kind for ref in bound.metadata.ownerReferences or []] == ["AgentTenant"]  # type: ignore[union-attr]

    quota = kube.get(ResourceQuota, "tenant-quota", namespace=namespace)
    assert quota.spec.hard["persistentvolumeclaims"] == "1"  # type: ignore[index,union-attr]
    assert quota.spec.hard["requests.storage"] == "1Gi"  # type: ignore[index,union-attr]
    wait_until(
        lambda: (
            (quota_now := kube.get(ResourceQuota, "tenant-quota", namespace=namespace))
            and (quota_now.status.used or {}).get("persistentvolumeclaims") == "1"
        ),  # type: ignore[union-attr]
        "the quota to count the claim",
    )
    runtime = kube.get(Deployment, "runtime", namespace=namespace)
    assert runtime.spec.strategy.type == "Recreate"  # type: ignore[union-attr]

    # The binder's and the scheduler's writes are no drift: nothing is written at rest.
    time.sleep(2)
    before = tenants.versions(kube, namespace)
    tenant_version = tenants.get(kube, tenant_name).metadata.resourceVersion
    time.sleep(DRIFT_INTERVAL_SECONDS * 2.5)
    assert tenants.versions(kube, namespace) == before
    assert tenants.get(kube, tenant_name).metadata.resourceVersion == tenant_version


def test_refused_session_changes_leave_the_claim_as_it_was_and_turning_off_deletes_it(
    kube: Client, storage_class: str, tenant_name: str
) -> None:
    namespace = f"tenant-{tenant_name}"
    tenants.apply(kube, tenants.manifest(tenant_name, sessions_spec(storage_class)))
    tenants.wait_condition(kube, tenant_name, "Ready", timeout=90)
    before = tenants.versions(kube, namespace)

    # Retention that cannot fit the volume: refused before anything is written.
    too_many = sessions_spec(storage_class, retention={"maxSessions": 100_000})
    tenants.apply(kube, tenants.manifest(tenant_name, too_many))
    stalled = tenants.wait_condition(kube, tenant_name, "Stalled", reason="InvalidSpec")
    assert "must fit in storage.size" in stalled["message"]
    assert tenants.versions(kube, namespace) == before

    # A volume larger than this cluster lets a tenant have (--max-session-storage 10Gi).
    too_big = sessions_spec(
        storage_class, storage={"size": "20Gi", "storageClassName": storage_class}
    )
    tenants.apply(kube, tenants.manifest(tenant_name, too_big))
    stalled = tenants.wait_condition(kube, tenant_name, "Stalled", reason="NotAllowed")
    assert "--max-session-storage" in stalled["message"]
    assert tenants.versions(kube, namespace) == before

    # Turning sessions off deletes the claim (and with it every history) and the quota's share.
    tenants.apply(kube, tenants.manifest(tenant_name, {}))
    tenants.wait_condition(kube, tenant_name, "Ready", timeout=90)
    wait_until(lambda: claim(kube, namespace) is None, "the sessions claim to be deleted")
    quota = kube.get(ResourceQuota, "tenant-quota", namespace=namespace)
    assert quota.spec.hard["requests.storage"] == "0"  # type: ignore[index,union-attr]
    assert quota.spec.hard["persistentvolumeclaims"] == "0"  # type: ignore[index,union-attr]
    runtime = kube.get(Deployment, "runtime", namespace=namespace)
    assert runtime.spec.strategy.type == "RollingUpdate"  # type: ignore[union-attr]

    # And on again: the quota makes room before the claim is written (the quota controller
    # must have counted the new limit before admission lets the claim in).
    kube.patch(PersistentVolume, storage_class, {"spec": {"claimRef": None}})  # released: reusable
    tenants.apply(kube, tenants.manifest(tenant_name, sessions_spec(storage_class)))
    tenants.wait_condition(kube, tenant_name, "Ready", timeout=90)
    bound = claim(kube, namespace)
    assert bound is not None and bound.status.phase == "Bound"  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["overwritten", "removed"])
def test_a_label_someone_adds_to_the_claim_is_no_drift_and_one_of_ours_is_taken_back(
    kube: Client, storage_class: str, tenant_name: str, operator: Path, change: str
) -> None:
    """Finding: a claim is never replaced, so a manager of fields Tenantry does not set stays in
    its managedFields after a forced apply; every pass re-applied the claim and posted
    DriftCorrected. A change to a field Tenantry does set is still taken back (and a removal,
    which leaves no manager of it behind, went unnoticed)."""
    tenants.apply(kube, tenants.manifest(tenant_name, sessions_spec(storage_class)))
    tenants.wait_condition(kube, tenant_name, "Ready", timeout=90)
    namespace = f"tenant-{tenant_name}"
    component = "app.kubernetes.io/component"

    def label(labels: dict[str, str | None]) -> None:
        kube.patch(
            PersistentVolumeClaim,
            "sessions",
            {"metadata": {"labels": labels}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager="kubectl-label",
        )

    def taken_back(times: int) -> None:
        label({component: "someone" if change == "overwritten" else None})
        wait_until(
            lambda: (claim(kube, namespace).metadata.labels or {}).get(component) == "runtime",  # type: ignore[union-attr]
            f"the {change} {component} label to be restored",
        )
        wait_until(
            lambda: len(tenants.drift_events(kube, tenant_name)) == times,
            f"DriftCorrected #{times}",
        )
        assert tenants.drift_events(kube, tenant_name)[-1].startswith(
            f"restored PersistentVolumeClaim {namespace}/sessions ("
        )
        tenants.assert_quiet_at_rest(kube, tenant_name, operator)

    taken_back(1)
    label({"backup": "nightly"})
    tenants.assert_quiet_at_rest(kube, tenant_name, operator)
    taken_back(2)
    assert (claim(kube, namespace).metadata.labels or {})["backup"] == "nightly"  # type: ignore[union-attr]
