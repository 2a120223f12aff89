"""The real node (docs/real-node.md): from a tenant's apply until it is Ready and until it answers
its first task, for a first tenant on an idle node and for a second applied while the first is
busy.

The cluster is the tests' own with the real node beside its kwok nodes (e2e/cluster.py, as `make
e2e` starts it), its API server writing the bench's audit log. The operator runs as `tenantry
run` on this machine, as in the other sections. New pods go to the real node alone, as in the
real-node tests and the demo; each tenant is the other sections' (examples/acme.yaml) with its
model on the scripted stand-in outside the cluster, and tasks come from a gateway pod, as in the
demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.names import COMPONENT_LABEL, HTTP_PORT, RUNTIME, SANDBOX, TENANT_LABEL
from tenantry.render.workloads import http_probe

from bench.control_plane import DEFAULT_DRIFT_SECONDS
from bench.harness import (
    AUDIT_POLICY,
    REPO,
    AuditLog,
    Operator,
    ReadyWatch,
    cluster,
    log,
    prepare,
    tenant,
)
from bench.kube import Kube, collection
from e2e import node

# e2e/cluster.py's settings: the tests' cluster, which alone runs the real node.
REAL_NODE_CLUSTER = {
    "TENANTRY_CLUSTER_NAME": "tenantry",
    "TENANTRY_REAL_NODE": "1",
    "TENANTRY_KWOK_CREATE_ARGS": f"--kube-audit-policy {AUDIT_POLICY}",
}
AUDIT_LOG = REPO / ".cache" / "kwok" / "clusters" / "tenantry" / "logs" / "audit.log"
GATEWAY, GATEWAY_POD = "bench-gateway", "edge"
# The demo's task: the model answers with a program, the tenant's sandbox pod runs it, and the
# model's second reply quotes what it printed.
TASK = "What is 7 times the sum of 1 to 100?"
ANSWER = "sum: 35350"
# The busy tenant's tasks: each a program that keeps its sandbox's CPU (limit: one core of this
# machine's two) busy this long; the scripted model answers a task's own python block with it.
BUSY_SECONDS = 5
BUSY_TASK = (
    "Run this:\n```python\nimport time\n"
    f"end = time.time() + {BUSY_SECONDS}\nwhile time.time() < end:\n    pass\nprint('busy')\n```\n"
)
# Run in the gateway pod (python -c BUSY URL BODY): tasks one after another until its stdin
# closes, then when each began and ended. Its first line, "busy", comes as the first is sent.
BUSY = """
import json, sys, threading, time, urllib.request
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("busy", flush=True)
tasks = []
while not stop.is_set():
    began = time.time()
    request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        result = json.load(response)["result"]
    if "busy" not in result:
        sys.exit("a busy task was not run: " + result)
    tasks.append([began, time.time()])
print(json.dumps(tasks))
"""
MILESTONES = ("scheduled", "running", "ready")


def namespace(name: str) -> str:
    return f"{OperatorConfig().namespace_prefix}-{name}"


def task_url(name: str) -> str:
    return f"http://runtime.{namespace(name)}.svc.cluster.local:{HTTP_PORT}/v1/tasks"


def task_body(content: str) -> str:
    return json.dumps({"topicType": "default", "content": content})


def tenant_on_the_node(name: str) -> dict[str, Any]:
    """The bench's tenant, its model the scripted stand-in (as the demo changes acme's)."""
    body = tenant(name)
    host, port = node.MODEL
    body["spec"]["runtime"]["model"]["baseUrl"] = f"http://{host}:{port}/v1"
    return body


def milestones(pod: dict[str, Any]) -> list[str]:
    """Which of MILESTONES a pod has reached: bound to a node, its container running, Ready."""
    status = pod.get("status") or {}
    reached = []
    if pod["spec"].get("nodeName"):
        reached.append("scheduled")
    if any("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or []):
        reached.append("running")
    if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
        reached.append("ready")
    return reached


@dataclass
class PodWatch:
    """When each tenant pod first reached each milestone (monotonic clock), seen through a watch."""

    kube: Kube
    seen: dict[tuple[str, str, str], float] = field(default_factory=dict)

    async def run(self) -> None:
        async for _, pod in self.kube.watch(f"/api/v1/pods?labelSelector={TENANT_LABEL}"):
            labels = pod["metadata"]["labels"]
            for milestone in milestones(pod):
                key = (labels[TENANT_LABEL], labels[COMPONENT_LABEL], milestone)
                self.seen.setdefault(key, time.monotonic())

    def since(self, name: str, start: float) -> dict[str, dict[str, float]]:
        return {
            component: {m: self.seen[name, component, m] - start for m in MILESTONES}
            for component in (RUNTIME, SANDBOX)
        }


@dataclass
class Trial:
    kube: Kube
    ready: ReadyWatch
    pods: PodWatch


async def first_answer(trial: Trial, name: str) -> dict[str, Any]:
    """Apply NAME, then time it until Ready, its pods' milestones, and until its first task is
    answered: a 200 from its runtime, through its Service, with the sandbox's output in it."""
    poll = asyncio.create_task(
        asyncio.to_thread(
            node.kubectl, "exec", "-n", GATEWAY, GATEWAY_POD, "--", "python", "-c",
            node.TASK_UNTIL_ANSWERED, task_url(name), task_body(TASK), "100",
        )
    )  # fmt: skip
    load = os.getloadavg()[0]
    applied_at, applied = time.time(), time.monotonic()
    await trial.kube.apply(tenant_on_the_node(name))
    answered = json.loads(await poll)
    result = answered["answer"]["result"]
    if ANSWER not in result:
        raise RuntimeError(f"{name} answered without the sandbox's output: {result!r}")
    ready = await trial.ready.until([name], timeout=60)
    return {
        "tenant": name,
        "applied_at": applied_at,
        "load_average": load,  # this machine is shared: the 1-minute load at the apply
        "ready_seconds": ready - applied,
        "answered_seconds": answered["answered_at"] - applied_at,
        "request_seconds": answered["request_seconds"],
        "failures": answered["failures"],
        "pods": trial.pods.since(name, applied),
    }


@contextlib.asynccontextmanager
async def busy(name: str) -> AsyncIterator[list[list[float]]]:
    """NAME's sandbox computing, task after task, while the `with` runs; the list receives when
    each task began and ended (this machine's clock) once it is over."""
    process = await asyncio.create_subprocess_exec(
        str(node.BIN_DIR / "kubectl"), "--kubeconfig", str(node.KUBECONFIG), "exec", "-i",
        "-n", GATEWAY, GATEWAY_POD, "--", "python", "-c", BUSY, task_url(name),
        task_body(BUSY_TASK), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    tasks: list[list[float]] = []
    try:
        if await process.stdout.readline() != b"busy\n":
            raise RuntimeError(f"the busy tasks to {name} did not start")
        # The first task's program is running in the sandbox a moment after it is sent.
        await asyncio.sleep(1)
        yield tasks
    finally:
        process.stdin.close()  # the script finishes the task in hand and reports
        output = await asyncio.wait_for(process.stdout.read(), 120)
        if await process.wait() != 0:
            raise RuntimeError(f"the busy tasks to {name} failed")
    tasks += json.loads(output)


async def delete(kube: Kube, names: Iterable[str]) -> None:
    """Delete the tenants and wait until their namespaces are gone: the next round starts on a
    node with nothing of theirs."""
    names = list(names)
    for name in names:
        await kube.delete(f"{collection('AgentTenant')}/{name}")
    deadline = time.monotonic() + 300
    for name in names:
        path = f"/api/v1/namespaces?fieldSelector=metadata.name%3D{namespace(name)}"
        while (await kube.get(path))["items"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace(name)} still there after 300 s")
            await asyncio.sleep(1)


def pair(round_: int) -> tuple[str, str]:
    """The round's two tenants: new names each round."""
    return f"bench-a{round_}", f"bench-b{round_}"


async def rounds(trial: Trial, count: int) -> list[dict[str, Any]]:
    results = []
    for round_ in range(count):
        first, second = pair(round_)
        a = await first_answer(trial, first)
        async with busy(first) as busy_tasks:
            b = await first_answer(trial, second)
        b["first_busy"] = [
            [began - b["applied_at"], ended - b["applied_at"]] for began, ended in busy_tasks
        ]
        log(
            f"realnode round {round_}: first answered after {a['answered_seconds']:.1f}s, "
            f"second (first busy) after {b['answered_seconds']:.1f}s"
        )
        results.append({"round": round_, "first": a, "second": b})
        await delete(trial.kube, (first, second))
    return results


def check() -> None:
    """Fail before anything runs where this section cannot: the node needs root on Linux and
    the machine's one real node, which the section starts and stops itself."""
    problems = node.missing()
    if problems:
        raise SystemExit(
            "bench realnode: this machine cannot run the real node; it lacks:\n  "
            + "\n  ".join(problems)
        )
    if node.netns_exists(node.NETNS) or node.KUBECONFIG.exists():
        raise SystemExit(
            "bench realnode: the tests' cluster or a real node is running (or was left behind); "
            "this section starts and stops its own: `make cluster-down` first, in the checkout "
            "that started it"
        )


async def run(count: int, workdir: Path) -> dict[str, Any]:
    check()
    names = [name for round_ in range(count) for name in pair(round_)]
    model = operator = None
    try:
        started = time.monotonic()
        cluster("up", REAL_NODE_CLUSTER, quiet=False)
        node_up = time.monotonic()
        up_seconds = node_up - started
        kube = Kube(node.KUBECONFIG)
        try:
            await prepare(kube, names)
            node.place("real")
            model = node.scripted_model(workdir / "model-requests.jsonl")
            gateway = node.listener_pod(
                GATEWAY,
                GATEWAY_POD,
                {"tenantry.dev/gateway": "true"},
                OperatorConfig().runtime_image,
            )
            node.kubectl(
                "apply",
                "-f",
                "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": gateway}),
            )
            node.kubectl(
                "wait",
                "--for=condition=Ready",
                f"pod/{GATEWAY_POD}",
                "-n",
                GATEWAY,
                "--timeout=100s",
            )
            operator = Operator(
                workdir / f"operator-realnode-{int(time.time())}.log",
                DEFAULT_DRIFT_SECONDS,
                node.KUBECONFIG,
            )
            audit = AuditLog(AUDIT_LOG)
            mark = audit.mark()
            operator.start()
            await operator.until_watching(audit, mark)
            await operator.until_synced()
            # A kubelet delays the first probe of every pod it meets within one probe period of
            # its own start by a random part of a period (pkg/kubelet/prober/worker.go): the first
            # round would not be like the others.
            period = http_probe("/readyz")["periodSeconds"]
            await asyncio.sleep(max(0.0, node_up + period - time.monotonic()))
            trial = Trial(kube, ReadyWatch(kube, "operator"), PodWatch(kube))
            watchers = [asyncio.create_task(w.run()) for w in (trial.ready, trial.pods)]
            try:
                results = await rounds(trial, count)
            finally:
                for watcher in watchers:
                    watcher.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            await kube.close()
    finally:
        if operator is not None:
            operator.stop()
        if model is not None:
            model.kill()
            model.wait()
        cluster("down", REAL_NODE_CLUSTER, quiet=False)
    return {
        "cluster_up_seconds": up_seconds,
        "busy_task_seconds": BUSY_SECONDS,
        "rounds": results,
    }
