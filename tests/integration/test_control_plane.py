"""Proofs that the local control plane is a real Kubernetes, not a stand-in.

Each test exercises a part the operator relies on: CEL validation in the API server, Pod
Security admission, the scheduler with kwok nodes, and kube-controller-manager's namespace
deletion and garbage collection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.apiextensions_v1 import (
    CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion,
    CustomResourceValidation,
    JSONSchemaProps,
    ValidationRule,
)
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    PodSpec,
    PodTemplateSpec,
    SeccompProfile,
    SecurityContext,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta, OwnerReference
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, Pod
from waiting import wait_until

pytestmark = pytest.mark.cluster

GROUP = "proof.tenantry.dev"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


@pytest.fixture
def gadget_crd(kube: Client) -> Iterator[str]:
    """A throwaway namespaced CRD whose schema carries one CEL rule."""
    plural = f"gadgets{uuid.uuid4().hex[:6]}"
    schema = JSONSchemaProps(
        type="object",
        properties={
            "spec": JSONSchemaProps(
                type="object",
                properties={"replicas": JSONSchemaProps(type="integer")},
                x_kubernetes_validations=[
                    ValidationRule(rule="self.replicas <= 5", message="replicas must be at most 5")
                ],
            )
        },
    )
    crd = CustomResourceDefinition(
        metadata=ObjectMeta(name=f"{plural}.{GROUP}"),
        spec=CustomResourceDefinitionSpec(
            group=GROUP,
            scope="Namespaced",
            names=CustomResourceDefinitionNames(plural=plural, singular=plural, kind="Gadget"),
            versions=[
                CustomResourceDefinitionVersion(
                    name="v1",
                    served=True,
                    storage=True,
                    schema=CustomResourceValidation(openAPIV3Schema=schema),
                )
            ],
        ),
    )
    kube.create(crd)

    def established() -> bool:
        conditions = kube.get(CustomResourceDefinition, crd.metadata.name).status.conditions or []  # type: ignore[union-attr]
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, "the CRD to be established")
    yield plural
    kube.delete(CustomResourceDefinition, f"{plural}.{GROUP}")


def test_cel_rule_rejects_a_violating_object_with_its_message(
    kube: Client, gadget_crd: str, make_namespace: Callable[..., str]
) -> None:
    gadget = create_namespaced_resource(GROUP, "v1", "Gadget", gadget_crd)
    namespace = make_namespace("cel")

    with pytest.raises(ApiError) as refused:
        kube.create(
            gadget(metadata=ObjectMeta(name="big", namespace=namespace), spec={"replicas": 9})
        )
    assert refused.value.status.code == 422
    assert "replicas must be at most 5" in str(refused.value.status.message)

    kube.create(
        gadget(metadata=ObjectMeta(name="small", namespace=namespace), spec={"replicas": 3})
    )
    assert kube.get(gadget, "small", namespace=namespace).spec["replicas"] == 3  # type: ignore[attr-defined]


def restricted_container(name: str = "app") -> Container:
    return Container(
        name=name,
        image="example.invalid/never-pulled:1",
        securityContext=SecurityContext(
            allowPrivilegeEscalation=False,
            runAsNonRoot=True,
            runAsUser=65532,
            capabilities=Capabilities(drop=["ALL"]),
            seccompProfile=SeccompProfile(type="RuntimeDefault"),
        ),
    )


def test_restricted_namespace_runs_compliant_pods_on_kwok_nodes_and_refuses_privileged_ones(
    kube: Client, make_namespace: Callable[..., str]
) -> None:
    namespace = make_namespace("psa", labels=RESTRICTED)
    labels = {"app": "proof"}
    kube.create(
        Deployment(
            metadata=ObjectMeta(name="proof", namespace=namespace),
            spec=DeploymentSpec(
                replicas=2,
                selector=LabelSelector(matchLabels=labels),
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels=labels),
                    spec=PodSpec(
                        containers=[restricted_container()], automountServiceAccountToken=False
                    ),
                ),
            ),
        )
    )
    kwok_nodes = {
        node.metadata.name  # type: ignore[union-attr]
        for node in kube.list(Node)
        if (node.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"  # type: ignore[union-attr]
    }
    assert len(kwok_nodes) >= 2

    def running_pods() -> list[Pod] | None:
        pods = list(kube.list(Pod, namespace=namespace, labels=labels))
        running = [p for p in pods if p.status and p.status.phase == "Running"]
        return running if len(running) == 2 else None

    pods = wait_until(running_pods, "two Running pods of the Deployment", timeout=90)
    assert {p.spec.nodeName for p in pods} <= kwok_nodes  # type: ignore[union-attr]

    privileged = restricted_container("root")
    privileged.securityContext = SecurityContext(privileged=True)
    with pytest.raises(ApiError) as refused:
        kube.create(
            Pod(
                metadata=ObjectMeta(name="privileged", namespace=namespace),
                spec=PodSpec(containers=[privileged]),
            )
        )
    assert refused.value.status.code == 403
    assert 'violates PodSecurity "restricted:latest"' in str(refused.value.status.message)


def test_namespace_deletion_completes(kube: Client) -> None:
    name = f"doomed-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name)))
    kube.create(ConfigMap(metadata=ObjectMeta(name="content", namespace=name), data={"k": "v"}))
    kube.delete(Namespace, name)

    def gone() -> bool:
        try:
            kube.get(Namespace, name)
        except ApiError as error:
            return error.status.code == 404
        return False

    wait_until(gone, f"namespace {name} to be deleted", timeout=90)


def test_deleting_an_owner_garbage_collects_its_dependents(
    kube: Client, make_namespace: Callable[..., str]
) -> None:
    namespace = make_namespace("gc")
    owner = kube.create(ConfigMap(metadata=ObjectMeta(name="owner", namespace=namespace)))
    reference = OwnerReference(
        apiVersion="v1",
        kind="ConfigMap",
        name="owner",
        uid=owner.metadata.uid,  # type: ignore[union-attr,arg-type]
    )
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name="dependent", namespace=namespace, ownerReferences=[reference])
        )
    )
    kube.delete(ConfigMap, "owner", namespace=namespace)

    def dependent_gone() -> bool:
        names: list[Any] = [cm.metadata.name for cm in kube.list(ConfigMap, namespace=namespace)]  # type: ignore[union-attr]
        return "dependent" not in names

    wait_until(dependent_gone, "the garbage collector to delete the dependent", timeout=90)
