"""The pure parts of the writes `ApiClient.send_json` sends: their paths (transport.api_path),
for every kind the operator writes that way and for names and values that would leave their
segment, and how an answer is read (transport.answered)."""

from __future__ import annotations

import httpx2
import pytest
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace
from tenantry.resources import AgentTenantResource
from tenantry.transport import answered, api_path


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


def test_a_namespace_exactly_when_the_kind_is_namespaced() -> None:
    with pytest.raises(ValueError, match="namespace"):
        api_path(Namespace, "ns", "x")
    with pytest.raises(ValueError, match="namespace"):
        api_path(ConfigMap, None, "x")


STATUS = (
    b'{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "message": "no"}'
)


def test_an_answer_is_an_object_or_the_error_lightkube_raises() -> None:
    assert answered(
        "PATCH", "https://api/x", 200, b'{"kind": "ConfigMap"}', "application/json"
    ) == {"kind": "ConfigMap"}
    # A Status, with exactly the type the API server gives it, is an ApiError, as in lightkube.
    with pytest.raises(ApiError) as refused:
        answered("PATCH", "https://api/x", 404, STATUS, "application/json")
    assert refused.value.status.code == 404
    # Anything else is httpx's error, with its status: a 2xx that is not an object, a redirect
    # from something in front of the API server, a refusal in plain text or of another type.
    for status, content, kind in [
        (200, b"[1]", "application/json"),
        (201, b"", "application/json"),
        (302, b"", "text/html"),
        (404, b"404 page not found", "text/plain; charset=utf-8"),
        (400, b'{"message": "a proxy"}', "application/json; charset=utf-8"),
    ]:
        with pytest.raises(httpx2.HTTPStatusError) as failed:
            answered("PATCH", "https://api/x", status, content, kind)
        assert not isinstance(failed.value, ApiError), (status, kind)
        assert failed.value.response.status_code == status
