"""The audit's checks, on objects shaped as the API server returns them."""

from __future__ import annotations

import copy
from typing import Any

from tenantry.audit import audit_tenant
from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant, AgentTenantTemplate
from tenantry.render import ClusterFacts, render

CONFIG = OperatorConfig()
UID = "uid-1"
TENANT = AgentTenant.model_validate(
    {
        "metadata": {"name": "acme"},
        "spec": {
            "runtime": {
                "model": {"model": "m", "baseUrl": "https://x", "credentialsSecret": "model"}
            },
            "secrets": [{"name": "model", "from": "acme-model"}],
        },
    }
)


def live_objects(
    config: OperatorConfig = CONFIG, templates: tuple[AgentTenantTemplate, ...] = ()
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rendered children as they sit in a healthy cluster, with the pods they run."""
    facts = ClusterFacts(uid=UID, secret_data={"model": {"api-key": "c2s="}}, sandbox_token="t")
    manifests = copy.deepcopy(render(TENANT, config, facts, templates))
    namespace, children = manifests[0], manifests[1:]
    objects: list[dict[str, Any]] = []
    for child in children:
        child["metadata"]["uid"] = f"uid-{child['kind']}-{child['metadata']['name']}"
        objects.append(child)
        if child["kind"] == "Deployment":
            rs = {
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{child['metadata']['name']}-1",
                    "uid": f"rs-{child['metadata']['name']}",
                    "ownerReferences": [{"uid": child["metadata"]["uid"]}],
                },
            }
            pod = {
                "kind": "Pod",
                "metadata": {
                    "name": f"{child['metadata']['name']}-1-a",
                    "namespace": child["metadata"]["namespace"],
                    "labels": child["spec"]["template"]["metadata"]["labels"],
                    "ownerReferences": [{"uid": rs["metadata"]["uid"]}],
                },
                "spec": copy.deepcopy(child["spec"]["template"]["spec"]),
            }
            objects += [rs, pod]
    objects.append({"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}})
    return namespace, objects


def checks(namespace: dict[str, Any] | None, objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(f.check, f.object) for f in audit_tenant(TENANT, UID, CONFIG, namespace, objects)}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def test_a_healthy_tenant_is_clean() -> None:
    namespace, objects = live_objects()
    assert checks(namespace, objects) == set()


def test_a_missing_or_foreign_namespace() -> None:
    assert checks(None, []) == {("namespace", "Namespace/tenant-acme")}
    namespace, objects = live_objects()
    namespace["metadata"]["ownerReferences"] = [{"kind": "AgentTenant", "uid": "someone-else"}]
    namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "privileged"
    found = audit_tenant(TENANT, UID, CONFIG, namespace, objects)
    assert {f.detail for f in found} == {
        "not owned by the tenant (ownerReference and tenant label)",
        "pod-security.kubernetes.io/enforce is 'privileged', not 'restricted'",
    }


def test_an_opened_network_policy() -> None:
    namespace, objects = live_objects()
    find(objects, "NetworkPolicy", "default-deny")["spec"]["egress"] = [{}]
    assert checks(namespace, objects) == {
        ("rendered objects intact", "NetworkPolicy/tenant-acme/default-deny")
    }


def test_extra_access_identities_secrets_and_workloads() -> None:
    namespace, objects = live_objects()
    objects += [
        {"kind": "RoleBinding", "metadata": {"name": "admin", "namespace": "tenant-acme"}},
        {"kind": "ServiceAccount", "metadata": {"name": "ci", "namespace": "tenant-acme"}},
        {"kind": "Secret", "metadata": {"name": "stolen", "namespace": "tenant-acme"}},
        {"kind": "Job", "metadata": {"name": "miner", "namespace": "tenant-acme"}},
    ]
    assert checks(namespace, objects) == {
        ("no extra access", "RoleBinding/tenant-acme/admin"),
        ("no extra identities or secrets", "ServiceAccount/tenant-acme/ci"),
        ("no extra identities or secrets", "Secret/tenant-acme/stolen"),
        ("no extra workloads", "Job/tenant-acme/miner"),
    }


def test_a_sandbox_that_can_read_credentials() -> None:
    namespace, objects = live_objects()
    pod = find(objects, "Pod", "sandbox")
    pod["spec"]["containers"][0]["env"].append(
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "model", "key": "api-key"}}}
    )
    assert ("sandbox holds no credentials", "Pod/tenant-acme/sandbox-1-a") in checks(
        namespace, objects
    )


def test_token_mounts_and_insecure_pods() -> None:
    namespace, objects = live_objects()
    pod = find(objects, "Pod", "runtime")
    pod["spec"]["automountServiceAccountToken"] = True
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    found = {f.detail for f in audit_tenant(TENANT, UID, CONFIG, namespace, objects)}
    assert found == {
        "the pod mounts a service-account token",
        "container runtime is privileged",
        "container runtime has a writable root filesystem",
    }


def test_a_pod_inherits_token_mounting_from_its_service_account() -> None:
    namespace, objects = live_objects()
    pod = find(objects, "Pod", "runtime")
    del pod["spec"]["automountServiceAccountToken"]
    assert checks(namespace, objects) == set()  # the runtime account does not automount
    find(objects, "ServiceAccount", "runtime")["automountServiceAccountToken"] = True
    assert ("no service-account tokens", "Pod/tenant-acme/runtime-1-a") in checks(
        namespace, objects
    )


def test_a_sandbox_token_secret_that_holds_a_model_key() -> None:
    """Finding: a model key copied under the token's name passed an audit that checked names."""
    namespace, objects = live_objects()
    token = find(objects, "Secret", "sandbox-token")
    token["data"] = {"api-key": "c2stbGVha2Vk"}
    found = audit_tenant(TENANT, UID, CONFIG, namespace, objects)
    assert {(f.check, f.object, f.detail) for f in found} == {
        (
            "sandbox holds no credentials",
            "Secret/tenant-acme/sandbox-token",
            "holds key(s) api-key, not just 'token'",
        )
    }


def test_a_copy_that_came_from_another_source() -> None:
    namespace, objects = live_objects()
    copied = find(objects, "Secret", "model")
    copied["metadata"]["annotations"]["tenantry.dev/source"] = "tenantry-secrets/globex-model"
    assert checks(namespace, objects) == {("secrets only where needed", "Secret/tenant-acme/model")}


def test_a_templated_child_counts_as_rendered_and_its_absence_or_failure_is_reported() -> None:
    config = OperatorConfig(template_kinds=("v1/PersistentVolumeClaim",))
    template = AgentTenantTemplate.model_validate(
        {
            "metadata": {"name": "memory"},
            "spec": {
                "selector": {},
                "templates": [
                    {
                        "name": "claim",
                        "template": "apiVersion: v1\nkind: PersistentVolumeClaim\n"
                        "metadata: {name: memory}\nspec: {resources: {requests: {storage: 1Gi}}}\n",
                    }
                ],
            },
        }
    )
    namespace, objects = live_objects(config, (template,))
    without_claim = [o for o in objects if o["kind"] != "PersistentVolumeClaim"]

    def found(
        objects: list[dict[str, Any]], *templates: AgentTenantTemplate
    ) -> set[tuple[str, str]]:
        report = audit_tenant(TENANT, UID, config, namespace, objects, templates)
        return {(f.check, f.object) for f in report}

    assert found(objects, template) == set()
    assert found(without_claim, template) == {
        ("rendered objects present", "PersistentVolumeClaim/tenant-acme/memory")
    }
    broken = template.model_copy(
        update={
            "spec": template.spec.model_copy(
                update={
                    "templates": [
                        template.spec.templates[0].model_copy(
                            update={"template": "{{ tenant.nothing }}"}
                        )
                    ]
                }
            )
        }
    )
    assert ("templates render", "AgentTenantTemplate/memory") in found(objects, broken)
