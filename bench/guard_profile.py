"""Where the guarded runtime's time goes, and the guard of another revision against this one.

    python -m bench.guard_profile                     # against main, 9 rounds
    python -m bench.guard_profile --against <rev> --out docs/bench/guard-profile.md

Not part of `make bench` (which reports this tree's guard against the bare runtime): a
one-off comparison for the notes of docs/benchmarks.md, on the same machine in one run.

1. A cProfile of `GuardedAgentRuntime` with its audit file, as bench/runtime.py drives it:
   which functions take the time, and the guard's own share (the overrides, the check, the
   audit record).
2. The same messages through the bare runtime, this tree's guarded runtime and `--against`'s
   (its `tenantry_runtime` package taken from git, loaded under another name beside this
   one), alternating slice by slice in one process: CPU and wall-clock overhead over bare
   per round, and the CPU cost of one audit record alone for each revision.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import io
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

from autogen_core import SingleThreadedAgentRuntime
from tenantry_runtime import audit as audit_now
from tenantry_runtime import guard as guard_now

from bench.runtime import TENANT, Ping, _orders, _throughput

REPO = Path(__file__).resolve().parents[1]
PROFILE_MESSAGES = 20_000
SLICE = 2_000
SLICES = 10  # as bench/runtime.py: 20,000 messages per round and variant
RECORDS = 20_000


def load_revision(revision: str, into: Path) -> tuple[ModuleType, ModuleType]:
    """`revision`'s guard and audit modules, as package `tenantry_runtime_<rev>`."""
    name = "tenantry_runtime_before"
    archive = subprocess.run(
        ["git", "archive", revision, "runtime_image/tenantry_runtime"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "runtime_image" / "tenantry_runtime").rename(into / name)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{name}.guard"), importlib.import_module(f"{name}.audit")


Variant = Callable[[int], Coroutine[Any, Any, dict[str, float]]]


def guarded_variant(guard: ModuleType, audit: ModuleType, workdir: Path, tag: str) -> Variant:
    async def run(messages: int) -> dict[str, float]:
        path = workdir / f"audit-{tag}.jsonl"
        path.unlink(missing_ok=True)
        log = audit.AuditLog.open(TENANT, str(path))
        try:
            runtime = guard.GuardedAgentRuntime(guard.TenantGuard(TENANT, log))
            return await _throughput(runtime, messages)
        finally:
            log.close()
            path.unlink()

    return run


async def bare(messages: int) -> dict[str, float]:
    return await _throughput(SingleThreadedAgentRuntime(), messages)


def record_cost(audit: ModuleType, path: Path) -> float:
    """CPU microseconds of one message record, written to a file as serve writes it."""
    log = audit.AuditLog.open(TENANT, str(path))
    try:
        start = time.process_time()
        for _ in range(RECORDS):
            log.message(
                kind="publish",
                topic="ping/acme",
                sender="driver/acme",
                recipient=None,
                message_type=Ping.__name__,
                decision="delivered",
                task_id="0" * 32,
            )
        return (time.process_time() - start) / RECORDS * 1e6
    finally:
        log.close()
        path.unlink()


def profile(guard: ModuleType, audit: ModuleType, workdir: Path) -> str:
    variant = guarded_variant(guard, audit, workdir, "profile")
    asyncio.run(variant(SLICE))  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(variant(PROFILE_MESSAGES))
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def spent(file_part: str, function: str, column: int) -> float:
        """Seconds in one function of the runtime package: column 2 its own, 3 with its calls."""
        return sum(
            float(value[column])
            for (file, _, name), value in entries.items()
            if file.endswith(f"{Path(guard.__file__ or '').parent.name}/{file_part}")
            and name == function
        )

    def cumulative(file_part: str, function: str) -> float:
        return spent(file_part, function, 3)

    def own(file_part: str, function: str) -> float:
        return spent(file_part, function, 2)

    shares = {
        "guard: the publish_message and send_message overrides' own time": own(
            "guard.py", "publish_message"
        )
        + own("guard.py", "send_message"),
        "guard: admit_publish + admit_send (the whole decision, its record included)": cumulative(
            "guard.py", "admit_publish"
        )
        + cumulative("guard.py", "admit_send"),
        "guard: TenantGuard._record (the check's record: strings + audit line)": cumulative(
            "guard.py", "_record"
        ),
        "audit: AuditLog.message (the audit line)": cumulative("audit.py", "message"),
    }
    lines = [
        f"cProfile of {PROFILE_MESSAGES:,} messages through `GuardedAgentRuntime` with its audit "
        f"file (profiled: {total:.2f} s, {total / PROFILE_MESSAGES * 1e6:.0f} µs per message "
        "under the profiler, which inflates small calls).",
        "",
        "| where | s | share of all |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {sec:.3f} | {sec / total:.1%} |" for label, sec in shares.items()),
        "",
        "Top 15 functions by own time:",
        "",
        "| function | calls | own s | cumulative s |",
        "| --- | ---: | ---: | ---: |",
    ]
    top = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:15]
    for (file, line, name), (_, calls, own, cum, _) in top:
        where = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
        lines.append(f"| `{where}:{line}({name})` | {calls:,} | {own:.3f} | {cum:.3f} |")
    return "\n".join(lines)


async def before_after(rounds: int, workdir: Path, against: str, before: Variant) -> str:
    variants: dict[str, Variant] = {
        "bare": bare,
        f"guarded, {against}": before,
        "guarded, this tree": guarded_variant(guard_now, audit_now, workdir, "now"),
    }
    for run in variants.values():
        await run(SLICE)
    overhead: dict[str, dict[str, list[float]]] = {
        name: {"cpu": [], "wall": []} for name in list(variants)[1:]
    }
    for round_ in range(rounds):
        seconds = {name: {"cpu": 0.0, "wall": 0.0} for name in variants}
        names = list(variants)
        for order in _orders(SLICES, names[round_ % 3 :] + names[: round_ % 3]):
            for name in order:
                for clock, value in (await variants[name](SLICE)).items():
                    seconds[name][clock] += value
        for name, clocks in overhead.items():
            for clock, values in clocks.items():
                values.append(seconds[name][clock] / seconds["bare"][clock] - 1)
    rows = [
        f"| {name}, {clock} | {rounds} | {min(v):.1%} | {statistics.median(v):.1%} | {max(v):.1%} |"
        for name, clocks in overhead.items()
        for clock, v in clocks.items()
    ]
    return "\n".join(
        [
            f"{SLICE * SLICES:,} messages per round and variant, in {SLICES} slices alternating with "
            "the others; overhead = time guarded / time bare - 1, per round.",
            "",
            "| guard overhead over bare | n | min | median | max |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="main", help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenantry-guard-profile-") as tmp:
        workdir = Path(tmp)
        guard_before, audit_before = load_revision(args.against, workdir / "src")
        before = guarded_variant(guard_before, audit_before, workdir, "before")
        comparison = asyncio.run(before_after(args.rounds, workdir, args.against, before))
        costs = {args.against: [], "this tree": []}  # type: dict[str, list[float]]
        for _ in range(args.rounds):
            costs[args.against].append(record_cost(audit_before, workdir / "r.jsonl"))
            costs["this tree"].append(record_cost(audit_now, workdir / "r.jsonl"))
        record_rows = [
            f"| {name} | {len(v)} | {min(v):.2f} | {statistics.median(v):.2f} | {max(v):.2f} |"
            for name, v in costs.items()
        ]
        page = "\n".join(
            [
                "# The guard's cost: profile, and before / after",
                "",
                f"`python -m bench.guard_profile --against {args.against}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
                f"{sys.version.split()[0]}, on a shared 2-core machine (another engineer's "
                "cluster ran beside it): ratios within a round, not absolute times.",
                "",
                f"## Where the time goes: before ({args.against})",
                "",
                profile(guard_before, audit_before, workdir),
                "",
                "## Where the time goes: after (this tree)",
                "",
                profile(guard_now, audit_now, workdir),
                "",
                f"## Before ({args.against}) and after (this tree), one run",
                "",
                comparison,
                "",
                "| CPU µs per audit record alone (to a file, as serve) | n | min | median | max |",
                "| --- | ---: | ---: | ---: | ---: |",
                *record_rows,
                "",
            ]
        )
    print(page)
    if args.out is not None:
        args.out.write_text(page)


if __name__ == "__main__":
    main()
