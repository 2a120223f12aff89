"""Compare Kubernetes Python clients for an asyncio operator, without a cluster or network.

For each client, in a fresh interpreter per run:
  (a) import time of the client plus the core/apps/networking/rbac API and model modules
      an operator uses, and VmRSS / VmHWM afterwards (from /proc/self/status);
  (b) the time to turn 1000 server-style Deployment JSON bodies (~3.8 KB, with status and
      managedFields) into the library's typed objects, the way the library does it for a
      GET response, and the RSS growth while those 1000 objects are kept alive;
  (c) a typed server-side apply of one Deployment, captured just before the wire (the HTTP
      transport is replaced, no socket is opened), to show what each client sends.

Usage:  python measure.py [runs]   (default 5, after one untimed warm-up run per client)
"""

import contextlib
import gc
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

N_BODIES = 1000
DISTS = ("lightkube", "lightkube-models", "msgspec", "kubernetes", "kubernetes_asyncio", "pydantic")
GROUPS = ("core_v1", "apps_v1", "networking_v1", "rbac_authorization_v1")
Parser = Callable[[bytes], Any]


def operator_modules(pkg: str) -> list[str]:
    """What an operator imports: the client, its config loader, four API groups."""
    if pkg == "lightkube":  # lightkube/__init__ brings AsyncClient and KubeConfig
        return ["lightkube", *(f"lightkube.resources.{g}" for g in GROUPS)]
    return [f"{pkg}.config", f"{pkg}.client", *(f"{pkg}.client.api.{g}_api" for g in GROUPS)]


def lightkube_client_path() -> Parser:  # what AsyncClient.get() runs on a response body
    decode_object = importlib.import_module("lightkube.core.decoders").decode_object
    deployment = importlib.import_module("lightkube.resources.apps_v1").Deployment
    return lambda body: decode_object(body, deployment)


def lightkube_from_dict() -> Parser:
    deployment = importlib.import_module("lightkube.resources.apps_v1").Deployment
    return lambda body: deployment.from_dict(json.loads(body))


def official_parser(pkg: str) -> Callable[[], Parser]:
    def factory() -> Parser:  # ApiClient.response_deserialize() -> deserialize(text, type, ctype)
        api = importlib.import_module(f"{pkg}.client").ApiClient()
        return lambda body: api.deserialize(body.decode(), "V1Deployment", "application/json")

    return factory


class Response:  # stands in for kubernetes_asyncio's rest.RESTResponse: deserialize() reads .data
    def __init__(self, data: str) -> None:
        self.data = data


def kubernetes_asyncio_parser() -> Parser:
    import asyncio  # noqa: PLC0415 - not preloaded: it is part of what the clients' imports cost

    client = importlib.import_module("kubernetes_asyncio.client")

    async def make() -> Any:  # ApiClient() opens an aiohttp session: it needs a running loop
        api = client.ApiClient()
        await api.close()  # deserialize() never uses the session
        return api

    api = asyncio.run(make())
    return lambda body: api.deserialize(Response(body.decode()), "V1Deployment")


CLIENTS: dict[str, tuple[str, Callable[[], Parser]]] = {  # name: (package, parser factory)
    "lightkube (AsyncClient path)": ("lightkube", lightkube_client_path),
    "lightkube (from_dict)": ("lightkube", lightkube_from_dict),
    "kubernetes (sync)": ("kubernetes", official_parser("kubernetes")),
    "kubernetes.aio": ("kubernetes.aio", official_parser("kubernetes.aio")),
    "kubernetes_asyncio": ("kubernetes_asyncio", kubernetes_asyncio_parser),
}


# fmt: off
def deployment_body(i: int) -> bytes:
    """A Deployment as the API server returns it: defaults filled in, status, managedFields."""
    name, ns, ts = f"tenant-{i:04d}-web", f"tenant-{i:04d}", "2025-03-01T12:00:00Z"
    labels = {"app.kubernetes.io/name": "web", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/managed-by": "tenantry", "tenantry.dev/tenant": ns}
    f_labels: dict[str, Any] = {"f:labels": {f"f:{k}": {} for k in labels}}
    f_container: dict[str, Any] = {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}
    f_spec = {"f:metadata": f_labels, "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
        "f:metadata": f_labels, "f:spec": {"f:containers": {'k:{"name":"web"}': f_container}}}}}
    f_status: dict[str, Any] = {"f:status": {f"f:{k}": {} for k in (
        "availableReplicas", "conditions", "observedGeneration", "readyReplicas", "replicas")}}
    probe = {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
             "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 1,
             "successThreshold": 1, "failureThreshold": 3}
    container = {
        "name": "web", "image": f"web:1.{i % 7}.0",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "TENANT", "value": ns}, {"name": "POD_IP", "valueFrom": {
            "fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                      "requests": {"cpu": "100m", "memory": "128Mi"}},
        "livenessProbe": probe, "readinessProbe": probe,
        "volumeMounts": [{"name": "config", "mountPath": "/etc/web", "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
    conditions = [{"type": t, "status": "True", "lastUpdateTime": ts, "lastTransitionTime": ts,
                   "reason": r, "message": f"{name} {r}"} for t, r in (
        ("Available", "MinimumReplicasAvailable"), ("Progressing", "NewReplicaSetAvailable"))]
    managed = [{"manager": "tenantry", "operation": "Apply", "apiVersion": "apps/v1", "time": ts,
                "fieldsType": "FieldsV1", "fieldsV1": f_spec},
               {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                "time": ts, "fieldsType": "FieldsV1", "fieldsV1": f_status, "subresource": "status"}]
    pod_spec = {"containers": [container], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                "terminationGracePeriodSeconds": 30, "serviceAccountName": "web",
                "schedulerName": "default-scheduler",
                "securityContext": {"runAsUser": 10001, "fsGroup": 10001},
                "volumes": [{"name": "config", "configMap": {"name": f"{name}-config", "defaultMode": 420}}]}
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": f"0b6d3c1e-8f1a-4c2b-9d3e-{i:012d}",
                     "resourceVersion": str(100000 + i), "generation": 2, "creationTimestamp": ts,
                     "labels": labels, "annotations": {"deployment.kubernetes.io/revision": "2"},
                     "managedFields": managed},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "revisionHistoryLimit": 10,
                 "progressDeadlineSeconds": 600,
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2, "conditions": conditions},
    }, separators=(",", ":")).encode()
# fmt: on


def mib(field: str) -> float:
    """VmRSS or VmHWM of this process, in MiB."""
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith(field + ":"))
    return int(kib) / 1024


def measure(name: str) -> None:
    pkg, parser_factory = CLIENTS[name]
    out = {"rss_start": mib("VmRSS")}
    wall, cpu = time.perf_counter(), time.process_time()
    for module in operator_modules(pkg):
        importlib.import_module(module)
    out["import_cpu"] = (time.process_time() - cpu) * 1e3
    out["import_ms"] = (time.perf_counter() - wall) * 1e3
    out["rss_import"], out["hwm_import"] = mib("VmRSS"), mib("VmHWM")
    parse = parser_factory()
    bodies = [deployment_body(i) for i in range(N_BODIES)]
    out["body_bytes"] = sum(map(len, bodies)) / N_BODIES
    first = parse(bodies[0])  # warm-up: one-time lazy caches are not the steady-state cost
    assert first.spec.template.spec.containers[0].image == "web:1.0.0"
    del first
    gc.collect()
    rss_before = mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    objs = [parse(body) for body in bodies]
    out["parse_cpu"] = (time.process_time() - cpu) * 1e3
    out["parse_ms"] = (time.perf_counter() - wall) * 1e3
    gc.collect()
    out["rss_growth"] = mib("VmRSS") - rss_before
    assert len(objs) == N_BODIES  # the objects stay alive up to here
    print(json.dumps(out))


class SentError(Exception):
    """Raised where the request would have left the process."""


class Wire:  # stands in for the urllib3 / aiohttp pool manager: records, sends nothing
    seen: tuple[str, str, str, str] = ("", "", "", "")

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any = None,
        data: Any = None,
        **_: Any,
    ) -> None:
        Wire.seen = (method, url, headers["Content-Type"], body or data)
        raise SentError


def ssa(name: str) -> None:
    """A typed server-side apply of one Deployment, field manager "tenantry", force."""
    import asyncio  # noqa: PLC0415 - see kubernetes_asyncio_parser()

    pkg, parser_factory = CLIENTS[name]
    obj = json.loads(deployment_body(0))
    del obj["status"], obj["metadata"]["managedFields"], obj["metadata"]["uid"]
    typed = parser_factory()(json.dumps(obj).encode())

    async def send() -> None:
        # lightkube: AsyncClient.apply() -> AsyncClient.patch(patch_type=PatchType.APPLY)
        if pkg == "lightkube":
            lightkube, models = (
                importlib.import_module(m) for m in ("lightkube", "lightkube.config.models")
            )
            httpx2 = importlib.import_module("httpx2")

            def handler(request: Any) -> None:
                Wire.seen = (
                    request.method,
                    str(request.url),
                    request.headers["Content-Type"],
                    request.content.decode(),
                )
                raise SentError

            config = lightkube.KubeConfig.from_one(
                cluster=models.Cluster(server="https://k8s.invalid"), user=models.User()
            )
            client = lightkube.AsyncClient(config=config, transport=httpx2.MockTransport(handler))
            await client.apply(typed, field_manager="tenantry", force=True)
            return
        # the official generated clients: patch_namespaced_deployment() with the content type forced
        client = importlib.import_module(f"{pkg}.client")
        api = client.ApiClient(client.Configuration(host="https://k8s.invalid"))
        session, api.rest_client.pool_manager = api.rest_client.pool_manager, Wire()
        if pkg == "kubernetes_asyncio":
            await session.close()  # the aiohttp session its ApiClient() opened
        call = client.AppsV1Api(api).patch_namespaced_deployment(
            obj["metadata"]["name"],
            obj["metadata"]["namespace"],
            typed,
            field_manager="tenantry",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        if asyncio.iscoroutine(call):
            await call

    with contextlib.suppress(SentError):
        asyncio.run(send())
    method, url, content_type, body = Wire.seen
    print(
        f"| {name} | `{method} {url.removeprefix('https://k8s.invalid')}` | {content_type} | "
        f"{len(body)} B, JSON {json.loads(body)['kind']} |"
    )


def main(runs: int) -> None:
    import statistics  # noqa: PLC0415 - kept out of the measured children's start-up
    import subprocess  # noqa: PLC0415
    from importlib.metadata import version  # noqa: PLC0415

    def child(mode: str, name: str) -> str:
        return subprocess.run(
            [sys.executable, __file__, mode, name], check=True, capture_output=True, text=True
        ).stdout

    metrics = {
        "import_cpu": "import CPU ms",
        "import_ms": "import wall ms",
        "rss_import": "RSS after import MiB",
        "hwm_import": "VmHWM MiB",
        "parse_cpu": f"{N_BODIES}-body parse CPU ms",
        "parse_ms": f"{N_BODIES}-body parse wall ms",
        "rss_growth": f"RSS growth, {N_BODIES} kept objects MiB",
    }
    print(f"python {sys.version.split()[0]}; " + ", ".join(f"{d} {version(d)}" for d in DISTS))
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for run in range(runs + 1):  # run 0 is an untimed warm-up (.pyc files, page cache);
        for name in CLIENTS:  # clients take turns so background load hits all alike
            result = json.loads(child("--measure", name))
            if run:
                samples[name].append(result)
    print("| client | " + " | ".join(metrics.values()) + " |\n|---" + "|---:" * len(metrics) + "|")
    for name, results in samples.items():
        cells = [
            f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"
            for v in ([r[key] for r in results] for key in metrics)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"median (min–max) of {runs} fresh processes per client; RSS at child start "
        f"{results[0]['rss_start']:.1f} MiB; mean body {results[0]['body_bytes']:.0f} bytes\n"
    )
    print("| client | server-side apply request | Content-Type | body |\n|---|---|---|---|")
    for name, (_, parser_factory) in CLIENTS.items():
        if parser_factory is not lightkube_from_dict:
            print(child("--ssa", name), end="", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] in (["--measure"], ["--ssa"]):
        (measure if sys.argv[1] == "--measure" else ssa)(sys.argv[2])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
