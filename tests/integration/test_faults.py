"""Faults on the real cluster. Each scenario ends with `tenantry audit` clean and nothing lost.

Slow (minutes): marked `faults`, and part of `make test` all the same.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import snapshots
import tenants
from lightkube import Client, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import Namespace, Secret
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType
from operator_process import OperatorProcess, StartOperator
from tenants import OPERATOR_LABEL
from waiting import wait_until

from tests.support import tally

TEMPLATE = create_global_resource(
    "tenantry.dev", "v1alpha1", "AgentTenantTemplate", "agenttenanttemplates"
)

pytestmark = [pytest.mark.cluster, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[2]


def audit_clean(kubeconfig: Path, names: list[str]) -> None:
    for name in names:
        code, report = tenants.audit(kubeconfig, "--tenant", name)
        assert code == 0, report


def all_ready(kube: Client, names: list[str], timeout: float) -> None:
    def ready() -> bool:
        return all(tenants.condition(kube, name, "Ready").get("status") == "True" for name in names)

    wait_until(ready, f"{len(names)} tenants to be Ready", timeout=timeout)


def no_orphans(kube: Client, names: set[str], prefix: str) -> None:
    """Every namespace a tenant of this scenario owns belongs to a live tenant of it."""
    for namespace in kube.list(Namespace, labels={"app.kubernetes.io/managed-by": "tenantry"}):
        tenant = (namespace.metadata.labels or {}).get("tenantry.dev/tenant", "")  # type: ignore[union-attr]
        if tenant.startswith(prefix) and namespace.status.phase != "Terminating":  # type: ignore[union-attr]
            assert tenant in names, f"orphaned namespace {namespace.metadata.name}"  # type: ignore[union-attr]


@pytest.fixture
def bystanders(kube: Client, operator: Path) -> Iterator[snapshots.Snapshot]:
    """A Ready tenant outside the scenario; the snapshot of everything outside the scenario."""
    name = f"calm-{uuid.uuid4().hex[:6]}"
    tenants.apply(kube, tenants.manifest(name))
    tenants.wait_condition(kube, name, "Ready")
    snapshots.settle(kube)
    yield snapshots.snapshot(kube)
    tenants.delete(kube, name)


def nothing_lost(kube: Client, before: snapshots.Snapshot, prefix: str) -> None:
    """Nothing outside the scenario's own tenants and namespaces was lost or changed."""

    def outside(snapshot: snapshots.Snapshot) -> snapshots.Snapshot:
        return {
            key: version
            for key, version in snapshot.items()
            if not (key[0] == "AgentTenant" and key[2].startswith(prefix))
            and not key[1].startswith(f"tenant-{prefix}")
            and not (key[0] == "Namespace" and key[2].startswith(f"tenant-{prefix}"))
        }

    snapshots.settle(kube)
    changes = snapshots.differences(outside(before), outside(snapshots.snapshot(kube)))
    tally.counts["objects lost"] += len(changes["lost"])
    assert changes == {"lost": [], "added": [], "changed": []}


def delete_all(kube: Client, names: list[str]) -> None:
    for name in names:
        try:
            kube.delete(tenants.AgentTenant, name)
        except ApiError as error:
            if error.status.code != 404:
                raise
    wait_until(
        lambda: all(tenants.get(kube, n) is None for n in names),
        "tenants to be deleted",
        timeout=120,
    )


def test_operator_killed_while_provisioning_100_tenants(
    kube: Client,
    kubeconfig: Path,
    operator_process: OperatorProcess,
    bystanders: snapshots.Snapshot,
) -> None:
    prefix = f"k{uuid.uuid4().hex[:4]}-"
    names = [f"{prefix}{i:03d}" for i in range(100)]
    try:
        for index, name in enumerate(names):
            tenants.apply(kube, tenants.manifest(name, {"sandbox": {"enabled": index % 2 == 0}}))
        # Kill it mid-way: some tenants Ready, most not yet.
        wait_until(
            lambda: (
                sum(tenants.condition(kube, n, "Ready").get("status") == "True" for n in names[:20])
                >= 3
            ),
            "the first tenants to be Ready",
            timeout=120,
        )
        operator_process.kill()
        ready_at_kill = sum(
            tenants.condition(kube, n, "Ready").get("status") == "True" for n in names
        )
        operator_process.start()
        started = time.monotonic()
        all_ready(kube, names, timeout=600)
        print(
            f"killed with {ready_at_kill}/100 Ready; all 100 Ready {time.monotonic() - started:.1f}s after the restart"
        )
        assert ready_at_kill < 100, "the operator was killed too late to prove anything"
        for name in random.sample(names, 10):
            namespace = f"tenant-{name}"
            deployments = list(kube.list(Deployment, namespace=namespace))
            replica_sets = list(kube.list(ReplicaSet, namespace=namespace))
            assert len(replica_sets) == len(deployments), (
                f"{name}: a rollout repeated after the restart"
            )
        audit_clean(kubeconfig, random.sample(names, 10))
        no_orphans(kube, set(names), prefix)
    finally:
        if not operator_process.running():
            operator_process.start()
        delete_all(kube, names)
    nothing_lost(kube, bystanders, prefix)
    tally.counts["faults survived"] += 1


def test_api_server_down_for_30_seconds(
    kube: Client,
    kubeconfig: Path,
    operator_process: OperatorProcess,
    bystanders: snapshots.Snapshot,
) -> None:
    prefix = f"a{uuid.uuid4().hex[:4]}-"
    created = [f"{prefix}{i}" for i in range(6)]
    starts = operator_process.starts
    try:
        for name in created[:4]:
            tenants.apply(kube, tenants.manifest(name))
        cluster = [sys.executable, str(REPO / "e2e" / "cluster.py")]
        subprocess.run([*cluster, "stop-apiserver"], check=True)
        time.sleep(30)
        subprocess.run([*cluster, "start-apiserver"], check=True)
        # After the outage: more tenants, a change, a deletion.
        for name in created[4:]:
            tenants.apply(kube, tenants.manifest(name))
        tenants.apply(kube, tenants.manifest(created[0], {"sandbox": {"enabled": False}}))
        tenants.delete(kube, created[1])
        alive = [created[0], *created[2:]]
        all_ready(kube, alive, timeout=240)
        # The same process, never restarted: it recovered by itself.
        assert operator_process.running(), "the operator exited during the outage"
        assert operator_process.starts == starts, "the operator must recover without a restart"
        assert ("Deployment", "sandbox") not in tenants.children(kube, f"tenant-{created[0]}")
        wait_until(
            lambda: tenants.namespace_gone(kube, f"tenant-{created[1]}"),
            "the deleted tenant's namespace to go",
            timeout=120,
        )
        audit_clean(kubeconfig, alive)
        no_orphans(kube, set(alive), prefix)
    finally:
        delete_all(kube, created)
    nothing_lost(kube, bystanders, prefix)
    tally.counts["faults survived"] += 1


def tamper(kube: Client, namespace: str, rng: random.Random) -> str:
    """Delete or change one child at random; return what was done."""
    choice = rng.choice(
        ["delete-policy", "open-policy", "delete-secret", "delete-deployment", "scale-deployment"]
    )
    if choice == "delete-policy":
        kube.delete(NetworkPolicy, rng.choice(["default-deny", "runtime"]), namespace=namespace)
    elif choice == "open-policy":
        kube.patch(
            NetworkPolicy,
            "default-deny",
            {"spec": {"ingress": [{}], "egress": [{}]}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager="intruder",
        )
    elif choice == "delete-secret":
        kube.delete(Secret, "sandbox-token", namespace=namespace)
    elif choice == "delete-deployment":
        kube.delete(Deployment, "runtime", namespace=namespace)
    else:
        kube.patch(
            Deployment,
            "runtime",
            {"spec": {"replicas": 5}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager="intruder",
        )
    return f"{choice} in {namespace}"


def test_children_tampered_with_at_random_while_tenants_change(
    kube: Client, kubeconfig: Path, operator: Path, bystanders: snapshots.Snapshot
) -> None:
    prefix = f"r{uuid.uuid4().hex[:4]}-"
    names = [f"{prefix}{i}" for i in range(5)]
    rng = random.Random(uuid.uuid4().int)  # noqa: S311 - a random fault schedule, printed below
    done: list[str] = []
    try:
        for name in names:
            tenants.apply(kube, tenants.manifest(name))
        all_ready(kube, names, timeout=120)
        for round_ in range(20):
            name = rng.choice(names)
            try:
                done.append(tamper(kube, f"tenant-{name}", rng))
            except ApiError as error:  # the child was already gone: the operator is restoring it
                if error.status.code != 404:
                    raise
            if round_ % 5 == 0:
                changed = rng.choice(names)
                tenants.apply(
                    kube,
                    tenants.manifest(
                        changed, {"runtime": {"topicTypes": ["default", f"t{round_}"]}}
                    ),
                )
            time.sleep(rng.uniform(0, 0.3))
        print("faults:", json.dumps(done, indent=1))
        all_ready(kube, names, timeout=120)
        for name in names:
            wait_until(
                lambda name=name: not tenants_disturbed(kube, name), f"{name} restored", timeout=60
            )
        audit_clean(kubeconfig, names)
    finally:
        delete_all(kube, names)
    nothing_lost(kube, bystanders, prefix)
    tally.counts["faults survived"] += 1


def tenants_disturbed(kube: Client, name: str) -> list[str]:
    found = tenants.children(kube, f"tenant-{name}")
    problems = [
        key
        for key in [
            ("NetworkPolicy", "default-deny"),
            ("NetworkPolicy", "runtime"),
            ("Secret", "sandbox-token"),
            ("Deployment", "runtime"),
        ]
        if key not in found
    ]
    if ("Deployment", "runtime") in found and found[("Deployment", "runtime")].spec.replicas != 1:
        problems.append("runtime replicas")
    if ("NetworkPolicy", "default-deny") in found and (
        found[("NetworkPolicy", "default-deny")].spec.ingress
        or found[("NetworkPolicy", "default-deny")].spec.egress
    ):
        problems.append("default-deny opened")
    return [str(p) for p in problems]


class NamespacesMade:
    """Every namespace whose name starts with PREFIX made from now on, as the API server's watch
    of namespaces tells it: however short-lived, none is missed. (The API server replays from
    its watch cache, which holds the last 100 events of a kind at least: a test that saw more
    namespace events than that would get a 410, and fail saying so.)"""

    def __init__(self, kube: Client, prefix: str) -> None:
        self.kube = kube
        self.prefix = prefix
        listing = kube.list(Namespace)
        next(iter(listing))  # its version is known once its first page is read
        self.since = listing.resourceVersion

    def uids(self) -> dict[str, set[str]]:
        """The uid of each one made since, by name: the watch from then until now (the server
        ends it after a second)."""
        generic: Any = self.kube._client  # lightkube's request building and credentials
        request = generic.prepare_request(
            "list",
            res=Namespace,
            watch=True,
            params={"resourceVersion": self.since, "timeoutSeconds": 1},
        )
        built = generic._client.build_request(
            request.method, request.url, params=request.params, timeout=generic._watch_timeout
        )
        response = generic.send(built, stream=True)
        made: dict[str, set[str]] = {}
        try:
            generic.raise_for_status(response)
            for line in response.iter_lines():
                event = json.loads(line) if line.strip() else {}
                assert event.get("type") != "ERROR", event  # a version too old: 410
                meta = (event.get("object") or {}).get("metadata") or {}
                if event.get("type") == "ADDED" and meta.get("name", "").startswith(self.prefix):
                    made.setdefault(meta["name"], set()).add(meta["uid"])
        finally:
            response.close()
        return made

    def none(self) -> bool:
        return not any(
            (namespace.metadata.name or "").startswith(self.prefix)  # type: ignore[union-attr]
            for namespace in self.kube.list(Namespace)
        )


def test_a_tenant_deleted_while_still_provisioning_leaves_nothing(
    kube: Client, operator: Path, bystanders: snapshots.Snapshot
) -> None:
    prefix = f"d{uuid.uuid4().hex[:4]}-"
    names = [f"{prefix}{i}" for i in range(5)]
    made = NamespacesMade(kube, f"tenant-{prefix}")
    for name in names:
        tenants.apply(kube, tenants.manifest(name, {"secrets": []}))
    delete_all(kube, names)  # at once: before, or while, the operator provisions them

    wait_until(made.none, "every namespace of the deleted tenants to be gone", timeout=120)
    # A pass in flight may make a namespace once more, now: it found its tenant, and creates
    # the namespace with the next request (no API makes the two one). Garbage collection takes
    # that one too. A namespace made again after its tenant's deletion reached the operator
    # (a retried pass once did, seen on a loaded machine) is a second one of that name.
    time.sleep(5)
    wait_until(made.none, "the deleted tenants' namespaces to be gone again", timeout=120)
    again = {name: uids for name, uids in made.uids().items() if len(uids) > 1}
    assert again == {}, f"namespaces made again after their tenants were deleted: {again}"
    left: list[Any] = [
        ns.metadata.name  # type: ignore[union-attr]
        for ns in kube.list(Namespace)
        if (ns.metadata.labels or {}).get("tenantry.dev/tenant", "").startswith(prefix)  # type: ignore[union-attr]
    ]
    assert left == []
    nothing_lost(kube, bystanders, prefix)
    tally.counts["faults survived"] += 1


def test_a_key_rotated_after_an_api_server_restart_reaches_its_copy_at_once(
    kube: Client,
    operator_process: OperatorProcess,
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
    make_namespace: Callable[..., str],
) -> None:
    """Finding: the operator's watch of source Secrets ended for good when the API server was
    still away as it reconnected (lightkube retries a broken watch, not a failed reconnect), so
    a rotated key reached the runtime only with the next drift resync. This operator's resync
    is an hour away: only the watch can carry the rotation."""
    shard = f"src-{uuid.uuid4().hex[:6]}"
    start_operator(
        "sources", "--drift-interval", "3600", "--tenant-selector", f"{OPERATOR_LABEL}={shard}"
    )
    secret_name = f"src-{uuid.uuid4().hex[:6]}"
    (name,) = labelled_tenants(shard, 1, tenants.model_spec(secret_name))
    namespace = f"tenant-{name}"
    tenants.wait_condition(kube, name, "Stalled", reason="SecretNotFound")
    tenants.source_secret(kube, secret_name, allowed=name, data={"api-key": "sk-before"})
    tenants.wait_condition(kube, name, "Ready", timeout=60)  # the watch saw it: no resync yet

    cluster = [sys.executable, str(REPO / "e2e" / "cluster.py")]
    subprocess.run([*cluster, "stop-apiserver"], check=True)
    time.sleep(8)  # the watch breaks, waits 2 s, and its reconnect fails
    subprocess.run([*cluster, "start-apiserver"], check=True)
    tenants.source_secret(kube, secret_name, allowed=name, data={"api-key": "sk-after"})

    def rotated() -> bool:
        copy = kube.get(Secret, "model-credentials", namespace=namespace)
        return base64.b64decode((copy.data or {})["api-key"]).decode() == "sk-after"

    # Within the watch's longest backoff (30 s) and a pass, not the resync's hour.
    wait_until(rotated, "the rotated key to reach the tenant's copy", timeout=90)
    assert operator_process.running(), "the shared operator exited during the outage"
    # kube-controller-manager's informers come back on client-go's backoff, a minute or more
    # after the restart: until then a new namespace stays empty, and the next tests wait on it.
    make_namespace("after-restart", fill_timeout=240)
    tally.counts["faults survived"] += 1


def test_the_drift_timer_outlives_an_api_server_restart(
    kube: Client,
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
    make_namespace: Callable[..., str],
) -> None:
    """Finding (review): the drift timer caught only an ApiError; a resync that found the API
    server away failed with a connection error instead, which ended the timer for good and
    silently: no drift pass, no resync, for the rest of the process's life. An operator at rest
    reconciles its tenants once a drift period; it still does after the restart."""
    shard = f"drift-{uuid.uuid4().hex[:6]}"
    operator = start_operator(
        "drift", "--drift-interval", "2", "--tenant-selector", f"{OPERATOR_LABEL}={shard}"
    )
    (name,) = labelled_tenants(shard, 1)
    # After the API server restart of the test before, the Deployment controller, the scheduler
    # and kwok come back on their own backoff: once, the tenant's ReplicaSets were made 13 s
    # after its Deployments, and it was not Ready within a minute.
    tenants.wait_condition(kube, name, "Ready", timeout=240)

    def passes() -> float:
        return operator.total("tenantry_reconcile_duration_seconds_count")

    cluster = [sys.executable, str(REPO / "e2e" / "cluster.py")]
    subprocess.run([*cluster, "stop-apiserver"], check=True)
    time.sleep(7)  # three drift periods: each resync finds the API server away
    subprocess.run([*cluster, "start-apiserver"], check=True)
    tenants.wait_condition(kube, name, "Ready")
    before = passes()
    wait_until(lambda: passes() >= before + 3, "three drift passes after the restart", timeout=30)
    assert operator.process.poll() is None
    make_namespace("after-restart", fill_timeout=240)  # see the key rotation's test above
    tally.counts["faults survived"] += 1


def test_a_templated_kind_not_served_stalls_only_the_tenants_whose_templates_render_it(
    kube: Client,
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
) -> None:
    """Finding: for a group it does not serve (a CustomResourceDefinition not installed), the
    API server answers 404 in plain text, which lightkube raises as httpx's error, not the
    ApiError the operator caught: an operator whose --template-kinds named such a kind failed
    its first list again and again and reconciled no tenant at all. Now that list is skipped
    with a warning, the kind's watch (tenantry.watches) waits for the next drift period, every
    other watch carries on, and a tenant a template gives such an object stalls saying what to
    install."""
    shard = f"unserved-{uuid.uuid4().hex[:6]}"
    operator = start_operator(
        "unserved",
        "--template-kinds",
        "example.com/v1/Widget",
        "--tenant-selector",
        f"{OPERATOR_LABEL}={shard}",
    )
    (name,) = labelled_tenants(shard, 1)
    tenants.wait_condition(kube, name, "Ready", timeout=90)
    # A child deleted now comes back through the watch of its kind: the resync is minutes away.
    namespace = f"tenant-{name}"
    kube.delete(NetworkPolicy, "runtime", namespace=namespace)
    wait_until(
        lambda: ("NetworkPolicy", "runtime") in tenants.children(kube, namespace),
        "the deleted policy to be restored",
        timeout=60,
    )
    widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: gadget}\nspec: {size: 1}\n"
    template = {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenantTemplate",
        "metadata": {"name": shard},
        "spec": {
            "selector": {"matchLabels": {OPERATOR_LABEL: shard}},
            "templates": [{"name": "widget", "template": widget}],
        },
    }
    kube.apply(codecs.from_dict(template), field_manager="tenantry-tests", force=True)
    try:
        stalled = tenants.wait_condition(kube, name, "Stalled", reason="Rejected", timeout=60)
        assert "does not serve Widget in a namespace" in stalled["message"], stalled
        assert "install its CustomResourceDefinition" in stalled["message"], stalled
    finally:
        kube.delete(TEMPLATE, shard)
    tenants.wait_condition(kube, name, "Ready", timeout=60)
    assert operator.process.poll() is None
    assert "cannot watch Widget children" in operator.log_text()
