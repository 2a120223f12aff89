"""`make bench`: run the benchmarks, write docs/bench/*.json, then docs/benchmarks.md and plots.

    python -m bench                                  # everything (about 40 minutes on 2 cores)
    python -m bench --sections latency --rounds 1    # one section, once
    python -m bench --report-only                    # re-render the page from the JSON
    python -m bench --sections rest                  # section 3 alone (cost at rest, 500 tenants)
    python -m bench --sections realnode              # the real node: apply → first answer

Each section's raw results go to docs/bench/<section>.json; the page is rendered from whatever
JSON is there, so one section can be re-run alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import control_plane, realnode, report
from bench import runtime as runtime_section
from bench.harness import REPO, cluster, log
from e2e.images import toolchain_versions

RESULTS = REPO / "docs" / "bench"
WORKDIR = REPO / ".cache" / "bench"
SECTIONS = ("provisioning", "latency", "runtime", "realnode")
# Run only when named: a part of a section above, refreshed in that section's JSON.
PARTS = {"rest": "provisioning"}
# The runtime's rounds are seconds each; its guard overhead moves by points from round to round
# on a shared machine, so its median needs more of them than the control plane's figures.
RUNTIME_ROUNDS = 9


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = toolchain_versions()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kubernetes": versions.get("K8S_VERSION", "?"),
        "kopf": metadata.version("kopf"),
        "lightkube": metadata.version("lightkube"),
        "autogen_core": metadata.version("autogen-core"),
    }


async def provisioning(rounds: int, sizes: list[int], rest_interval: float) -> dict[str, Any]:
    """Sections 1, 3, 4 and 5: they share clusters. Modes alternate which goes first, so a
    trend in the machine's load does not favour one side."""
    trials: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    recovery: list[dict[str, Any]] = []
    rest_count = 500 if 500 in sizes else max(sizes)
    for round_ in range(rounds):
        for count in sizes:
            modes = ("direct", "operator") if round_ % 2 == 0 else ("operator", "direct")
            for mode in modes:
                result: dict[str, Any] = {"round": round_, "count": count, "mode": mode}
                async with control_plane.provisioned(count, mode, WORKDIR, result) as trial:
                    if mode == "operator" and count == rest_count:
                        rest.append(await control_plane.at_rest(trial, rest_interval, WORKDIR))
                    if mode == "operator" and count == max(sizes):
                        recovery.append(
                            await control_plane.restart(
                                trial, control_plane.DEFAULT_DRIFT_SECONDS, WORKDIR
                            )
                        )
                trials.append(result)
    return {"trials": trials, "rest": rest, "recovery": recovery}


async def rest_only(rounds: int, rest_interval: float) -> dict[str, Any]:
    """Section 3 alone: the cost at rest of 500 tenants the operator provisioned, each round on
    a fresh cluster; the rest of provisioning.json is kept as it was."""
    rest = []
    for round_ in range(rounds):
        result: dict[str, Any] = {"round": round_, "count": 500, "mode": "operator"}
        async with control_plane.provisioned(500, "operator", WORKDIR, result) as trial:
            rest.append(
                {"round": round_, **await control_plane.at_rest(trial, rest_interval, WORKDIR)}
            )
    previous = RESULTS / "provisioning.json"
    data: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    return {**data, "rest": rest, "rest_machine": environment()}


async def latency(
    rounds: int, loads: list[float], duration: float, ceiling_count: int
) -> dict[str, Any]:
    """Each round measures the direct ceiling, then runs both modes at each fraction of it
    (modes alternating which goes first)."""
    ceilings, runs = [], []
    for round_ in range(rounds):
        ceiling = await control_plane.ceiling(ceiling_count, WORKDIR)
        ceilings.append({"round": round_, **ceiling})
        log(f"direct ceiling: {ceiling['rate']:.2f} tenants/s")
        for load in loads:
            modes = ("direct", "operator") if round_ % 2 == 0 else ("operator", "direct")
            for mode in modes:
                result = await control_plane.latency(
                    load * ceiling["rate"], duration, mode, WORKDIR
                )
                runs.append({"round": round_, "load": load, **result})
    return {"duration_seconds": duration, "loads": loads, "ceilings": ceilings, "runs": runs}


def main() -> None:
    # SIGTERM (make interrupted, a CI limit) must run the atexit hook that stops the operators.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sections",
        default=os.environ.get("SECTIONS") or ",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (env SECTIONS)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every figure")
    parser.add_argument("--sizes", default="10,100,500,1000", help="tenants applied at once")
    parser.add_argument(
        "--loads",
        default="0.5,0.9",
        help="latency's arrival rates, as fractions of the direct ceiling the same round measures",
    )
    parser.add_argument(
        "--ceiling-count", type=int, default=300, help="tenants written at once for the ceiling"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument(
        "--rest-interval",
        type=float,
        default=30.0,
        help="the drift interval while cost at rest is measured (over 2.2 of them)",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS) - set(PARTS)
    if unknown:
        known = ", ".join((*SECTIONS, *PARTS))
        sys.exit(f"bench: unknown section(s) {sorted(unknown)}: choose from {known}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run(args, sections)
    page = report.render(RESULTS)
    (REPO / "docs" / "benchmarks.md").write_text(page)
    log("wrote docs/benchmarks.md")


def run(args: argparse.Namespace, sections: list[str]) -> None:
    if "realnode" in sections:
        realnode.check()  # now, not after the other sections' 45 minutes
    for section in sections:
        started = time.monotonic()
        log(f"section {section}: started")
        try:
            if section == "provisioning":
                sizes = [int(n) for n in args.sizes.split(",")]
                data = asyncio.run(provisioning(args.rounds, sizes, args.rest_interval))
            elif section == "rest":
                data = asyncio.run(rest_only(args.rounds, args.rest_interval))
            elif section == "latency":
                loads = [float(x) for x in args.loads.split(",")]
                data = asyncio.run(latency(args.rounds, loads, args.duration, args.ceiling_count))
            elif section == "realnode":
                data = asyncio.run(realnode.run(args.rounds, WORKDIR))
            else:
                data = asyncio.run(
                    runtime_section.run(max(RUNTIME_ROUNDS, args.rounds), WORKDIR / "runtime")
                )
        finally:
            if section not in ("runtime", "realnode"):  # realnode stops the cluster it started
                cluster("down")
        if section not in PARTS:
            data["machine"] = environment()
            data["seconds"] = time.monotonic() - started
        (RESULTS / f"{PARTS.get(section, section)}.json").write_text(
            json.dumps(data, indent=1) + "\n"
        )
        log(f"section {section}: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
