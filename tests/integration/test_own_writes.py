"""A pass knows what it wrote before the watch tells it, on the real API server.

Finding (a flaky DriftCorrected count in test_session_claims.py): the operator learnt of its
own writes only from their watch events, so a pass that came before them (the drift timer's,
another child's event) planned from what a child was before the last write, wrote it again
and posted DriftCorrected twice. Here no watch runs at all: what the cache knows after a pass
can only have come from the API server's answers to its writes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import tenants
from lightkube import AsyncClient, Client, KubeConfig
from tenantry.children import ChildKey, child_key, summarize
from tenantry.config import OperatorConfig
from tenantry.controller import Controller
from tenantry.kinds import child_kinds
from tenantry.names import TENANT_LABEL
from tenants import OPERATOR_LABEL

pytestmark = pytest.mark.cluster


def children_of(kube: Client, tenant: str, config: OperatorConfig) -> dict[ChildKey, Any]:
    found: dict[ChildKey, Any] = {}
    for kind in child_kinds(config.template_kinds):
        where = {"namespace": "*"} if kind.namespaced else {}
        for obj in kube.list(kind.resource, labels={TENANT_LABEL: tenant}, **where):  # type: ignore[call-overload]
            body = {**obj.to_dict(), "kind": kind.kind}
            found[child_key(body)] = body
    return found


async def test_a_pass_knows_its_own_writes_before_their_watch_events(
    kubeconfig: Path, kube: Client, crd_installed: None
) -> None:
    name = f"own-{uuid.uuid4().hex[:6]}"
    # Labelled for no operator process: only the controller below reconciles it.
    tenants.apply(kube, tenants.manifest(name, labels={OPERATOR_LABEL: "in-process"}))
    config = OperatorConfig()
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager="tenantry")
    try:
        controller = Controller(config, client, None)
        body = tenants.get(kube, name).to_dict()
        controller.tenant_seen({"type": "ADDED", "object": body})
        await controller.reconcile(name)

        live = children_of(kube, name, config)
        known = controller.children.of(name)
        assert sorted(known) == sorted(live)
        for key, child in live.items():
            if key[0] != "Deployment":  # its controller writes its status meanwhile
                assert known[key] == summarize(child), key
                # The watch event of the pass's own write: nothing new, so no pass for it.
                assert controller.children.observe(child, deleted=False) is None, key
    finally:
        await client.close()
        tenants.delete(kube, name)
