"""A tight async Kubernetes client for the benchmarks: raw HTTP with aiohttp, no operator code.

It is the direct-write baseline's client, the readiness watcher and the metrics scraper. It sends
its own User-Agent, so the API server's audit log tells its requests from the operator's.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

USER_AGENT = "tenantry-bench"
FIELD_MANAGER = "tenantry-bench"

# kind → (API path prefix, plural, namespaced), for every kind the benchmarks write.
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "LimitRange": ("/api/v1", "limitranges", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "AgentTenant": ("/apis/tenantry.dev/v1alpha1", "agenttenants", False),
    "AgentTenantTemplate": ("/apis/tenantry.dev/v1alpha1", "agenttenanttemplates", False),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
}


def collection(kind: str, namespace: str | None = None) -> str:
    prefix, plural, namespaced = KINDS[kind]
    if namespaced and namespace:
        return f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{prefix}/{plural}"


def object_path(manifest: Mapping[str, Any]) -> str:
    meta = manifest["metadata"]
    return f"{collection(manifest['kind'], meta.get('namespace'))}/{meta['name']}"


class Kube:
    """One HTTP/1.1 connection pool to the API server, authenticated by the kubeconfig's client cert."""

    def __init__(self, kubeconfig: Path, connections: int = 64) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        context.load_cert_chain(user["client-certificate"], user["client-key"])
        self.server = cluster["server"]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=connections),
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            # A watch event is one line; a Deployment's can exceed aiohttp's 64 KiB default.
            read_bufsize=2**22,
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body)
        for _ in range(60):
            async with self._session.request(
                method, self.server + path, data=data, headers={"Content-Type": content_type}
            ) as response:
                text = await response.text()
                # 429 "storage is (re)initializing": a new CRD's cache is still filling.
                if response.status == 429:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                if response.status >= 400:
                    raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
                return json.loads(text) if text.startswith("{") else text
        raise RuntimeError(f"{method} {path}: still 429 after a minute")

    async def apply(self, manifest: Mapping[str, Any]) -> Any:
        """Server-side apply, as the operator does (JSON is YAML)."""
        return await self.request(
            "PATCH",
            f"{object_path(manifest)}?fieldManager={FIELD_MANAGER}&force=true",
            manifest,
            "application/apply-patch+yaml",
        )

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def watch(self, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """List, then watch from the list's revision: (type, object) for existing objects
        (type "ADDED"), then every change. Runs until cancelled; reconnects on a closed stream."""
        listed = await self.get(path)
        for item in listed["items"]:
            yield "ADDED", item
        revision = listed["metadata"]["resourceVersion"]
        separator = "&" if "?" in path else "?"
        while True:
            url = f"{self.server}{path}{separator}watch=1&allowWatchBookmarks=true&resourceVersion={revision}"
            async with self._session.get(url) as response:
                async for line in response.content:
                    event = json.loads(line)
                    revision = event["object"]["metadata"].get("resourceVersion", revision)
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        yield event["type"], event["object"]

    async def revision(self) -> int:
        """etcd's current revision, as the API server reports it for a consistent list."""
        listed = await self.get("/api/v1/namespaces?limit=1")
        return int(listed["metadata"]["resourceVersion"])

    async def request_totals(self) -> dict[str, float]:
        """apiserver_request_total from /metrics, summed by verb."""
        text: str = await self.request("GET", "/metrics")
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            verb = labels.split('verb="', 1)[1].split('"', 1)[0]
            totals[verb] = totals.get(verb, 0.0) + float(value)
        return totals


async def gather_limited(coroutines: list[Any], concurrency: int) -> list[Any]:
    """Run coroutines with at most `concurrency` in flight (a tight client, not a flood)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))
