"""AgentTenantTemplates on the real control plane: the platform admin's extra children reach the
tenants a template selects and no other, follow its edits, go when it stops selecting them or is
deleted, come back when deleted by hand, and a template that may not render stalls its tenants
in words while nothing is written. The tests' operator allows PersistentVolumeClaims
(tenants.TEMPLATE_KINDS); each template selects only this test's tenants, by a label of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenants
from lightkube import Client, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource
from lightkube.resources.core_v1 import PersistentVolumeClaim, ResourceQuota
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from tenants import DRIFT_INTERVAL_SECONDS
from waiting import wait_until

pytestmark = pytest.mark.cluster

Template = create_global_resource(
    "tenantry.dev", "v1alpha1", "AgentTenantTemplate", "agenttenanttemplates"
)
SELECT = "tests.tenantry.dev/templates"
HOSTILE = 'x", "kind": "Secret", "metadata": {"namespace": "kube-system"} # {{ 7 * 7 }}'
CLAIM = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: memory
  annotations:
    example.com/for: {{ tenant.displayName }}
    example.com/edition: "1"
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""


def template_body(name: str, selection: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenantTemplate",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {SELECT: selection}},
            "templates": [{"name": "claim", "template": text}],
        },
    }


@pytest.fixture
def names(kube: Client, operator: Path) -> Iterator[Callable[[str], str]]:
    """Unique tenant and template names; everything made with them is deleted at the end."""
    suffix = uuid.uuid4().hex[:6]
    made: list[str] = []

    def name(prefix: str) -> str:
        made.append(f"{prefix}-{suffix}")
        return made[-1]

    yield name
    for item in made:
        try:
            kube.delete(Template, item)
        except ApiError as error:
            if error.status.code != 404:
                raise
        tenants.delete(kube, item)


def apply_template(kube: Client, body: dict[str, Any]) -> None:
    kube.apply(codecs.from_dict(body), field_manager="tenantry-tests", force=True)


def claim(kube: Client, namespace: str, name: str = "memory") -> PersistentVolumeClaim | None:
    try:
        return kube.get(PersistentVolumeClaim, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def annotation(kube: Client, namespace: str, key: str) -> str | None:
    found = claim(kube, namespace)
    return None if found is None else (found.metadata.annotations or {}).get(key)  # type: ignore[union-attr]


def test_a_template_gives_its_tenants_a_claim_follows_edits_and_prunes_what_it_no_longer_selects(
    kube: Client, kubeconfig: Path, names: Callable[[str], str]
) -> None:
    first, second, third, template = names("tpl-a"), names("tpl-b"), names("tpl-c"), names("mem")
    selection = template
    for tenant, labels, display in (
        (first, {SELECT: selection}, HOSTILE),
        (second, {SELECT: selection}, "Second"),
        (third, {SELECT: "other"}, "Third"),
    ):
        spec = {"displayName": display, "sandbox": {"enabled": False}}
        tenants.apply(kube, tenants.manifest(tenant, spec, labels))
    for tenant in (first, second, third):
        tenants.wait_condition(kube, tenant, "Ready")

    apply_template(kube, template_body(template, selection, CLAIM))
    for tenant in (first, second):
        wait_until(lambda t=tenant: claim(kube, f"tenant-{t}"), f"{tenant}'s templated claim")  # type: ignore[misc]
        tenants.wait_condition(kube, tenant, "Ready")
    made = claim(kube, f"tenant-{first}")
    assert made is not None
    assert [ref.kind for ref in made.metadata.ownerReferences or []] == ["AgentTenant"]  # type: ignore[union-attr]
    assert made.metadata.labels["tenantry.dev/tenant"] == first  # type: ignore[index,union-attr]
    # The hostile display name is one annotation's value, nothing more.
    assert annotation(kube, f"tenant-{first}", "example.com/for") == HOSTILE
    assert claim(kube, f"tenant-{third}") is None
    quota = kube.get(ResourceQuota, "tenant-quota", namespace=f"tenant-{first}")
    assert quota.spec.hard["persistentvolumeclaims"] == "1"  # type: ignore[index,union-attr]
    code, report = tenants.audit(kubeconfig, "--tenant", first)
    assert code == 0, report

    # An edit reaches every tenant the template selects; then nothing is written at rest.
    apply_template(kube, template_body(template, selection, CLAIM.replace('"1"', '"2"')))
    for tenant in (first, second):
        wait_until(
            lambda t=tenant: annotation(kube, f"tenant-{t}", "example.com/edition") == "2",  # type: ignore[misc]
            f"{tenant}'s claim to follow the edit",
        )
    time.sleep(2)
    before = {t: tenants.versions(kube, f"tenant-{t}") for t in (first, second, third)}
    time.sleep(DRIFT_INTERVAL_SECONDS * 2.5)
    assert {t: tenants.versions(kube, f"tenant-{t}") for t in (first, second, third)} == before

    # Deleted by hand, it comes back.
    old_uid = made.metadata.uid  # type: ignore[union-attr]
    kube.delete(PersistentVolumeClaim, "memory", namespace=f"tenant-{first}")
    wait_until(
        lambda: (found := claim(kube, f"tenant-{first}")) and found.metadata.uid != old_uid,  # type: ignore[union-attr]
        "the hand-deleted claim to come back",
    )

    # A tenant the template stops selecting loses its claim, and gets it back when selected again.
    spec = {"displayName": "Second", "sandbox": {"enabled": False}}
    tenants.apply(kube, tenants.manifest(second, spec))
    wait_until(
        lambda: claim(kube, f"tenant-{second}") is None, "the unselected tenant's claim to go"
    )
    tenants.apply(kube, tenants.manifest(second, spec, {SELECT: selection}))
    wait_until(lambda: claim(kube, f"tenant-{second}"), "the claim of the tenant selected again")

    # Deleting the template prunes its objects from every tenant, and the quota follows.
    kube.delete(Template, template)
    for tenant in (first, second):
        wait_until(
            lambda t=tenant: claim(kube, f"tenant-{t}") is None,  # type: ignore[misc]
            f"{tenant}'s claim to go with its template",
        )
    wait_until(
        lambda: (
            kube.get(ResourceQuota, "tenant-quota", namespace=f"tenant-{first}").spec.hard[  # type: ignore[index,union-attr]
                "persistentvolumeclaims"
            ]
            == "0"
        ),
        "the quota to count no claim again",
    )
    for tenant in (first, second, third):
        tenants.wait_condition(kube, tenant, "Ready")


REFUSED = {
    "another namespace": (
        CLAIM.replace("  name: memory", "  name: memory\n  namespace: default"),
        "tenant's own namespace",
    ),
    "a cluster-scoped kind": (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: tpl-escalate}\n"
        "rules: [{apiGroups: ['*'], resources: ['*'], verbs: ['*']}]\n",
        "rbac.authorization.k8s.io/v1/ClusterRole is not a kind templates may render",
    ),
    "a kind not allowed": (
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: tpl-job}\nspec: {template: {spec: {containers: []}}}\n",
        "batch/v1/Job is not a kind templates may render",
    ),
    "the sandbox token": (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: sandbox-token}\nstringData: {token: stolen}\n",
        "v1/Secret is not a kind templates may render",
    ),
    "a name of Tenantry's": (
        CLAIM.replace("name: memory", "name: sandbox-token"),
        "Tenantry's own",
    ),
    "a Jinja2 error": (
        CLAIM.replace("{{ tenant.displayName }}", "{{ tenant.secret }}"),
        "tenant and operator only",
    ),
}


def test_a_template_that_may_not_render_stalls_its_tenant_in_words_and_writes_nothing(
    kube: Client, names: Callable[[str], str]
) -> None:
    tenant, template = names("tpl-bad"), names("bad")
    namespace = f"tenant-{tenant}"
    tenants.apply(
        kube, tenants.manifest(tenant, {"sandbox": {"enabled": False}}, {SELECT: template})
    )
    tenants.wait_condition(kube, tenant, "Ready")
    time.sleep(2)
    before = tenants.versions(kube, namespace)
    for case, (text, words) in REFUSED.items():
        apply_template(kube, template_body(template, template, text))
        tenants.wait_condition(kube, tenant, "Stalled", reason="TemplateRefused")
        # The reconcile of the template's previous case may still be the one reported: wait for this one.
        wait_until(
            lambda w=words: w in tenants.condition(kube, tenant, "Stalled").get("message", ""),  # type: ignore[misc]
            f"{case}: the Stalled message to say {words!r}",
        )
        message = tenants.condition(kube, tenant, "Stalled")["message"]
        assert f"AgentTenantTemplate {template}, template claim:" in message, message
        assert tenants.versions(kube, namespace) == before, case
    assert claim(kube, namespace, "sandbox-token") is None
    with pytest.raises(ApiError):
        kube.get(ClusterRole, "tpl-escalate")
    kube.delete(Template, template)
    tenants.wait_condition(kube, tenant, "Ready")
    assert tenants.versions(kube, namespace) == before
