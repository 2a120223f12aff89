"""The operator, run as `tenantry run`, against the real control plane.

Each test drives AgentTenants through the API server and checks what a user would check:
status conditions, the children in the tenant namespace, and that nothing else changed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenants
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace, Pod, Secret
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType
from operator_process import OperatorProcess, StartOperator
from tenantry.watches import INACTIVITY_SECONDS
from tenants import (
    DRIFT_INTERVAL_SECONDS,
    OPERATOR_LABEL,
    SECRET_SOURCE_NAMESPACE,
    model_spec,
    source_secret,
)
from waiting import wait_until

from tests.support.uid_slots import names_in_one_uid_slot

pytestmark = pytest.mark.cluster

NewTenant = Callable[..., str]


@pytest.fixture
def new_tenant(kube: Client, operator: Path) -> Iterator[NewTenant]:
    """Apply AgentTenants with unique names; delete them (and wait) when the test ends."""
    names: list[str] = []

    def make(spec: dict[str, Any] | None = None, prefix: str = "t", name: str | None = None) -> str:
        name = name or f"{prefix}-{uuid.uuid4().hex[:6]}"
        tenants.apply(kube, tenants.manifest(name, spec))
        names.append(name)
        return name

    yield make
    for name in names:
        tenants.delete(kube, name)


@pytest.fixture(autouse=True)
def operator_log_on_failure(request: pytest.FixtureRequest, operator: Path) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("---- last lines of the operator log ----")
        print("\n".join(operator.read_text().splitlines()[-60:]))


def ready_tenant_with_model(
    kube: Client, new_tenant: NewTenant, prefix: str, api_key: str
) -> tuple[str, str]:
    """A Ready tenant whose model key is copied from a source Secret made for it: (tenant, Secret)."""
    secret_name = f"src-{uuid.uuid4().hex[:6]}"
    name = new_tenant(prefix=prefix)
    source_secret(kube, secret_name, allowed=name, data={"api-key": api_key})
    tenants.apply(kube, tenants.manifest(name, model_spec(secret_name)))
    tenants.wait_condition(kube, name, "Ready")
    return name, secret_name


def namespace_of(name: str) -> str:
    return f"tenant-{name}"


def running_pods(kube: Client, namespace: str) -> list[Pod]:
    return [
        p for p in kube.list(Pod, namespace=namespace) if p.status and p.status.phase == "Running"
    ]


def test_a_tenant_becomes_ready_with_every_child_labelled_owned_and_admitted(
    kube: Client, new_tenant: NewTenant
) -> None:
    name, _ = ready_tenant_with_model(kube, new_tenant, "ready", "sk-test")
    assert tenants.condition(kube, name, "Ready")["reason"] == "Ready"

    tenant = tenants.get(kube, name)
    namespace = namespace_of(name)
    assert tenant.status["namespace"] == namespace
    assert tenant.status["topicSource"] == name
    assert tenant.status["observedGeneration"] == tenant.metadata.generation
    assert {c["type"] for c in tenant.status["conditions"]} >= {
        "Ready",
        "Reconciling",
        "Stalled",
        "SecretsReady",
        "RuntimeReady",
        "SandboxReady",
    }
    assert tenants.condition(kube, name, "Stalled")["status"] == "False"
    assert tenants.condition(kube, name, "Reconciling")["status"] == "False"

    ns = kube.get(Namespace, namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"  # type: ignore[index,union-attr]
    found = tenants.children(kube, namespace)
    expected = {
        ("ResourceQuota", "tenant-quota"),
        ("LimitRange", "tenant-defaults"),
        ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "runtime"),
        ("NetworkPolicy", "sandbox"),
        ("ServiceAccount", "default"),
        ("ServiceAccount", "runtime"),
        ("ServiceAccount", "sandbox"),
        ("Secret", "model-credentials"),
        ("Secret", "sandbox-token"),
        ("ConfigMap", "runtime-config"),
        ("Deployment", "runtime"),
        ("Deployment", "sandbox"),
        ("Service", "runtime"),
        ("Service", "sandbox"),
    }
    managed = {
        key
        for key, obj in found.items()
        if (obj.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "tenantry"
    }
    assert managed == expected
    for key in [*expected, ("Namespace", namespace)]:
        obj = ns if key[0] == "Namespace" else found[key]
        assert obj.metadata.labels["tenantry.dev/tenant"] == name, key
        owners = obj.metadata.ownerReferences or []
        assert [(o.kind, o.name, o.uid, o.controller) for o in owners] == [
            ("AgentTenant", name, tenant.metadata.uid, True)
        ], key

    # Admitted under PSA "restricted" (enforced on the namespace) and running on kwok nodes.
    pods = wait_until(
        lambda: (p := running_pods(kube, namespace)) and len(p) == 2 and p, "two running pods"
    )
    assert {p.metadata.labels["tenantry.dev/component"] for p in pods} == {"runtime", "sandbox"}  # type: ignore[index,union-attr]
    for pod in pods:
        assert pod.spec.automountServiceAccountToken is False  # type: ignore[union-attr]

    # Credentials reach the runtime only; the copied value is the source's.
    copied = kube.get(Secret, "model-credentials", namespace=namespace)
    assert base64.b64decode(copied.data["api-key"]).decode() == "sk-test"  # type: ignore[index]
    sandbox = kube.get(Deployment, "sandbox", namespace=namespace).spec.template.spec  # type: ignore[union-attr]
    mounted = {v.secret.secretName for v in sandbox.volumes or [] if v.secret}  # type: ignore[union-attr]
    assert mounted == set()  # its token comes in its env (code it runs could read a file)
    runtime = kube.get(Deployment, "runtime", namespace=namespace).spec.template.spec  # type: ignore[union-attr]
    assert {v.secret.secretName for v in runtime.volumes or [] if v.secret} == {
        "model-credentials",
        "sandbox-token",
    }  # type: ignore[union-attr]

    events = [e for e in kube.list(Event, namespace="default") if e.involvedObject.name == name]
    assert "Ready" in {e.reason for e in events}


def test_a_spec_change_rolls_out_and_removed_pieces_are_deleted(
    kube: Client, new_tenant: NewTenant
) -> None:
    name, secret_name = ready_tenant_with_model(kube, new_tenant, "change", "sk-one")
    spec = model_spec(secret_name)
    namespace = namespace_of(name)
    token_before = kube.get(Secret, "sandbox-token", namespace=namespace).data["token"]  # type: ignore[index]
    template_before = kube.get(
        Deployment, "runtime", namespace=namespace
    ).spec.template.metadata.annotations  # type: ignore[union-attr]
    runtime_pods = {"tenantry.dev/component": "runtime"}
    replica_sets_before = {
        rs.metadata.name  # type: ignore[union-attr]
        for rs in kube.list(ReplicaSet, namespace=namespace, labels=runtime_pods)
    }

    # A changed config rolls the runtime out: a new pod template, so a new ReplicaSet.
    spec["runtime"]["topicTypes"] = ["default", "code", "billing"]
    tenants.apply(kube, tenants.manifest(name, spec))
    tenants.wait_condition(kube, name, "Ready")
    config = kube.get(ConfigMap, "runtime-config", namespace=namespace).data["runtime.json"]  # type: ignore[index]
    assert '"billing"' in config
    template_after = kube.get(
        Deployment, "runtime", namespace=namespace
    ).spec.template.metadata.annotations  # type: ignore[union-attr]
    assert template_after["tenantry.dev/config-hash"] != template_before["tenantry.dev/config-hash"]
    # A new ReplicaSet, and (revisionHistoryLimit 0) no old one kept to be scaled up by hand.
    replica_sets = {
        rs.metadata.name  # type: ignore[union-attr]
        for rs in kube.list(ReplicaSet, namespace=namespace, labels=runtime_pods)
    }
    assert len(replica_sets - replica_sets_before) == 1
    wait_until(
        lambda: {
            rs.metadata.name  # type: ignore[union-attr]
            for rs in kube.list(ReplicaSet, namespace=namespace, labels=runtime_pods)
        }.isdisjoint(replica_sets_before),
        "the old ReplicaSet to be removed",
    )
    # The sandbox token is generated once and survives every reconcile.
    assert kube.get(Secret, "sandbox-token", namespace=namespace).data["token"] == token_before  # type: ignore[index]

    # A rotated source Secret is copied again and restarts the runtime, with no change to the tenant.
    source_secret(kube, secret_name, allowed=name, data={"api-key": "sk-two"})

    def rotated() -> bool:
        copied = kube.get(Secret, "model-credentials", namespace=namespace).data["api-key"]  # type: ignore[index]
        return base64.b64decode(copied).decode() == "sk-two"

    wait_until(rotated, "the rotated key to be copied")
    tenants.wait_condition(kube, name, "Ready")
    template_rotated = kube.get(
        Deployment, "runtime", namespace=namespace
    ).spec.template.metadata.annotations  # type: ignore[union-attr]
    assert (
        template_rotated["tenantry.dev/config-hash"] != template_after["tenantry.dev/config-hash"]
    )

    # Without a model, secrets or sandbox, their children go.
    tenants.apply(kube, tenants.manifest(name, {"sandbox": {"enabled": False}}))
    tenants.wait_condition(kube, name, "Ready")
    left = set(tenants.children(kube, namespace))
    for gone in [
        ("Secret", "model-credentials"),
        ("Secret", "sandbox-token"),
        ("Deployment", "sandbox"),
        ("Service", "sandbox"),
        ("NetworkPolicy", "sandbox"),
        ("ServiceAccount", "sandbox"),
    ]:
        assert gone not in left, gone
    assert ("Deployment", "runtime") in left
    assert tenants.condition(kube, name, "SandboxReady")["reason"] == "Disabled"


def test_drift_is_corrected(kube: Client, new_tenant: NewTenant) -> None:
    name, _ = ready_tenant_with_model(kube, new_tenant, "drift", "sk-drift")
    namespace = namespace_of(name)
    original = kube.get(NetworkPolicy, "default-deny", namespace=namespace).spec.to_dict()  # type: ignore[union-attr]

    kube.delete(NetworkPolicy, "runtime", namespace=namespace)
    kube.delete(Secret, "model-credentials", namespace=namespace)
    kube.delete(Deployment, "sandbox", namespace=namespace)
    # Someone opens the default-deny policy to everything.
    kube.patch(
        NetworkPolicy,
        "default-deny",
        {
            "spec": {
                "podSelector": {"matchLabels": {"nothing": "selected"}},
                "ingress": [{}],
                "egress": [{}],
            }
        },
        namespace=namespace,
        patch_type=PatchType.MERGE,
        field_manager="intruder",
    )

    def restored() -> bool:
        found = tenants.children(kube, namespace)
        return (
            ("NetworkPolicy", "runtime") in found
            and ("Secret", "model-credentials") in found
            and ("Deployment", "sandbox") in found
            and found[("NetworkPolicy", "default-deny")].spec.to_dict() == original
        )

    wait_until(restored, "deleted and tampered children to be restored", timeout=60)
    tenants.wait_condition(kube, name, "Ready")
    events = [e for e in kube.list(Event, namespace="default") if e.involvedObject.name == name]
    assert "DriftCorrected" in {e.reason for e in events}


def test_a_label_taken_back_from_a_deployment_leaves_the_tenant_ready(
    kube: Client, new_tenant: NewTenant
) -> None:
    """Finding: taking back a label someone added to a Deployment replaced it without the
    revision annotation its controller had written. A Deployment's generation counts its
    annotations, so the replace started a rollout of nothing: the tenant went NotReady, with a
    Warning event, until the controller wrote the annotation again."""
    name = new_tenant(prefix="relabel")
    ready = tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    generation = kube.get(Deployment, "runtime", namespace=namespace).metadata.generation  # type: ignore[union-attr]
    time.sleep(1.1)  # a flap now would move lastTransitionTime, which has whole seconds
    kube.patch(
        Deployment,
        "runtime",
        {"metadata": {"labels": {"team": "intruder"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
        field_manager="intruder",
    )

    def taken_back() -> bool:
        labels = kube.get(Deployment, "runtime", namespace=namespace).metadata.labels or {}  # type: ignore[union-attr]
        corrected = any("Deployment" in message for message in tenants.drift_events(kube, name))
        return corrected and "team" not in labels

    wait_until(taken_back, "the label to be taken back", timeout=60)
    time.sleep(3)  # the passes that the replace's own events cause
    after = kube.get(Deployment, "runtime", namespace=namespace)
    assert after.metadata.generation == generation  # type: ignore[union-attr]
    now = tenants.condition(kube, name, "Ready")
    assert (now["status"], now["lastTransitionTime"]) == ("True", ready["lastTransitionTime"])
    warned = [
        e.reason
        for e in kube.list(Event, namespace="default")
        if e.involvedObject.name == name and e.reason == "NotReady"
    ]
    assert not warned


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        ("user-owned", "NamespaceConflict"),
        ("labelled-as-ours", "NamespaceConflict"),
        ("other-tenant", "NamespaceConflict"),
        (SECRET_SOURCE_NAMESPACE, "ReservedNamespace"),
    ],
)
def test_a_namespace_tenantry_does_not_own_is_never_adopted(
    kube: Client,
    new_tenant: NewTenant,
    make_namespace: Callable[..., str],
    claimed: str,
    expected: str,
) -> None:
    if claimed == "user-owned":
        # Inside the platform's tenant namespace pattern (tenant-*): the ownership check refuses it.
        claimed = make_namespace("tenant-users")
        kube.create(
            ConfigMap(metadata=ObjectMeta(name="precious", namespace=claimed), data={"keep": "me"})
        )
    elif claimed == "labelled-as-ours":
        # Labels anyone can set do not make a namespace ours: only the tenant's ownerReference does.
        claimed = make_namespace(
            "tenant-fake", labels={**tenants.MANAGED, "tenantry.dev/tenant": "will-be-set"}
        )
    elif claimed == "other-tenant":
        owner = new_tenant(prefix="owner")
        tenants.wait_condition(kube, owner, "Ready")
        claimed = namespace_of(owner)
    before = tenants.versions(kube, claimed)
    labels_before = kube.get(Namespace, claimed).metadata.labels  # type: ignore[union-attr]

    intruder = f"intruder-{uuid.uuid4().hex[:6]}"
    if "fake" in claimed:
        kube.patch(
            Namespace,
            claimed,
            {"metadata": {"labels": {"tenantry.dev/tenant": intruder}}},
            field_manager="user",
        )
        before = tenants.versions(kube, claimed)
        labels_before = kube.get(Namespace, claimed).metadata.labels  # type: ignore[union-attr]
    new_tenant({"namespace": claimed}, name=intruder)
    stalled = tenants.wait_condition(kube, intruder, "Stalled", reason=expected)
    assert claimed in stalled["message"]
    assert "spec.namespace" in stalled["message"]
    assert tenants.condition(kube, intruder, "Ready")["status"] == "False"
    time.sleep(1)  # would any write have followed the refusal, it would show by now
    assert tenants.versions(kube, claimed) == before
    assert kube.get(Namespace, claimed).metadata.labels == labels_before  # type: ignore[union-attr]


@pytest.mark.parametrize("namespace", ["kube-system", "default", "kube-public"])
def test_cluster_namespaces_are_refused_by_the_api_server(
    kube: Client, operator: Path, namespace: str
) -> None:
    before = tenants.versions(kube, namespace)
    with pytest.raises(ApiError) as refused:
        tenants.apply(
            kube, tenants.manifest(f"sys-{uuid.uuid4().hex[:6]}", {"namespace": namespace})
        )
    assert 'spec.namespace must not be "default" or start with "kube-"' in str(
        refused.value.status.message
    )
    assert tenants.versions(kube, namespace) == before


@pytest.mark.parametrize(
    ("allowed", "exists", "reason"),
    [
        ("someone-else", True, "SecretNotAllowed"),
        (None, True, "SecretNotAllowed"),
        ("", False, "SecretNotFound"),
    ],
)
def test_secrets_are_copied_only_when_the_source_allows_the_tenant(
    kube: Client, new_tenant: NewTenant, allowed: str | None, exists: bool, reason: str
) -> None:
    secret_name = f"src-{uuid.uuid4().hex[:6]}"
    if exists:
        source_secret(kube, secret_name, allowed=allowed, data={"api-key": "sk-not-yours"})
    name = new_tenant(model_spec(secret_name), prefix="scoped")
    stalled = tenants.wait_condition(kube, name, "Stalled", reason=reason)
    assert "spec.secrets[0].from" in stalled["message"]
    assert secret_name in stalled["message"]
    assert tenants.namespace_gone(kube, namespace_of(name)), "a refused tenant must touch nothing"

    # Allowing the tenant un-stalls it without any change to the tenant.
    source_secret(kube, secret_name, allowed=f"other,{name}", data={"api-key": "sk-yours"})
    tenants.wait_condition(kube, name, "Ready", timeout=30)


@pytest.mark.parametrize("revoke", ["allowed-tenants", "source deleted"])
def test_revoking_a_secret_deletes_the_copy_and_stops_the_runtime(
    kube: Client, new_tenant: NewTenant, revoke: str
) -> None:
    """Finding: a revoked grant stalled the tenant but left the copy mounted in the runtime."""
    name, secret_name = ready_tenant_with_model(kube, new_tenant, "revoke", "sk-revoked")
    namespace = namespace_of(name)
    if revoke == "source deleted":
        kube.delete(Secret, secret_name, namespace=SECRET_SOURCE_NAMESPACE)
        reason = "SecretNotFound"
    else:
        source_secret(kube, secret_name, allowed="someone-else", data={"api-key": "sk-revoked"})
        reason = "SecretNotAllowed"
    stalled = tenants.wait_condition(kube, name, "Stalled", reason=reason)
    assert "spec.secrets[0].from" in stalled["message"]

    def revoked() -> bool:
        found = tenants.children(kube, namespace)
        pods = [
            p
            for p in kube.list(
                Pod, namespace=namespace, labels={"tenantry.dev/component": "runtime"}
            )
        ]
        return (
            ("Secret", "model-credentials") not in found
            and ("Deployment", "runtime") not in found
            and not pods
        )

    wait_until(revoked, "the copy, the runtime and its pods to be gone", timeout=60)
    secrets = tenants.condition(kube, name, "SecretsReady")
    assert (secrets["status"], secrets["reason"]) == ("False", "Revoked")
    assert f"deleted {namespace}/model-credentials" in secrets["message"]
    runtime = tenants.condition(kube, name, "RuntimeReady")
    assert (runtime["status"], runtime["reason"]) == ("False", "Stopped")
    assert tenants.condition(kube, name, "Ready")["status"] == "False"
    # The rest of the tenant is untouched: the sandbox and the policies stay.
    assert ("Deployment", "sandbox") in tenants.children(kube, namespace)
    events = [e for e in kube.list(Event, namespace="default") if e.involvedObject.name == name]
    assert any(e.reason == "Pruned" and "Secret" in (e.message or "") for e in events)

    # Granting it again brings everything back.
    source_secret(kube, secret_name, allowed=name, data={"api-key": "sk-granted"})
    tenants.wait_condition(kube, name, "Ready", timeout=60)
    copy = kube.get(Secret, "model-credentials", namespace=namespace)
    assert base64.b64decode(copy.data["api-key"]).decode() == "sk-granted"  # type: ignore[index]


def test_a_grant_follows_the_tenant_name(kube: Client, new_tenant: NewTenant) -> None:
    """The documented rule (docs/security.md): a grant names a tenant, and a new AgentTenant of
    a deleted tenant's name gets it. Creating AgentTenants is the platform admin's right alone;
    remove the name from tenantry.dev/allowed-tenants before the name is given out again."""
    name, secret_name = ready_tenant_with_model(kube, new_tenant, "heir", "sk-heir")
    first_uid = tenants.get(kube, name).metadata.uid
    tenants.delete(kube, name)
    tenants.apply(kube, tenants.manifest(name, model_spec(secret_name)))
    tenants.wait_condition(kube, name, "Ready")
    assert tenants.get(kube, name).metadata.uid != first_uid
    copy = kube.get(Secret, "model-credentials", namespace=namespace_of(name))
    assert base64.b64decode(copy.data["api-key"]).decode() == "sk-heir"  # type: ignore[index]


@pytest.mark.parametrize("forged_owner", [False, True])
def test_an_object_labelled_as_another_tenants_child_is_left_alone(
    kube: Client, new_tenant: NewTenant, forged_owner: bool
) -> None:
    """Finding: a ConfigMap in globex's namespace labelled `tenantry.dev/tenant: acme` was taken
    for acme's child and pruned on acme's behalf. Children are recognised by owner uid and by the
    tenant's own namespace, never by a label."""
    acme = new_tenant(prefix="acme")
    globex = new_tenant(prefix="globex")
    tenants.wait_condition(kube, acme, "Ready")
    tenants.wait_condition(kube, globex, "Ready")
    owner = tenants.get(kube, acme)
    references = (
        [
            {
                "apiVersion": "tenantry.dev/v1alpha1",
                "kind": "AgentTenant",
                "name": acme,
                "uid": owner.metadata.uid,
                "controller": True,
            }
        ]
        if forged_owner
        else None
    )
    planted = ConfigMap(
        metadata=ObjectMeta(
            name="planted",
            namespace=namespace_of(globex),
            labels={**tenants.MANAGED, "tenantry.dev/tenant": acme},
            ownerReferences=references,  # type: ignore[arg-type]
        ),
        data={"keep": "me"},
    )
    kube.create(planted)
    time.sleep(3 * DRIFT_INTERVAL_SECONDS)  # several drift passes of both tenants
    assert kube.get(ConfigMap, "planted", namespace=namespace_of(globex)).data == {"keep": "me"}
    events = [e for e in kube.list(Event, namespace="default") if e.involvedObject.name == acme]
    assert not [e for e in events if e.reason == "Pruned"]
    kube.delete(ConfigMap, "planted", namespace=namespace_of(globex))


def test_fields_someone_adds_to_a_child_are_removed(kube: Client, new_tenant: NewTenant) -> None:
    """A forced apply restores the fields we own, but not fields another manager added: a key
    added to a policy's podSelector narrows it to no pod, a key added to the runtime's config
    rides along. Drift correction removes them, and their manager."""
    name = new_tenant(prefix="added")
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    original = kube.get(NetworkPolicy, "sandbox", namespace=namespace).spec.to_dict()  # type: ignore[union-attr]
    config = kube.get(ConfigMap, "runtime-config", namespace=namespace).data
    kube.patch(
        NetworkPolicy,
        "sandbox",
        {"spec": {"podSelector": {"matchLabels": {"narrowed": "to-nothing"}}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
        field_manager="intruder",
    )
    kube.patch(
        ConfigMap,
        "runtime-config",
        {"data": {"extra.json": "{}"}, "metadata": {"labels": {"added": "label"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
        field_manager="intruder",
    )

    def managers(obj: Any) -> set[str]:
        return {entry.manager for entry in obj.metadata.managedFields or []}

    def removed() -> bool:
        policy = kube.get(NetworkPolicy, "sandbox", namespace=namespace)
        config_map = kube.get(ConfigMap, "runtime-config", namespace=namespace)
        return (
            policy.spec.to_dict() == original  # type: ignore[union-attr]
            and config_map.data == config
            and "added" not in (config_map.metadata.labels or {})  # type: ignore[union-attr]
            and "intruder" not in managers(policy) | managers(config_map)
        )

    wait_until(removed, "the added fields and their manager to be removed", timeout=60)


def test_of_two_tenants_whose_names_share_a_uid_slot_the_younger_is_stalled_from_the_start(
    kube: Client, new_tenant: NewTenant, operator_process: OperatorProcess
) -> None:
    """Through the operator's own index of tenants by slot (the unit tests check the rule
    alone): both are there when it starts, from its list and its watch events. The younger
    touches nothing; the older is provisioned as usual."""
    older, younger = names_in_one_uid_slot(f"slot-{uuid.uuid4().hex[:4]}")
    operator_process.stop()
    new_tenant(name=older)
    # Creation times are whole seconds: the younger's is a second later, whatever its name.
    created = tenants.get(kube, older).metadata.creationTimestamp.timestamp()
    time.sleep(max(0.0, created + 1.1 - time.time()))
    new_tenant(name=younger)
    operator_process.start()
    stalled = tenants.wait_condition(kube, younger, "Stalled", reason="UserIdCollision")
    assert f"tenant {older!r}" in stalled["message"]
    assert "metadata.name" in stalled["message"]
    tenants.wait_condition(kube, older, "Ready")
    assert tenants.namespace_gone(kube, namespace_of(younger)), "a refused tenant touches nothing"


@pytest.mark.parametrize("refused_secret", [False, True], ids=["plain", "behind-a-refused-secret"])
def test_a_tenant_found_younger_than_one_seen_after_it_stops_running_as_its_users(
    kube: Client, start_operator: StartOperator, refused_secret: bool
) -> None:
    """Finding (a review): a tenant provisioned before an older tenant of its uid slot was known
    to the operator (created in the same second, or selected later, as here) kept its pods
    running as that tenant's users: a refusal writes nothing, and nothing queued it anyway. The
    older one is now seen, the younger queued and stalled, and its runtime and sandbox deleted,
    even when another stall of its own manifest (a Secret it may not have) comes first."""
    shard = f"slot-{uuid.uuid4().hex[:6]}"
    operator = start_operator(
        "slot", "--drift-interval", "3600", "--tenant-selector", f"{OPERATOR_LABEL}={shard}"
    )
    older, younger = names_in_one_uid_slot(shard)
    # Its start-up lists every tenant, whatever its selector: the older must come after that.
    wait_until(operator.reconciling, "the operator to reconcile")
    try:
        # The older is not this operator's yet: its shard label names another.
        tenants.apply(kube, tenants.manifest(older, labels={OPERATOR_LABEL: f"{shard}-later"}))
        created = tenants.get(kube, older).metadata.creationTimestamp.timestamp()
        time.sleep(max(0.0, created + 1.1 - time.time()))  # creation times are whole seconds
        tenants.apply(kube, tenants.manifest(younger, labels={OPERATOR_LABEL: shard}))
        tenants.wait_condition(kube, younger, "Ready")
        namespace = namespace_of(younger)
        reason = "UserIdCollision"
        if refused_secret:  # stalled before the uid slot is looked at, its pods left running
            spec = model_spec(f"missing-{uuid.uuid4().hex[:6]}")
            tenants.apply(kube, tenants.manifest(younger, spec, labels={OPERATOR_LABEL: shard}))
            reason = "SecretNotFound"
            tenants.wait_condition(kube, younger, "Stalled", reason=reason)
            assert list(kube.list(Deployment, namespace=namespace))

        tenants.apply(kube, tenants.manifest(older, labels={OPERATOR_LABEL: shard}))
        wait_until(
            lambda: not list(kube.list(Deployment, namespace=namespace)),
            "the younger tenant's runtime and sandbox to be deleted",
        )
        stalled = tenants.wait_condition(kube, younger, "Stalled", reason=reason)
        if not refused_secret:
            assert f"tenant {older!r}" in stalled["message"]
        for group in ("RuntimeReady", "SandboxReady"):
            state = tenants.condition(kube, younger, group)
            assert (state["status"], state["reason"]) == ("False", "Stopped"), state
        tenants.wait_condition(kube, older, "Ready")
    finally:
        for name in (older, younger):
            tenants.delete(kube, name)


def test_a_label_an_admin_adds_to_the_namespace_is_no_drift_even_after_a_restart(
    kube: Client, new_tenant: NewTenant, operator_process: OperatorProcess
) -> None:
    """Finding: a manager of fields Tenantry does not set (an admin's `kubectl label namespace`)
    stays in a namespace's managedFields after a forced apply, so every pass re-applied the
    namespace and posted DriftCorrected, for ever and after every restart. The namespace is
    never replaced: a label of the admin's is theirs to keep."""
    name = new_tenant(prefix="labelled")
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    kube.patch(
        Namespace,
        namespace,
        {"metadata": {"labels": {"team": "payments"}}},
        patch_type=PatchType.MERGE,
        field_manager="kubectl-label",
    )
    tenants.assert_quiet_at_rest(kube, name, operator_process.log)
    labels = kube.get(Namespace, namespace).metadata.labels  # type: ignore[union-attr]
    assert labels["team"] == "payments"  # type: ignore[index]
    assert tenants.drift_events(kube, name) == []

    # A restart lists the namespace afresh and finds nothing to write either. A child deleted
    # meanwhile proves the restarted operator passed over the tenant.
    since = len(operator_process.log.read_text())
    operator_process.stop()
    kube.delete(ConfigMap, "runtime-config", namespace=namespace)
    operator_process.start()
    wait_until(
        lambda: tenants.drift_events(kube, name), "the restarted operator to restore the ConfigMap"
    )
    assert tenants.drift_events(kube, name) == [
        f"restored ConfigMap {namespace}/runtime-config (missing)"
    ]
    assert tenants.writes_logged(operator_process.log, since, name, "Namespace") == []
    tenants.assert_quiet_at_rest(kube, name, operator_process.log)


@pytest.mark.parametrize("change", ["overwritten", "removed"])
def test_a_change_to_the_namespaces_pod_security_is_taken_back(
    kube: Client, new_tenant: NewTenant, operator_process: OperatorProcess, change: str
) -> None:
    """What an admin's `kubectl label --overwrite` or `kubectl label KEY-` does to a label Tenantry
    sets is taken back at the next pass, also by a manager that owns a label of its own there.
    Finding: a removal leaves no manager of it behind, and went unnoticed."""
    name = new_tenant(prefix="psa")
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    enforce = "pod-security.kubernetes.io/enforce"

    def label(labels: dict[str, str | None]) -> None:
        kube.patch(
            Namespace,
            namespace,
            {"metadata": {"labels": labels}},
            patch_type=PatchType.MERGE,
            field_manager="kubectl-label",
        )

    def taken_back(times: int) -> None:
        label({enforce: "privileged" if change == "overwritten" else None})
        wait_until(
            lambda: (
                (kube.get(Namespace, namespace).metadata.labels or {}).get(enforce)  # type: ignore[union-attr]
                == "restricted"
            ),
            f"the {change} {enforce} label to be restored",
        )
        wait_until(
            lambda: len(tenants.drift_events(kube, name)) == times, f"DriftCorrected #{times}"
        )
        assert tenants.drift_events(kube, name)[-1].startswith(f"restored Namespace {namespace} (")
        tenants.assert_quiet_at_rest(kube, name, operator_process.log)

    taken_back(1)
    label({"team": "payments"})
    tenants.assert_quiet_at_rest(kube, name, operator_process.log)
    taken_back(2)
    assert (kube.get(Namespace, namespace).metadata.labels or {})["team"] == "payments"  # type: ignore[union-attr]


def test_a_refused_change_leaves_a_running_tenant_as_it_was(
    kube: Client, new_tenant: NewTenant
) -> None:
    name = new_tenant(prefix="keep")
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    before = tenants.versions(kube, namespace)
    spec = model_spec(f"missing-{uuid.uuid4().hex[:6]}")
    tenants.apply(kube, tenants.manifest(name, spec))
    tenants.wait_condition(kube, name, "Stalled", reason="SecretNotFound")
    time.sleep(1)
    assert tenants.versions(kube, namespace) == before


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"namespace": "Not_A_Name"}, "spec.namespace"),
        ({"displayName": "evil\nmetadata:\n  name: pwned"}, "spec.displayName"),
        ({"displayName": "x" * 129}, "spec.displayName"),
        (
            {"network": {"egress": [{"cidr": "10.0.0.300/8", "ports": [443]}]}},
            'spec.network.egress[0].cidr: Invalid value: "10.0.0.300/8": must be a CIDR',
        ),
        (
            {"network": {"egress": [{"cidr": "203.0.113.0/24", "ports": [70000]}]}},
            "spec.network.egress[0].ports[0]",
        ),
        (
            {"network": {"egress": [{"cidr": "203.0.113.0/24", "ports": []}]}},
            "spec.network.egress[0].ports",
        ),
        (
            {"runtime": {"agents": [{"name": "x", "kind": "tools.shell"}]}},
            "spec.runtime.agents[0].kind",
        ),
        ({"runtime": {"topicTypes": ["Bad Topic"]}}, "spec.runtime.topicTypes[0]"),
        (
            {
                "runtime": {
                    "model": {"model": "m", "baseUrl": "https://x", "credentialsSecret": "nope"}
                }
            },
            "spec.runtime.model.credentialsSecret must name one of spec.secrets",
        ),
        (
            {
                "runtime": {
                    "model": {
                        "model": "m",
                        "baseUrl": "file:///etc/passwd",
                        "credentialsSecret": "k",
                    }
                },
                "secrets": [{"name": "k", "from": "k"}],
            },
            "spec.runtime.model.baseUrl",
        ),
        (
            {
                "sandbox": {"enabled": False},
                "runtime": {"agents": [{"name": "c", "kind": "coder"}]},
            },
            "a coder agent needs the sandbox",
        ),
        ({"sandbox": {"timeoutSeconds": 0}}, "spec.sandbox.timeoutSeconds"),
        (
            {
                "runtime": {
                    "agents": [{"name": "a", "kind": "coder"}, {"name": "b", "kind": "coder"}]
                }
            },
            "spec.runtime.agents: give each agent its own topicType",
        ),
        (
            {
                "runtime": {
                    "agents": [
                        {"name": "a", "kind": "coder"},
                        {"name": "b", "kind": "coder", "topicType": "x"},
                    ]
                }
            },
            "spec.runtime.agents: at most one agent of kind coder",
        ),
        (
            {"runtime": {"agents": [{"name": "a", "kind": "assistant"}]}},
            "an assistant agent needs a model",
        ),
        ({"runtime": {"topicTypes": []}}, "spec.runtime.topicTypes"),
        ({"quota": {"memory": "lots"}}, "spec.quota.memory"),
        (
            {
                "network": {
                    "ingressFrom": [{"namespaceSelector": {"matchLabels": {"bad key!": "x"}}}]
                }
            },
            "every key must",
        ),
        ({"runtime": {"image": "evil; rm -rf /"}}, "spec.runtime.image"),
        ({"unknownField": True}, "spec.unknownField: field not declared in schema"),
    ],
)
def test_invalid_manifests_are_rejected_by_the_api_server(
    kube: Client, crd_installed: None, spec: dict[str, Any], message: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ApiError) as refused:
        tenants.apply(kube, tenants.manifest(name, spec))
    assert message in str(refused.value.status.message)
    assert tenants.get(kube, name) is None


def test_invalid_tenant_names_are_rejected(kube: Client, crd_installed: None) -> None:
    with pytest.raises(ApiError) as refused:
        tenants.apply(kube, tenants.manifest("a" * 41))
    assert "metadata.name must be a DNS label of at most 40 characters" in str(
        refused.value.status.message
    )


def test_the_namespace_is_immutable(kube: Client, new_tenant: NewTenant) -> None:
    name = new_tenant({"namespace": f"own-{uuid.uuid4().hex[:6]}"}, prefix="immut")
    with pytest.raises(ApiError) as refused:
        tenants.apply(kube, tenants.manifest(name, {"namespace": f"moved-{uuid.uuid4().hex[:6]}"}))
    assert "spec.namespace is immutable" in str(refused.value.status.message)


def test_a_hostile_display_name_is_stored_verbatim_and_injects_nothing(
    kube: Client, new_tenant: NewTenant
) -> None:
    hostile = "ACME\" }}{{ 7*7 }}: {'$ref': x} # -- \\u0000 `id` $(reboot)"
    name = new_tenant({"displayName": hostile}, prefix="hostile")
    tenants.wait_condition(kube, name, "Ready")
    ns = kube.get(Namespace, namespace_of(name))
    assert ns.metadata.annotations["tenantry.dev/display-name"] == hostile  # type: ignore[index,union-attr]
    assert set(ns.metadata.labels) >= {"tenantry.dev/tenant"}  # type: ignore[arg-type,union-attr]


def test_an_idle_tenant_causes_no_writes(kube: Client, new_tenant: NewTenant) -> None:
    name, _ = ready_tenant_with_model(kube, new_tenant, "idle", "sk-idle")
    namespace = namespace_of(name)
    time.sleep(2)  # let the last child events settle
    tenant_version = tenants.get(kube, name).metadata.resourceVersion
    before = tenants.versions(kube, namespace)
    time.sleep(DRIFT_INTERVAL_SECONDS * 2.5)  # two drift periods and their jitter
    assert tenants.get(kube, name).metadata.resourceVersion == tenant_version
    assert tenants.versions(kube, namespace) == before


def test_deleting_a_tenant_removes_its_namespace_and_children(kube: Client, operator: Path) -> None:
    name = f"gone-{uuid.uuid4().hex[:6]}"
    tenants.apply(kube, tenants.manifest(name))
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    assert tenants.children(kube, namespace)
    tenants.delete(kube, name)
    wait_until(
        lambda: tenants.namespace_gone(kube, namespace),
        f"namespace {namespace} to be deleted",
        timeout=90,
    )


def test_a_tenant_made_again_under_its_name_waits_for_its_old_namespace_then_is_ready(
    kube: Client, start_operator: StartOperator
) -> None:
    """Noticed in review: a Ready tenant deleted and applied again at once (a GitOps replace:
    `kubectl replace --force`, Argo CD's Force=true,Replace=true) found its old namespace still
    there, being removed by garbage collection, and stalled with NamespaceConflict, telling the
    user to set spec.namespace; nothing woke it once that namespace was gone but the drift pass
    (300 s by default). Now it says it waits (Reconciling, reason NamespaceTerminating, no
    Warning), takes nothing of the old namespace, and is Ready in a namespace of its own once the
    old one is gone. A finalizer holds the old namespace here, so the wait is seen; the drift
    pass is an hour away, so it is not what ends it."""
    shard = f"again-{uuid.uuid4().hex[:6]}"
    operator = start_operator(
        "again", "--drift-interval", "3600", "--tenant-selector", f"{OPERATOR_LABEL}={shard}"
    )
    wait_until(operator.reconciling, "the operator to reconcile")
    name = f"{shard}-t"
    body = tenants.manifest(name, labels={OPERATOR_LABEL: shard})
    namespace = namespace_of(name)
    hold = {"metadata": {"finalizers": ["tests.tenantry.dev/hold"]}}
    try:
        tenants.apply(kube, body)
        tenants.wait_condition(kube, name, "Ready")
        old = kube.patch(Namespace, namespace, hold, field_manager="tests")
        tenants.delete(kube, name)
        tenants.apply(kube, body)
        new_uid = tenants.get(kube, name).metadata.uid
        waiting = tenants.wait_condition(kube, name, "Reconciling", reason="NamespaceTerminating")
        assert namespace in waiting["message"]
        assert "namespace" not in tenants.get(kube, name).status  # not the tenant's yet
        assert tenants.condition(kube, name, "Stalled")["status"] == "False"
        assert tenants.condition(kube, name, "Ready")["reason"] == "NamespaceTerminating"
        held = kube.get(Namespace, namespace)
        assert held.metadata.uid == old.metadata.uid
        assert [ref.uid for ref in held.metadata.ownerReferences] != [new_uid]

        kube.patch(Namespace, namespace, {"metadata": {"finalizers": None}}, field_manager="tests")
        tenants.wait_condition(kube, name, "Ready")
        made = kube.get(Namespace, namespace)
        assert made.metadata.uid != old.metadata.uid
        assert [ref.uid for ref in made.metadata.ownerReferences] == [new_uid]
        warned = [
            (e.reason, e.message)
            for e in kube.list(Event, namespace="default")
            if e.involvedObject.uid == new_uid and e.type == "Warning"
        ]
        assert not warned
    finally:
        with contextlib.suppress(ApiError):
            kube.patch(
                Namespace, namespace, {"metadata": {"finalizers": None}}, field_manager="tests"
            )
        tenants.delete(kube, name)


def test_the_operators_watches_stay_open_at_rest_on_bookmarks(
    kube: Client,
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
) -> None:
    """Finding: the operator's own watches ask for bookmarks (tenantry.watches), and lightkube
    decoded each one into the kind's model, which a bookmark (metadata alone) fails for a
    Deployment, a LimitRange or a Pod: every minute those watches failed, were counted as API
    errors and reconnected from a version the bookmark could not advance. At rest for longer
    than a bookmark's period and the inactivity limit, no watch fails or is taken for dead."""
    shard = f"rest-{uuid.uuid4().hex[:6]}"
    operator = start_operator(
        "rest", "--drift-interval", "3600", "--tenant-selector", f"{OPERATOR_LABEL}={shard}"
    )
    (name,) = labelled_tenants(shard, 1)
    tenants.wait_condition(kube, name, "Ready")
    time.sleep(INACTIVITY_SECONDS + 15)
    log = operator.log_text()
    assert "tenantry.watches" not in log, [
        line for line in log.splitlines() if "tenantry.watches" in line
    ][:3]
    assert operator.total("tenantry_api_errors_total") == 0


def test_a_pass_logs_the_children_it_wrote_in_one_line(
    kube: Client,
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
) -> None:
    """The children a pass writes are named in one log line, not one line each: a line per
    child was 3 % of the operator's samples (py-spy) while it provisioned tenants
    (bench/findings.md). Every child is still named, with why it was written."""
    shard = f"log-{uuid.uuid4().hex[:6]}"
    operator = start_operator("log", "--tenant-selector", f"{OPERATOR_LABEL}={shard}")
    (name,) = labelled_tenants(shard, 1)
    tenants.wait_condition(kube, name, "Ready")
    namespace = namespace_of(name)
    entries = [json.loads(line) for line in operator.log_text().splitlines() if line[:1] == "{"]
    lines = [
        entry["message"]
        for entry in entries
        if entry.get("tenant") == name and entry.get("message", "").startswith("applied ")
    ]
    assert len(lines) == 1, lines
    count, _, named = lines[0].removeprefix("applied ").partition(" children: ")
    written = named.split(", ")
    assert int(count) == len(written) >= 10, lines[0]
    for child in (f"Namespace {namespace}", f"Deployment {namespace}/runtime"):
        assert f"{child} (missing)" in written, lines[0]
