"""The operator's API client (lightkube carried by aiohttp, tenantry.transport), on the real API
server and against a stand-in for what the API server cannot be made to do on demand: break a
watch in the middle of its body, compress an answer.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import OnErrorAction, OnErrorResult, PatchType
from tenantry.transport import AiohttpTransport, api_client, api_path, status_code
from tenantry.watches import events

from tests.support.ports import served, served_raw

pytestmark = pytest.mark.cluster


def carried_by_aiohttp(client: AsyncClient) -> bool:
    return isinstance(client._client._client._transport, AiohttpTransport)


async def test_every_verb_the_operator_uses_on_the_real_api_server(
    kubeconfig: Path, kube: Client, make_namespace: Callable[..., str]
) -> None:
    namespace = make_namespace("transport")
    client = api_client(KubeConfig.from_file(kubeconfig))
    assert carried_by_aiohttp(client)
    try:
        watch = client.watch(ConfigMap, namespace=namespace, labels={"test": "transport"})
        events = asyncio.Queue[tuple[str, str]]()

        async def follow() -> None:
            async for kind, obj in watch:
                await events.put((kind, str(obj.metadata.name)))  # type: ignore[union-attr]

        follower = asyncio.create_task(follow())
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "applied",
                "namespace": namespace,
                "labels": {"test": "transport"},
            },
            "data": {"key": "value"},
        }
        applied = await client.patch(
            ConfigMap, "applied", manifest, namespace=namespace,
            patch_type=PatchType.APPLY, field_manager="tenantry-tests", force=True,
        )  # fmt: skip
        assert applied.data == {"key": "value"}
        assert (await client.get(ConfigMap, "applied", namespace=namespace)).data == {
            "key": "value"
        }
        listed = [cm.metadata.name async for cm in client.list(ConfigMap, namespace=namespace)]  # type: ignore[union-attr]
        assert "applied" in listed
        assert await asyncio.wait_for(events.get(), 30) == ("ADDED", "applied")

        with pytest.raises(ApiError) as missing:
            await client.get(ConfigMap, "absent", namespace=namespace)
        assert missing.value.status.code == 404
        with pytest.raises(ApiError) as refused:
            await client.create(
                ConfigMap(metadata=ObjectMeta(name="Not_A_Name", namespace=namespace))
            )
        assert refused.value.status.code == 422

        await client.delete(ConfigMap, "applied", namespace=namespace)
        assert await asyncio.wait_for(events.get(), 30) == ("DELETED", "applied")
        follower.cancel()
    finally:
        await client.close()


async def test_a_watch_event_with_a_next_line_character_in_a_value_is_one_event(
    kubeconfig: Path, make_namespace: Callable[..., str]
) -> None:
    """Finding (review): the API server's JSON leaves U+0085 (NEL) unescaped, and httpx's text
    lines, which the operator's watches read, end at it as at a newline: an object with NEL in
    a label value, an annotation or a Secret's key was two lines that were no JSON, and its
    watch failed and asked again from the same version, for ever (a pod annotation would have
    stopped the watch of every runtime pod). Cut from the bytes, it is one event."""
    namespace = make_namespace("nel")
    client = api_client(KubeConfig.from_file(kubeconfig))
    value = "before\u0085after"
    try:
        await client.create(
            ConfigMap(metadata=ObjectMeta(name="nel", namespace=namespace), data={"k": value})
        )
        async with asyncio.timeout(30):
            async for change, body in events(client, ConfigMap, None, namespace, None):
                if body["metadata"]["name"] == "nel":  # not the namespace's kube-root-ca.crt
                    assert (change, body["data"]) == ("ADDED", {"k": value})
                    break
    finally:
        await client.close()


async def test_the_writes_sent_past_httpx_on_the_real_api_server(
    kubeconfig: Path, kube: Client, make_namespace: Callable[..., str]
) -> None:
    """`send_json` (a pass's applies, creates, status patches and events): the answer as the
    API server sent it, and each refusal as lightkube raises it, so the code that tells a
    refusal from a fault (writes.refusals_stall) reads them alike."""
    namespace = make_namespace("send-json")
    client = api_client(KubeConfig.from_file(kubeconfig))

    def manifest(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"key": "value"},
        }

    async def apply(name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = api_path(ConfigMap, namespace, name, fieldManager="tenantry-tests", force="true")
        return await client.send_json("PATCH", path, body, "application/apply-patch+yaml")

    transport = client._client._client._transport
    carried_for_httpx: list[str] = []
    carry = transport.handle_async_request

    async def counted(request: httpx2.Request) -> httpx2.Response:
        carried_for_httpx.append(request.url.path)
        return await carry(request)

    transport.handle_async_request = counted
    try:
        assert (await apply("first", manifest("first")))["data"] == {"key": "value"}
        assert len(carried_for_httpx) == 1  # no credentials seen yet: through httpx
        applied = await apply("applied", manifest("applied"))
        assert len(carried_for_httpx) == 1  # by aiohttp alone
        assert applied["kind"] == "ConfigMap"
        assert applied["metadata"]["managedFields"][0]["manager"] == "tenantry-tests"
        with pytest.raises(ApiError) as invalid:
            await apply("Not_A_Name", manifest("Not_A_Name"))
        assert invalid.value.status.code == 422
        # A name that would climb out of its segment is refused, and the object the path would
        # name after the climb is left as it was (the quoting itself: tests/unit/test_api_path.py).
        with pytest.raises(ApiError) as climbing:
            await apply("../configmaps/applied", {**manifest("applied"), "data": {"k": "x"}})
        assert climbing.value.status.code in (400, 404, 422)
        assert kube.get(ConfigMap, "applied", namespace=namespace).data == {"key": "value"}
        # A group the API server does not serve: a 404 in plain text, not a Status.
        unserved = f"/apis/absent.tenantry.dev/v1/namespaces/{namespace}/things/x"
        with pytest.raises(httpx2.HTTPStatusError) as absent:
            await client.send_json("PATCH", unserved, {}, "application/apply-patch+yaml")
        assert not isinstance(absent.value, ApiError)
        assert status_code(absent.value) == 404
    finally:
        await client.close()


async def test_the_writes_sent_past_httpx_take_a_rotated_token_from_httpx(
    tmp_path: Path,
) -> None:
    """`send_json` carries the credentials httpx last sent. A 401 (the token file rotated, as
    the kubelet rotates a projected token) is sent again through httpx, whose authentication
    flow reads the new token; the writes after it carry that one."""
    token = tmp_path / "token"
    token.write_text("old")
    accepted = ["Bearer old"]
    seen: list[tuple[str, str]] = []

    async def apply(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], request.headers["User-Agent"]))
        if request.headers["Authorization"] != accepted[0]:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401,
                      "reason": "Unauthorized", "message": "Unauthorized"}  # fmt: skip
            return web.json_response(status, status=401)
        return web.json_response({**await request.json(), "answered": len(seen)})

    app = web.Application()
    app.router.add_patch("/api/v1/namespaces/ns/configmaps/{name}", apply)
    async with served(app) as base_url:
        client = api_client(stand_in_config(base_url, {"tokenFile": str(token)}))
        path = api_path(ConfigMap, "ns", "one", fieldManager="tenantry", force="true")

        async def write() -> int:
            answer = await client.send_json("PATCH", path, {"kind": "ConfigMap"})
            return int(answer["answered"])

        try:
            # A path that is not one would send the credentials elsewhere (here: to the
            # stand-in itself, as user "127.0.0.1:<port>"): refused before anything is sent.
            with pytest.raises(ValueError, match="not a path"):
                await client.send_json("PATCH", "@" + base_url.removeprefix("http://") + "/x", {})
            assert seen == []
            assert await write() == 1  # no credentials seen yet: through httpx
            assert await write() == 2  # with httpx's
            token.write_text("new")
            accepted[0] = "Bearer new"
            assert await write() == 5  # refused, then through httpx: refused, read again
            assert await write() == 6  # with the new token at once
        finally:
            await client.close()
    assert [authorization for authorization, _ in seen] == ["Bearer old"] * 4 + ["Bearer new"] * 2
    assert all(agent.startswith("tenantry/") for _, agent in seen), seen


def stand_in_config(base_url: str, user: dict[str, str] | None = None) -> KubeConfig:
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "stand-in", "cluster": {"server": base_url}}],
            "users": [{"name": "u", "user": user or {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "u"}}],
            "current-context": "c",
        }
    )


def config_map_event(name: str, version: str) -> bytes:
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "resourceVersion": version},
    }
    return json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"


async def watch_two_events(
    base_url: str, first_seen: asyncio.Event | None = None
) -> tuple[list[str], list[BaseException]]:
    """Watch the stand-in's ConfigMaps through api_client until two events, every error retried
    at once: the names seen and the errors retried (FIRST_SEEN is set at the first event)."""
    client = api_client(stand_in_config(base_url))
    assert carried_by_aiohttp(client)
    errors: list[BaseException] = []

    def retry(error: BaseException, count: int) -> OnErrorResult:
        errors.append(error)
        return OnErrorResult(OnErrorAction.RETRY, sleep=0)

    seen: list[str] = []
    try:
        async with asyncio.timeout(20):
            async for _, obj in client.watch(ConfigMap, namespace="ns", on_error=retry):
                seen.append(str(obj.metadata.name))  # type: ignore[union-attr]
                if first_seen is not None:
                    first_seen.set()
                if len(seen) == 2:
                    break
    finally:
        await client.close()
    return seen, errors


async def test_a_watch_broken_in_the_middle_of_its_body_is_resumed() -> None:
    """aiohttp's errors reach lightkube as httpx's, which its watch retries; an aiohttp error
    would end the watch (and with it the operator's follow of source Secrets)."""
    connections: list[str | None] = []
    watched = asyncio.Event()

    async def watch(request: web.Request) -> web.StreamResponse:
        connections.append(request.query.get("resourceVersion"))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        if len(connections) == 1:
            await response.write(config_map_event("first", "10"))
            await response.write(b'{"type": "ADDED", "obj')  # and the connection is gone
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(config_map_event("second", "11"))
        await watched.wait()  # the watch stays open until the client has what it wanted
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps", watch)
    async with served(app) as base_url:
        seen, errors = await watch_two_events(base_url)
        watched.set()
    assert seen == ["first", "second"]
    assert connections == [None, "10"]  # resumed from the last version it saw
    assert len(errors) == 1, errors


async def test_a_compressed_answer_is_decoded_and_a_refusal_is_an_api_error() -> None:
    async def get(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t"
        name = request.match_info["name"]
        if name == "absent":
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                      "reason": "NotFound", "message": 'configmaps "absent" not found'}  # fmt: skip
            # As the API server sends it: lightkube reads a Status only from exactly this type.
            return web.Response(
                body=json.dumps(status).encode(), status=404,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name}, "data": {"k": "v" * 1000}}  # fmt: skip
        return web.Response(
            body=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps/{name}", get)
    async with served(app) as base_url:
        client = api_client(stand_in_config(base_url))
        try:
            found = await client.get(ConfigMap, "zipped", namespace="ns")
            assert found.data == {"k": "v" * 1000}
            with pytest.raises(ApiError) as missing:
                await client.get(ConfigMap, "absent", namespace="ns")
            assert missing.value.status.code == 404
        finally:
            await client.close()


def test_a_proxy_for_the_api_server_keeps_lightkubes_own_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As httpx reads the environment: a CIDR or `*.domain` in NO_PROXY exempts the server, and
    `.domain` only its subdomains (urllib, asked first, read both the other way)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:2")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:2")
    cases = [
        ("https://10.96.0.1:443", "", True),
        ("https://10.96.0.1:443", "10.96.0.1", False),
        ("https://10.96.0.1:443", "10.0.0.0/8", False),
        ("https://api.example.com:6443", "*.example.com", False),
        ("https://api.example.com:6443", ".example.com", False),
        ("https://example.com:6443", ".example.com", True),
    ]
    for server, no_proxy, proxied in cases:
        monkeypatch.setenv("NO_PROXY", no_proxy)
        client = api_client(stand_in_config(server))
        assert carried_by_aiohttp(client) is not proxied, (server, no_proxy)


async def test_a_watch_whose_framing_breaks_is_resumed_and_never_hangs() -> None:
    """Finding (review): on a malformed chunk header aiohttp's parser closes the connection but
    leaves the body neither ended nor failed, with no read timeout left: the watch waited
    forever. The body now fails when its connection is lost before its end."""
    connections = 0
    first_seen, watched = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        line = config_map_event("first" if connections == 1 else "second", str(10 + connections))
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        await writer.drain()
        if connections == 1:
            await first_seen.wait()  # the body is being read: the break comes inside it
            writer.write(b"zz\r\n")  # not a chunk size
            await writer.drain()
        await watched.wait()

    async with served_raw(handle) as base_url:
        seen, errors = await watch_two_events(base_url, first_seen)
        watched.set()
    assert seen == ["first", "second"]
    assert [type(error) for error in errors] == [httpx2.RemoteProtocolError]


async def test_a_server_that_never_reads_a_request_body_times_out() -> None:
    """Finding (review): aiohttp has no write timeout, and its read timeout starts once the body
    is sent: a peer that stopped reading held a large write (a Secret, a ConfigMap) forever."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # reads nothing

    async with served_raw(handle) as base_url:
        transport = AiohttpTransport(ssl.create_default_context())
        async with httpx2.AsyncClient(transport=transport, timeout=0.5) as client:
            with pytest.raises(httpx2.WriteTimeout):
                async with asyncio.timeout(20):
                    await client.post(f"{base_url}/x", content=b"x" * (32 << 20))
