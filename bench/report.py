"""docs/benchmarks.md and its plots, rendered from the raw results in docs/bench/*.json."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from tenantry.render.workloads import http_probe, startup_probe

from bench import runtime as runtime_section
from bench.stats import percentile

PAGE_HEADER = """# Benchmarks

Measured by `make bench` on the machine below; every figure is repeated (the *rounds*) and
shown as **median** (min–max). The machine is noisy, so every comparison is a ratio of two
measurements taken in the same round, on the same machine, minutes apart. Nothing here is
asserted by a test. Raw results: [`docs/bench/`](bench/); how the harness works and why:
[`bench/`](../bench/).

The control-plane figures run on a real kube-apiserver, etcd, kube-controller-manager and
kube-scheduler ({kubernetes}) with kwok's fake kubelets, all on this one machine. Every trial
starts on a fresh cluster. That cluster is the tests' cluster with two changes: the client-side
rate limits of kube-controller-manager and kube-scheduler are lifted (`kwokctl
--disable-qps-limits`, as clusters of this size are tuned), and the API server writes an audit
log, which is how each request is attributed to the operator, the bench or a cluster component.
The operator runs as `tenantry run` with its defaults (8 concurrent reconciles, drift interval
300 s) unless a table says otherwise.

| machine | |
|---|---|
| CPU | {cpus} × {cpu} |
| memory | {memory_gib} GiB |
| kernel, Python | {kernel}, {python} |
| Kubernetes, Kopf, lightkube, autogen-core | {kubernetes}, {kopf}, {lightkube}, {autogen_core} |
| measured | {date} |
"""


def spread(values: Iterable[float], fmt: str = "{:.2f}") -> str:
    items = sorted(values)
    if not items:
        return "–"
    middle = fmt.format(statistics.median(items))
    if len(items) == 1:
        return middle
    return f"**{middle}** ({fmt.format(items[0])}–{fmt.format(items[-1])})"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def target(label: str, values: Sequence[float], limit: float, fmt: str = "{:.2f}") -> list[str]:
    """A row of the targets table: met when the median is at most `limit`."""
    if not values:
        return [label, "–", "not measured"]
    return [label, spread(values, fmt), verdict(median(values) <= limit)]


# Issue 14's targets (reported against, never asserted).
RATIO_TARGETS = {100: 1.3, 1000: 1.15}  # provisioning, operator / direct, at N
RSS_TARGET_MIB = 120.0  # idle after provisioning 1000 tenants
RESTART_RSS_TARGET = 1.1  # idle after a restart, over the figure above
RESTART_IDLE_TARGET_SECONDS = 12.0
RESTART_GETS_PER_TENANT = 1.0
LATENCY_RATIO_TARGET = 1.3  # apply → ready, operator / direct, p50 and p99


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command(text: str) -> str:
    return f"Reproduce: `{text}`\n"


def verbs(counts: dict[str, float], per: float = 1.0) -> str:
    return ", ".join(f"{verb} {n / per:.3g}" for verb, n in sorted(counts.items())) or "none"


def median_verbs(runs: Sequence[dict[str, float]], per: float = 1.0) -> str:
    keys = sorted({verb for run in runs for verb in run})
    return verbs({verb: median(run.get(verb, 0) for run in runs) for verb in keys}, per)


# ---- sections ------------------------------------------------------------------------------


def provisioning_section(data: dict[str, Any], plots: Path, targets: list[list[str]]) -> str:
    trials = data["trials"]
    sizes = sorted({t["count"] for t in trials})
    by = {(t["round"], t["count"], t["mode"]): t for t in trials}
    rounds = sorted({t["round"] for t in trials})

    def of(count: int, mode: str) -> list[dict[str, Any]]:
        return [t for t in trials if t["count"] == count and t["mode"] == mode]

    rows = []
    ratios_at: dict[int, list[float]] = {}
    for count in sizes:
        ratios = [
            by[r, count, "operator"]["seconds"] / by[r, count, "direct"]["seconds"]
            for r in rounds
            if (r, count, "operator") in by and (r, count, "direct") in by
        ]
        ratios_at[count] = ratios
        operator = of(count, "operator")
        per_tenant = [sum(t["requests"]["operator"].values()) / count for t in operator]
        rows.append(
            [
                count,
                spread(t["seconds"] for t in of(count, "direct")),
                spread(t["seconds"] for t in operator),
                spread(ratios),
                spread((count / t["seconds"] for t in operator), "{:.1f}"),
                spread(per_tenant, "{:.1f}"),
                spread((t["operator_cpu_seconds"] for t in operator), "{:.1f}"),
            ]
        )
    largest = max(sizes)
    for count, limit in RATIO_TARGETS.items():
        if count in ratios_at:
            targets.append(
                target(
                    f"provisioning, operator / direct, N = {count} (≤ {limit}×)",
                    ratios_at[count],
                    limit,
                )
            )
    plot_provisioning(trials, sizes, plots / "provisioning.png")
    requests = median_verbs([t["requests"]["operator"] for t in of(largest, "operator")], largest)
    return f"""## 1. Provisioning throughput

N tenants applied at once (32 requests in flight), timed from the first apply until every
tenant is ready. **Operator**: the bench applies the AgentTenants; `tenantry run` does the rest,
started before the clock, which starts once it reconciles (`tenantry_caches_synced`); ready
means `Ready=True` for the current generation in the tenant's status (what `kubectl wait` and
Argo CD check). **Direct** (the baseline): no operator; the bench itself writes each tenant and
the same 16 children the operator renders (`tenantry.render`, server-side apply, in the
operator's phases: the namespace, then accounts, policies and Secrets at once, then the
workloads at once), and a tenant is ready when both its Deployments are available —
the test the operator makes before it reports Ready. Both wait for the same controllers,
scheduler and fake kubelets; the operator also writes status two or three times and posts an
event.

{command("make bench SECTIONS=provisioning")}
{table(["N", "direct, s", "operator, s", "operator / direct", "operator tenants/s", "operator requests per tenant", "operator CPU, s"], rows)}

Operator requests per tenant at N = {largest} (median, by verb): {requests}.

![provisioning time against N](bench/provisioning.png)
"""


def memory_section(data: dict[str, Any], plots: Path, targets: list[list[str]]) -> str:
    operator = [t for t in data["trials"] if t["mode"] == "operator"]
    sizes = sorted({t["count"] for t in operator})
    rss = {n: [t["rss_mib"] for t in operator if t["count"] == n] for n in sizes}
    empty = [t["rss_mib_empty"] for t in operator]
    # Least squares over every trial: MiB per tenant, so KiB per tenant is ×1024.
    xs = [t["count"] for t in operator]
    ys = [t["rss_mib"] for t in operator]
    slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
    rows = [[n, spread(rss[n], "{:.1f}")] for n in sizes]
    after_restart = [r["rss_mib"] for r in data["recovery"]]
    largest = max(sizes)
    targets.append(
        target(
            f"operator RSS idle after provisioning {largest} tenants, MiB (≤ {RSS_TARGET_MIB:.0f})",
            rss[largest],
            RSS_TARGET_MIB,
            "{:.1f}",
        )
    )
    # Each round's restart over the figure of the same round's provisioning (recovery runs in
    # round order, one per round).
    at_largest = [
        t["rss_mib"] for t in sorted(operator, key=lambda t: t["round"]) if t["count"] == largest
    ]
    targets.append(
        target(
            f"operator RSS idle after a restart over {largest}, over the figure above (≤ {RESTART_RSS_TARGET}×)",
            [after / before for after, before in zip(after_restart, at_largest, strict=False)],
            RESTART_RSS_TARGET,
        )
    )
    fig, axes = plt.subplots(figsize=(6, 3.5))
    axes.scatter(xs, ys, label="each trial")
    axes.plot(sizes, [median(rss[n]) for n in sizes], marker="o", label="median")
    axes.set_xlabel("tenants")
    axes.set_ylabel("operator RSS, MiB")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    fig.tight_layout()
    fig.savefig(plots / "memory.png", dpi=110)
    plt.close(fig)
    # Runs before the bench waited for the trim (2026-11-30 afternoon) read the RSS at idle.
    when = (
        "read after the operator has handed the heap it freed back to the system (once its queue "
        "has been empty and no watch event has come for 5 s: `tenantry_memory_trims_total`), not "
        "in the seconds after the burst"
        if all("trimmed_after_seconds" in t for t in operator)
        else "read the moment its queue was empty, before it handed back the heap it freed (a run "
        "of the bench older than its wait for `tenantry_memory_trims_total`)"
    )
    return f"""## 4. Memory

Resident memory (VmRSS) of the operator process once it is idle after provisioning N tenants
(the trials of section 1), {when}. At start, watching, with no tenant: {spread(empty, "{:.1f}")} MiB.
Growth per tenant (least squares over every trial): **{slope * 1024:.0f} KiB**. After a restart
over {largest} tenants (section 5) it holds {spread(after_restart, "{:.1f}")} MiB.

{command("make bench SECTIONS=provisioning")}
{table(["tenants", "RSS, MiB"], rows)}

![operator RSS against tenants](bench/memory.png)
"""


def measured_apart(data: dict[str, Any]) -> str:
    """When section 3 was re-run alone (`make bench SECTIONS=rest`), say when and how."""
    machine = data.get("rest_machine")
    if not machine:
        return ""
    return (
        f" This section was last measured alone (`make bench SECTIONS=rest`) on {machine['date']},"
        f" {machine.get('note', '')}".rstrip(", ")
        + "."
    )


def rest_section(data: dict[str, Any], targets: list[list[str]]) -> str:
    runs = data["rest"]
    if not runs:
        return ""
    first = runs[0]
    writes = [r["operator_writes"] for r in runs]
    gets = [
        r["operator_requests"].get("get", 0) / r["count"] * 3600 / r["window_seconds"] for r in runs
    ]
    targets.append(
        target(
            "operator GETs per tenant per hour at rest, beyond one list per kind per drift period (0)",
            gets,
            0,
            "{:.2g}",
        )
    )
    targets.append(target("operator writes at rest, per window (0)", writes, 0, "{:.0f}"))
    agents = sorted({a for r in runs for a in r["writes_by_agent"]})
    rows = [
        [
            r.get("round", i),
            verbs(r["operator_requests"]),
            r["operator_writes"],
            r["etcd_revision_delta"],
            ", ".join(f"{a} {r['writes_by_agent'].get(a, 0)}" for a in agents),
            verbs(r["apiserver_request_total_delta"]),
        ]
        for i, r in enumerate(runs)
    ]
    return f"""## 3. Cost at rest

{first["count"]} Ready tenants, each with a claim an AgentTenantTemplate renders for it
({first.get("templated_claims", 0)} templated claims: `examples/templates/agent-memory.yaml`
selecting every tenant), nothing changing, watched over {first["window_seconds"]:.0f} s: more
than two drift periods of an operator started with `--drift-interval {first["drift_interval_seconds"]:.0f}`
(so that two periods fit in a minute; each period the operator lists every child kind once and
reconciles every tenant from its caches). Operator requests come from the audit log; the API
server's own count (`apiserver_request_total`, all clients) and etcd's revision are read before
and after the window. The revision moves only for the writes of the cluster's own components
(node heartbeats from kwok, the controllers' leases and events), listed per component. The
templated claims stay Pending (the bench's cluster has no volume provisioner), which
kube-controller-manager's volume binder reports again and again as a `FailedBinding` event of each claim (a PATCH that counts it):
its writes in the table.{measured_apart(data)}

{command("make bench SECTIONS=provisioning")}
{table(["round", "operator requests", "operator writes", "etcd revision Δ", "writes by component", "apiserver_request_total Δ (all clients)"], rows)}

Operator reads per tenant per hour: {spread((r["operator_reads_per_tenant_per_hour"] for r in runs), "{:.0f}")}
at a {first["drift_interval_seconds"]:.0f} s drift interval, which scales to
{spread((r["operator_reads_per_tenant_per_hour_at_default_interval"] for r in runs), "{:.1f}")} at the
default 300 s.
"""


def recovery_section(data: dict[str, Any], targets: list[list[str]]) -> str:
    runs = data["recovery"]
    if not runs:
        return ""
    count = runs[0]["count"]
    seconds = [r["seconds_to_idle"] for r in runs]
    targets.append(
        target(
            f"GETs per tenant for a restart over {count} tenants (≤ {RESTART_GETS_PER_TENANT:g})",
            [r["requests"].get("get", 0) / count for r in runs],
            RESTART_GETS_PER_TENANT,
            "{:.3f}",
        )
    )
    targets.append(
        target(
            f"restart over {count} tenants → idle, s (≤ {RESTART_IDLE_TARGET_SECONDS:g})",
            seconds,
            RESTART_IDLE_TARGET_SECONDS,
            "{:.1f}",
        )
    )
    targets.append(target("writes in that restart (0)", [r["writes"] for r in runs], 0, "{:.0f}"))
    rest_restarts = [r["restart"] for r in data["rest"]]
    extra = ""
    if rest_restarts:
        extra = (
            f"\nThe same restart over {rest_restarts[0]['count']} tenants (section 3's, with a 30 s "
            f"drift interval): {spread((r['seconds_to_idle'] for r in rest_restarts), '{:.1f}')} s, "
            f"{median_verbs([r['requests'] for r in rest_restarts])} requests.\n"
        )
    return f"""## 5. Recovery

The operator is stopped (SIGTERM) with {count} Ready tenants in place and a new process is
started: the time from its start until it is idle again — every tenant reconciled and Ready,
its queue empty (`tenantry_tenants{{condition="Ready"}}` = {count}, `tenantry_queue_depth` = 0) —
and the requests it made to get there (audit log).

{command("make bench SECTIONS=provisioning")}
{table(["tenants", "seconds to idle", "requests (median, by verb)", "writes"], [[count, spread(seconds, "{:.1f}"), median_verbs([r["requests"] for r in runs]), spread((r["writes"] for r in runs), "{:.0f}")]])}
{extra}"""


def round_pairs(runs: list[dict[str, Any]], load: float) -> list[tuple[dict[str, Any], ...]]:
    """(operator run, direct run) of each round at LOAD that has both, by round."""
    by = {(r["round"], r["load"], r["mode"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs if r["load"] == load})
    return [
        (by[n, load, "operator"], by[n, load, "direct"])
        for n in rounds
        if (n, load, "operator") in by and (n, load, "direct") in by
    ]


def latency_section(data: dict[str, Any], plots: Path, targets: list[list[str]]) -> str:
    runs = data["runs"]
    ceilings = [c["rate"] for c in data["ceilings"]]
    rows = []
    fig, axes = plt.subplots(figsize=(6, 3.5))
    for load in data["loads"]:
        at_load = {m: [r for r in runs if r["load"] == load and r["mode"] == m] for m in MODES}
        p = {
            (m, q): [percentile(r["latencies"], q) for r in at_load[m]]
            for m in MODES
            for q in (0.5, 0.99)
        }
        # Each round's operator percentile over the direct one of the same round and rate.
        ratio = {
            q: [
                percentile(o["latencies"], q) / percentile(d["latencies"], q)
                for o, d in round_pairs(runs, load)
            ]
            for q in (0.5, 0.99)
        }
        rows.append(
            [
                f"{load:.0%}",
                spread((r["rate"] for r in at_load["operator"]), "{:.1f}"),
                *(spread(p[m, q]) for q in (0.5, 0.99) for m in MODES),
                spread(ratio[0.5]),
                spread(ratio[0.99]),
            ]
        )
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            targets.append(
                target(
                    f"apply → ready {name}, operator / direct, at {load:.0%} of the direct ceiling (≤ {LATENCY_RATIO_TARGET}×)",
                    ratio[q],
                    LATENCY_RATIO_TARGET,
                )
            )
        for mode, style in zip(MODES, ("--", "-"), strict=True):
            pooled = sorted(x for r in at_load[mode] for x in r["latencies"])
            axes.plot(
                pooled,
                [(i + 1) / len(pooled) for i in range(len(pooled))],
                style,
                label=f"{mode}, {load:.0%}",
            )
    axes.set_xlabel("apply → ready, s")
    axes.set_ylabel("fraction of tenants")
    axes.grid(alpha=0.3)
    axes.legend(title="mode, load")
    fig.tight_layout()
    fig.savefig(plots / "latency.png", dpi=110)
    plt.close(fig)
    header = [
        "load",
        "tenants/s",
        "p50 direct, s",
        "p50 operator, s",
        "p99 direct, s",
        "p99 operator, s",
        "p50 operator / direct",
        "p99 operator / direct",
    ]
    costs = []
    for load in data["loads"]:
        measured = [r for r in runs if r["load"] == load and "operator_cpu_seconds" in r]
        if measured:
            costs.append(
                f"At {load:.0%}, operator requests per tenant (median, by verb): "
                + median_verbs(
                    [
                        {verb: n / r["count"] for verb, n in r["requests"]["operator"].items()}
                        for r in measured
                    ]
                )
                + "; operator CPU per tenant: "
                + spread(
                    (1000 * r["operator_cpu_seconds"] / r["count"] for r in measured), "{:.0f}"
                )
                + " ms."
            )
    cost = "\n\n" + " ".join(costs) if costs else ""
    cost += machine_cpu_table(data)
    return f"""## 2. Latency

Each round first measures this machine's **direct ceiling**: {data["ceilings"][0]["count"]} tenants written at once
with no operator, as section 1's baseline does: {spread(ceilings, "{:.1f}")} tenants/s. Then
tenants arrive one at a time at a steady rate, a fraction of that round's ceiling (the *load*),
for {data["duration_seconds"]:.0f} s, each on its own schedule (a late answer does not delay the
next arrival), once through the operator and once written directly (the baseline: the bench
writes the tenant and its children, as in section 1), each on a fresh cluster, the two modes
alternating which goes first; the first arrival comes once the operator reconciles. For each
tenant: from the moment its apply is sent until it is ready (operator: `Ready=True` in its status; direct: both its Deployments available, the test
the operator makes before it reports Ready). Percentiles are per run (nearest rank); each
ratio is the operator's over the direct run of the same round and rate; all are summarized
over the rounds.

{command("make bench SECTIONS=latency")}
{table(header, rows)}{cost}

![distribution of apply → ready](bench/latency.png)
"""


# The processes of a latency run whose CPU is counted, as harness.control_plane_cpu and
# control_plane.machine_cpu name them.
MACHINE_PROCESSES = (
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
    "bench",
    "operator",
)


def machine_cpu_table(data: dict[str, Any]) -> str:
    """Where the machine's CPU went in each latency run, per tenant, by process; and how busy
    its cores were. Empty for results measured before runs counted it."""
    runs = [r for r in data["runs"] if "cpu_seconds" in r]
    if not runs:
        return ""

    def total(run: dict[str, Any]) -> float:
        return float(sum(run["cpu_seconds"].values()))

    rows, extra = [], []
    for load in data["loads"]:
        for mode in MODES:
            at = [r for r in runs if r["load"] == load and r["mode"] == mode]
            if not at:
                continue
            per_tenant = [
                spread((1000 * r["cpu_seconds"][p] / r["count"] for r in at), "{:.0f}")
                if all(p in r["cpu_seconds"] for r in at)
                else "–"
                for p in MACHINE_PROCESSES
            ]
            busy = spread(
                (100 * total(r) / (r["machine_seconds"] * r["cores"]) for r in at), "{:.0f}"
            )
            rows.append(
                [
                    f"{load:.0%}",
                    mode,
                    *per_tenant,
                    spread((1000 * total(r) / r["count"] for r in at), "{:.0f}"),
                    busy,
                ]
            )
        pairs = round_pairs(runs, load)
        if pairs:
            extra.append(
                f"at {load:.0%}, "
                + spread(
                    (1000 * (total(o) / o["count"] - total(d) / d["count"]) for o, d in pairs),
                    "{:.0f}",
                )
                + " ms a tenant ("
                + spread(
                    (100 * (total(o) / o["count"] / (total(d) / d["count"]) - 1) for o, d in pairs),
                    "{:.0f}",
                )
                + " %)"
            )
    header = ["load", "mode", *MACHINE_PROCESSES, "all", "cores busy, %"]
    return f"""

CPU per tenant, ms, by process, from the first arrival until the last tenant was ready (each
process's user and system time from /proc; *bench* is the benchmark's own process: in the
direct runs it renders and writes the children, in both it watches for readiness). *Cores
busy* is all of it over the run's time and the machine's cores. What the operator's runs
took beyond the direct runs of the same round and rate, all processes: {"; ".join(extra)}.

{table(header, rows)}"""


# The rows of the real node's table: from a tenant's apply until ...
REALNODE_ROWS: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
    ("its two pods bound to the node", lambda t: max(p["scheduled"] for p in t["pods"].values())),
    ("sandbox container running", lambda t: t["pods"]["sandbox"]["running"]),
    ("runtime container running", lambda t: t["pods"]["runtime"]["running"]),
    ("sandbox pod Ready", lambda t: t["pods"]["sandbox"]["ready"]),
    ("runtime pod Ready", lambda t: t["pods"]["runtime"]["ready"]),
    ("tenant `Ready=True`", lambda t: t["ready_seconds"]),
    ("**first task answered**", lambda t: t["answered_seconds"]),
]


def waits(tenant: dict[str, Any]) -> list[str]:
    """A tenant's pods from container running to Ready (sandbox, runtime), then its answer."""
    pods = tenant["pods"]
    return [f"{pods[c]['ready'] - pods[c]['running']:.1f}" for c in ("sandbox", "runtime")] + [
        f"{tenant['answered_seconds']:.1f}"
    ]


def realnode_section(data: dict[str, Any]) -> str:
    rounds = data["rounds"]
    first, second = [r["first"] for r in rounds], [r["second"] for r in rounds]
    every = first + second
    rows = [
        [label, spread(map(value, first), "{:.1f}"), spread(map(value, second), "{:.1f}")]
        for label, value in REALNODE_ROWS
    ]
    per_round = [[r["round"], *waits(r["first"]), *waits(r["second"])] for r in rounds]
    runtime = [t["pods"]["runtime"] for t in every]
    share = [
        (p["ready"] - p["running"]) / t["answered_seconds"]
        for p, t in zip(runtime, every, strict=True)
    ]
    after_ready = [t["answered_seconds"] - p["ready"] for p, t in zip(runtime, every, strict=True)]
    failed: dict[str, int] = {}
    for t in every:
        for error, (count, _) in t["failures"].items():
            failed[error] = failed.get(error, 0) + count
    failures = "; ".join(f"`{error}` {count}" for error, count in sorted(failed.items()))
    busy_tasks = [t["first_busy"] for t in second]
    busy_seconds = [end - began for tasks in busy_tasks for began, end in tasks]
    slower = [
        s["answered_seconds"] / f["answered_seconds"] for f, s in zip(first, second, strict=True)
    ]
    period = http_probe("/readyz")["periodSeconds"]
    startup = startup_probe("/healthz", 1)["periodSeconds"]
    sandbox_waits = [t["pods"]["sandbox"]["ready"] - t["pods"]["sandbox"]["running"] for t in every]
    # Whether the gateway's first lookup can come before the operator made the Service is a
    # race (the kubectl exec starting it against the apply); when it did, this is what it cost.
    looked_up_early = sum(
        any("Name or service not known" in e for e in t["failures"]) for t in every
    )
    unresolved = (
        f"; and, for {looked_up_early} of the {len(every)} tenants, whose name the gateway had"
        " asked for before the Service existed, that name: CoreDNS keeps its answer that there"
        " is none (`Name or service not known`) for 5 s, its kubernetes plugin's TTL"
        if looked_up_early
        else ""
    )
    runtime_waits = [p["ready"] - p["running"] for p in runtime]
    return f"""## 6. The real node: apply → first answer

Tenants on the real node ([docs/real-node.md](real-node.md): a kubelet and containerd running
the project's images, kube-proxy, CoreDNS and kube-router enforcing NetworkPolicy, on this
machine), the kwok nodes cordoned, the operator as `tenantry run` with its defaults. Each round
applies a first tenant to an idle node and waits for its first answer, then applies a second
while the first is busy: a gateway pod sends the first tasks one after another whose programs
keep its sandbox computing ({data["busy_task_seconds"]} s each; its limit is one core of this
machine's two), from before the second's apply until after its answer. Both are deleted, and
their namespaces gone, before the next round; every round has new names. A tenant is the other
sections' (examples/acme.yaml: an assistant, a coder, a sandbox) with its model on the scripted
stand-in outside the cluster (e2e/model_server.py, at 203.0.113.10:443, answering at once).

Each figure runs from the moment the tenant's apply is sent: until a watch first saw its pods
bound to the node, their containers running and the pods Ready, until it saw the tenant
`Ready=True`, and until its first task was **answered**. Started as the apply is sent, the
gateway pod POSTs the demo's task ("What is 7 times the sum of 1 to 100?") to
`http://runtime.tenant-<name>.svc.cluster.local:8080/v1/tasks`, again 0.2 s after each failure
(a name that does not resolve yet, no route to the Service yet, a connection refused or not
accepted within 0.5 s), until one returns 200 with the sandbox's output in it (`sum: 35350`):
the runtime called the model, the sandbox pod ran the program the model wrote, and the model's
second reply quoted what it printed. Measured {data["machine"]["date"]}, {len(rounds)} rounds,
the 1-minute load average {spread((t["load_average"] for t in every), "{:.1f}")} at the applies.

{command("make bench SECTIONS=realnode")}
{table(["from the apply until", "first tenant, s", "second tenant, the first busy, s"], rows)}

Per round, each pod from its container running to Ready, and the first answer:

{table(["round", "first: sandbox, s", "runtime, s", "answered, s", "second: sandbox, s", "runtime, s", "answered, s"], per_round)}

- **The probes decide when a pod is Ready.** Each container has a startup probe, asked every
  {startup} s from its start until it first answers, and readiness is not probed before it
  (`render.workloads.startup_probe`); its success makes the kubelet sync the pod, and that sync
  runs the readiness probe as soon as it has the containers' state, which it refreshes every
  second. So a pod is Ready within about two seconds of its process listening, and then its
  probes come every {period} s. From container running to Ready: the sandbox
  {spread(sandbox_waits, "{:.1f}")} s; the runtime, which imports autogen and the model client
  before it listens, {spread(runtime_waits, "{:.1f}")} s, {spread(share, "{:.0%}")} of the time
  to the first answer (the kubelet's log shows the probes' times; the first round starts once
  the kubelet has run for a readiness period, as it delays the first probes of pods it meets
  sooner).
- **From the runtime pod Ready to the answer**: {spread(after_ready, "{:.1f}")} s, of which the
  answering request took {spread((t["request_seconds"] for t in every), "{:.2f}")} s (two model calls
  and the program's run in the sandbox pod); the rest is the Service's new endpoint reaching
  kube-proxy and the gateway's next attempt{unresolved}. Until then the gateway's connections to the
  Service are not refused but time out, and a client left to TCP's own retries waits for them:
  1, 2, then 4 s more. Failed attempts over every tenant: {failures}.
- **The busy first tenant** ran {spread((len(b) for b in busy_tasks), "{:.0f}")} tasks while
  the second came up, each taking {spread(busy_seconds, "{:.1f}")} s. The second's time to its
  first answer over the first's: {spread(slower)}.
- **No image is pulled.** The node's containerd imports the images from their archives when it
  starts, before the first round (no registry is reachable here), and the gateway pod runs from
  the runtime image too: the figures hold the containers' start (the pod's sandbox and network,
  runc), never a pull. Starting the cluster and the node took
  {data["cluster_up_seconds"]:.0f} s of the section's {data["seconds"] / 60:.1f} min.
"""


def plot_provisioning(trials: list[dict[str, Any]], sizes: list[int], path: Path) -> None:
    fig, axes = plt.subplots(figsize=(6, 3.5))
    for mode in ("direct", "operator"):
        medians, lows, highs = [], [], []
        for count in sizes:
            values = [t["seconds"] for t in trials if t["count"] == count and t["mode"] == mode]
            medians.append(median(values))
            lows.append(medians[-1] - min(values))
            highs.append(max(values) - medians[-1])
        axes.errorbar(sizes, medians, yerr=[lows, highs], marker="o", capsize=3, label=mode)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("tenants applied at once")
    axes.set_ylabel("seconds until all ready")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def runtime_target(data: dict[str, Any], targets: list[list[str]]) -> str:
    """The runtime's target rows; the section itself is bench/runtime.py's."""
    limit = runtime_section.TARGET_OVERHEAD
    targets.append(
        target(
            f"runtime guard overhead, 1 − guarded / bare msgs/s (≤ {limit:.0%})",
            [1 - r for r in data["messages"]["guarded_over_bare"]["wall"]],
            limit,
            "{:.1%}",
        )
    )
    counted = runtime_section.counted_overhead(data)
    targets.append(
        target(
            f"the same, counted: 1 − bare / guarded instructions per message (≤ {limit:.0%})",
            [] if counted is None else [counted],
            limit,
            "{:.1%}",
        )
    )
    rss = data.get("idle", {}).get("rss_mib", {})
    for label, name, limit_mib in runtime_section.IDLE_TARGETS:
        if name in rss:
            targets.append(
                target(f"idle RSS, {label}, MiB (≤ {limit_mib})", rss[name], limit_mib, "{:.1f}")
            )
    return ""


MODES = ("direct", "operator")


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def render(results: Path) -> str:
    """The whole page, from whatever sections have results."""
    targets: list[list[str]] = []
    parts: list[str] = []
    durations: list[str] = []
    environment: dict[str, Any] = {}
    sections: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
        (
            "provisioning",
            lambda d: [
                provisioning_section(d, results, targets),
                rest_section(d, targets),
                memory_section(d, results, targets),
                recovery_section(d, targets),
            ],
        ),
        ("latency", lambda d: [latency_section(d, results, targets)]),
        ("runtime", lambda d: [runtime_target(d, targets), runtime_section.report(d, results)]),
        ("realnode", lambda d: [realnode_section(d)]),
    ]
    for name, build in sections:
        data = load(results, name)
        if data is None:
            parts.append(f"## {name}\n\nNot measured yet: `make bench SECTIONS={name}`.\n")
            continue
        environment = environment or data["machine"]
        durations.append(f"{name} {data['seconds'] / 60:.0f} min")
        parts += build(data)
    header = PAGE_HEADER.format(**environment) if environment else "# Benchmarks\n"
    summary = table(["target (issue 14)", "measured: median (min–max)", ""], targets)
    notes = (Path(__file__).parent / "findings.md").read_text()
    return "\n".join(
        [
            header,
            f"`make bench` took {', '.join(durations)}.\n",
            "## Targets\n",
            summary + "\n",
            *(p for p in parts if p),
            notes,
        ]
    )
