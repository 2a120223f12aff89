"""The paths of the writes `ApiClient.send_json` sends (transport.api_path): every kind the
operator writes that way, and a name or value that would leave its segment."""

from __future__ import annotations

import pytest
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace
from tenantry.resources import AgentTenantResource
from tenantry.transport import api_path


def test_the_path_of_each_write_sent_past_httpx() -> None:
    assert (
        api_path(Namespace, fieldManager="tenantry") == "/api/v1/namespaces?fieldManager=tenantry"
    )
    assert (
        api_path(Deployment, "tenant-acme", "runtime", fieldManager="tenantry", force="true")
        == "/apis/apps/v1/namespaces/tenant-acme/deployments/runtime?fieldManager=tenantry&force=true"
    )
    assert api_path(Namespace, None, "tenant-acme") == "/api/v1/namespaces/tenant-acme"
    assert api_path(Event, "default") == "/api/v1/namespaces/default/events"
    assert (
        api_path(AgentTenantResource.Status, name="acme")
        == "/apis/tenantry.dev/v1alpha1/agenttenants/acme/status"
    )


def test_a_name_or_value_never_leaves_its_segment() -> None:
    assert (
        api_path(ConfigMap, "ns", "../secrets/x?watch=1#", fieldManager="a&force=false")
        == "/api/v1/namespaces/ns/configmaps/..%2Fsecrets%2Fx%3Fwatch%3D1%23"
        "?fieldManager=a%26force%3Dfalse"
    )
    assert api_path(ConfigMap, "..", ".") == "/api/v1/namespaces/%2E%2E/configmaps/%2E"
    assert api_path(ConfigMap, "ns", "a..b") == "/api/v1/namespaces/ns/configmaps/a..b"


def test_an_empty_name_is_refused_rather_than_naming_the_collection() -> None:
    with pytest.raises(ValueError, match="empty"):
        api_path(ConfigMap, "ns", "")
