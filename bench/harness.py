"""The parts every control-plane benchmark uses: a fresh cluster, the operator as a process, the
API server's audit log, and the tenants themselves.

The benchmarks run on their own kwokctl cluster ("tenantry-bench"), started fresh for every
trial so no trial inherits another's objects. It differs from the tests' cluster in two flags:
`--disable-qps-limits` lifts the client-side rate limits of kube-controller-manager and
kube-scheduler (20 and 50 requests/s by default; a cluster that runs a thousand tenants is tuned
like this, and otherwise those limits, not the operator, would be measured), and an audit
policy that records the user agent, verb and resource of every request.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from tenantry.children import deployment_health
from tenantry.crd import CRDS

from bench.kube import Kube
from tests.support import processes
from tests.support.examples import example
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
CLUSTER_NAME = "tenantry-bench"
KUBECONFIG = REPO / ".cache" / CLUSTER_NAME / "cluster" / "kubeconfig"
AUDIT_LOG = REPO / ".cache" / "kwok" / "clusters" / CLUSTER_NAME / "logs" / "audit.log"
# kwokctl's record of the processes it started: one "<component>.pid" each.
PIDS = REPO / ".cache" / "kwok" / "clusters" / CLUSTER_NAME / "pids"
AUDIT_POLICY = REPO / "bench" / "audit-policy.yaml"
TENANTRY = Path(sys.executable).parent / "tenantry"
SECRET_SOURCE_NAMESPACE = "tenantry-secrets"
SOURCE_SECRET = "bench-model"
# BENCH_PROFILE=1: record where the operator spends its CPU, next to its log.
PROFILE = os.environ.get("BENCH_PROFILE") == "1"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def log(message: str) -> None:
    print(f"[bench] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# ---- the cluster ---------------------------------------------------------------------------


# e2e/cluster.py's settings for the benchmarks' own cluster.
BENCH_CLUSTER = {
    "TENANTRY_CLUSTER_NAME": CLUSTER_NAME,
    "TENANTRY_KWOK_CREATE_ARGS": f"--disable-qps-limits --kube-audit-policy {AUDIT_POLICY} "
    # 2 Services per tenant: the default /24 of Service IPs holds only 127 tenants.
    "--extra-args kube-apiserver=service-cluster-ip-range=10.96.0.0/16",
    # 2 pods per tenant: kwok's two nodes (110 pods, 32 CPUs each) would hold 110 tenants.
    "TENANTRY_NODE_ALLOCATABLE": "pods=1500,cpu=1000,memory=4Ti",
}


def cluster(command: str, settings: Mapping[str, str] = BENCH_CLUSTER, quiet: bool = True) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "e2e" / "cluster.py"), command],
        env={**os.environ, **settings},
        check=True,
        stderr=subprocess.DEVNULL if quiet else None,
    )


async def fresh_cluster(tenant_names: Iterable[str]) -> None:
    """A new, empty cluster with the CRDs and a model Secret that the named tenants may copy."""
    cluster("down")
    cluster("up")
    kube = Kube(KUBECONFIG)
    try:
        await prepare(kube, tenant_names)
    finally:
        await kube.close()


def cpu_seconds(pid: int) -> float:
    """CPU time process PID used so far, user and system (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds used so far by each process of the bench cluster (kube-apiserver, etcd,
    kube-controller-manager, kube-scheduler, kwok-controller) and by this process (the bench:
    its writes in the direct baseline, its readiness watch in both modes)."""
    used = {path.stem: cpu_seconds(int(path.read_text())) for path in sorted(PIDS.glob("*.pid"))}
    used["bench"] = sum(os.times()[:2])
    return used


async def prepare(kube: Kube, tenant_names: Iterable[str]) -> None:
    """The CRDs, Established, and a model Secret that the named tenants may copy."""
    for plural, build in CRDS.items():
        await kube.apply(build())
        crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.tenantry.dev"
        while not any(
            c["type"] == "Established" and c["status"] == "True"
            for c in ((await kube.get(crd_path)).get("status") or {}).get("conditions") or []
        ):
            await asyncio.sleep(0.2)
    await kube.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SECRET_SOURCE_NAMESPACE}}
    )
    await kube.apply(source_secret(tenant_names))


def source_secret(tenant_names: Iterable[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SOURCE_SECRET,
            "namespace": SECRET_SOURCE_NAMESPACE,
            "annotations": {"tenantry.dev/allowed-tenants": ",".join(tenant_names)},
        },
        "data": {"api-key": base64.b64encode(b"sk-bench-not-a-real-key").decode()},
    }


# ---- the tenants ---------------------------------------------------------------------------


def tenant_names(count: int) -> list[str]:
    return [f"bench-{index:04d}" for index in range(count)]


TEMPLATE_KIND = "v1/PersistentVolumeClaim"


def claim_template() -> dict[str, Any]:
    """examples/templates/agent-memory.yaml, selecting every tenant: one claim each."""
    path = REPO / "examples" / "templates" / "agent-memory.yaml"
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["spec"]["selector"] = {}
    return body


def tenant(name: str) -> dict[str, Any]:
    """examples/acme.yaml under another name, its model key copied from the bench's Secret: two
    agents, a sandbox, a quota. 16 children: namespace, quota, limits, 3 policies, 3 accounts,
    2 Secrets, a ConfigMap, 2 Deployments and 2 Services."""
    body = example("acme")
    body["metadata"]["name"] = name
    body["spec"]["secrets"] = [{"name": "model-credentials", "from": SOURCE_SECRET}]
    return body


def tenant_ready(body: Mapping[str, Any]) -> bool:
    """Ready=True for the tenant's current generation: what `kubectl wait` and Argo CD look at."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


@dataclass
class ReadyWatch:
    """When each tenant first became ready, seen through a watch (monotonic clock).

    `operator` mode watches AgentTenants for Ready=True; `direct` mode (the baseline, with no
    operator to write status) watches Deployments and counts a tenant ready when both of its
    Deployments are available — the same test the operator applies before it says Ready.
    """

    kube: Kube
    mode: str
    ready_at: dict[str, float] = field(default_factory=dict)
    _available: dict[str, set[str]] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _failure: Exception | None = None

    async def run(self) -> None:
        try:
            await self._watch()
        except Exception as error:
            self._failure = error  # `until` raises it, rather than waiting out its timeout
            self._changed.set()
            raise

    async def _watch(self) -> None:
        if self.mode == "operator":
            async for _, body in self.kube.watch("/apis/tenantry.dev/v1alpha1/agenttenants"):
                name = body["metadata"]["name"]
                if name not in self.ready_at and tenant_ready(body):
                    self._mark(name)
            return
        path = "/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dtenantry"
        async for kind, body in self.kube.watch(path):
            name = body["metadata"]["labels"]["tenantry.dev/tenant"]
            if kind != "DELETED" and deployment_health(body)[0]:
                available = self._available.setdefault(name, set())
                available.add(body["metadata"]["name"])
                if len(available) == 2 and name not in self.ready_at:
                    self._mark(name)

    def _mark(self, name: str) -> None:
        self.ready_at[name] = time.monotonic()
        self._changed.set()

    async def until(self, names: Iterable[str], timeout: float) -> float:
        """Wait until every named tenant is ready; returns the monotonic time of the last one."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while not wanted <= self.ready_at.keys():
            if self._failure is not None:
                raise RuntimeError("the readiness watch failed") from self._failure
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(wanted - self.ready_at.keys())
                raise TimeoutError(f"{len(missing)} tenants not ready, e.g. {missing[:3]}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 5))
            except TimeoutError:
                continue
        return max(self.ready_at[name] for name in wanted)


# ---- the audit log -------------------------------------------------------------------------


def agent_of(user_agent: str) -> str:
    """Who made a request, from its User-Agent: the operator is Kopf (aiohttp) plus lightkube
    (httpx), both in one process; the rest is the cluster's own components and the bench."""
    for prefix, agent in (
        ("kopf/", "operator"),
        ("python-httpx", "operator"),  # lightkube: python-httpx2/…
        ("tenantry/", "operator"),  # the writes it sends itself (tenantry.transport)
        ("tenantry-bench", "bench"),
        ("kube-controller-manager/", "kube-controller-manager"),
        ("kube-scheduler/", "kube-scheduler"),
        ("kube-apiserver/", "kube-apiserver"),
        ("kwok/", "kwok"),
        ("kubectl/", "kubectl"),
    ):
        if user_agent.startswith(prefix):
            return agent
    return user_agent.split("/", 1)[0] or "unknown"


class AuditLog:
    """Requests the API server answered, read from its audit log between two marks."""

    def __init__(self, path: Path = AUDIT_LOG) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def events(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        with self.path.open("rb") as file:
            file.seek(start)
            data = file.read() if end is None else file.read(end - start)
        # A line being written at the end may be incomplete: only whole lines count.
        lines = data.split(b"\n")[:-1]
        return [
            event
            for event in map(json.loads, lines)
            # A watch logs when it starts and when it ends: count it once, when it starts.
            if event["stage"]
            == ("ResponseStarted" if event["verb"] == "watch" else "ResponseComplete")
        ]

    def requests(self, start: int, end: int | None = None) -> Counter[tuple[str, str]]:
        """Requests by (agent, verb)."""
        return Counter(
            (agent_of(event.get("userAgent", "")), event["verb"])
            for event in self.events(start, end)
        )


def by_verb(counts: Counter[tuple[str, str]], agent: str) -> dict[str, int]:
    return dict(sorted((verb, n) for (who, verb), n in counts.items() if who == agent))


def writes(counts: Mapping[str, int]) -> int:
    return sum(n for verb, n in counts.items() if verb in WRITE_VERBS)


# ---- the operator --------------------------------------------------------------------------


class Operator:
    """`tenantry run` against the bench cluster, as a user runs it (default flags but these)."""

    # Every process started and not yet stopped: stopped at exit, so a failed run leaves none.
    running: ClassVar[set[Operator]] = set()

    def __init__(
        self, log_file: Path, drift_interval: float, kubeconfig: Path = KUBECONFIG
    ) -> None:
        self.log_file = log_file
        self.drift_interval = drift_interval
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        with self.log_file.open("a") as output:
            self.process = subprocess.Popen(
                [
                    str(TENANTRY),
                    "run",
                    f"--drift-interval={self.drift_interval}",
                    f"--metrics-address=127.0.0.1:{self.port}",
                    # Section 3 adds an AgentTenantTemplate of a claim per tenant.
                    f"--template-kinds={TEMPLATE_KIND}",
                ],
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()
        Operator.running.add(self)
        if PROFILE:
            # py-spy samples the operator from outside, so it runs unchanged (see docs/benchmarks.md).
            profile = self.log_file.with_suffix(".profile.txt")
            self.profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "--output",
                    str(profile),
                    "--pid",
                    str(self.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        Operator.running.discard(self)
        if self.process is None or self.process.poll() is not None:
            return
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self.profiler.wait(timeout=60)
        processes.stop(self.process, timeout=30)

    @staticmethod
    def stop_all() -> None:
        for operator in list(Operator.running):
            operator.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mib(self) -> float:
        """Resident memory now, in MiB (VmRSS of /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """CPU time used so far, user and system."""
        return cpu_seconds(self.pid)

    def gauges(self) -> dict[str, float] | None:
        """tenantry_* samples from /metrics, or None while it does not answer yet."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except OSError:
            return None
        samples = {}
        for line in text.splitlines():
            if line.startswith("tenantry_") and " " in line:
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    async def _until_samples(
        self, met: Callable[[dict[str, float]], bool], timeout: float, interval: float
    ) -> bool:
        """Poll /metrics every `interval` seconds until `met` holds for its samples (True), or
        until `timeout` has passed (False); the operator must stay up meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "operator exited"
            samples = await asyncio.to_thread(self.gauges)
            if samples and met(samples):
                return True
            await asyncio.sleep(interval)
        return False

    async def until_idle(self, ready: int, timeout: float) -> float:
        """Wait until the operator has reconciled `ready` tenants to Ready and its queue is empty.
        Returns seconds since the process started."""

        def idle(samples: dict[str, float]) -> bool:
            return (
                samples.get('tenantry_tenants{condition="Ready"}') == ready
                and samples.get("tenantry_queue_depth") == 0
            )

        if await self._until_samples(idle, timeout, 0.2):
            return time.monotonic() - self.started
        raise TimeoutError(f"operator not idle with {ready} Ready tenants after {timeout:.0f}s")

    async def idle_memory(self) -> dict[str, float]:
        """Its resident size the moment it went idle and once it has trimmed its heap (the
        figure sections 4 and 5 report), and how long the trim took; call it as soon as
        `until_idle` returns."""
        at_idle = self.rss_mib()
        trimmed_after = await self.until_trimmed()
        return {
            "rss_mib_at_idle": at_idle,
            "trimmed_after_seconds": trimmed_after,
            "rss_mib": self.rss_mib(),
        }

    async def until_trimmed(self, timeout: float = 60) -> float:
        """Wait until the operator, idle, has handed the memory it freed back to the system, and
        return the seconds that took; call it as soon as `until_idle` returns.

        The operator trims its heap once its queue has stayed empty and no watch event has come
        for a few seconds (tenantry.memory.TrimWhenQuiet, counted by
        `tenantry_memory_trims_total`). Its resident size is read after that: what it holds
        while nothing happens, not in the seconds after a burst when the heap of the burst is
        still mapped. `until_idle`'s time is unchanged."""
        started = time.monotonic()
        samples = await asyncio.to_thread(self.gauges)
        assert samples is not None, "the operator's metrics do not answer"
        before = samples.get("tenantry_memory_trims_total", 0.0)

        def trimmed(samples: dict[str, float]) -> bool:
            return (
                samples.get("tenantry_memory_trims_total", 0.0) > before
                and samples.get("tenantry_queue_depth") == 0
            )

        if await self._until_samples(trimmed, timeout, 0.2):
            return time.monotonic() - started
        # Only glibc has malloc_trim: the operator trims nothing on another C library.
        raise TimeoutError(f"the operator did not trim its memory within {timeout:.0f}s of idling")

    async def until_synced(self, timeout: float = 60) -> None:
        """Wait until the operator has filled its caches from fresh lists and reconciles
        (`tenantry_caches_synced`): before, tenant events wait in its queue. On a fresh
        cluster the first lists can be refused for a second ("storage is (re)initializing"),
        and a trial started then timed that second too."""
        synced = await self._until_samples(
            lambda samples: samples.get("tenantry_caches_synced") == 1, timeout, 0.1
        )
        if not synced:
            raise TimeoutError(f"the operator did not fill its caches within {timeout:.0f}s")

    async def until_watching(self, audit: AuditLog, since: int, timeout: float = 60) -> None:
        """Wait until the operator watches AgentTenants: tenants applied earlier would be found
        by its first list, and the trial would time Kopf's start-up, not provisioning."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in audit.events(since):
                if (
                    event["verb"] == "watch"
                    and "/agenttenants" in event["requestURI"]
                    and agent_of(event.get("userAgent", "")) == "operator"
                ):
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError("the operator did not start watching AgentTenants")


atexit.register(Operator.stop_all)
