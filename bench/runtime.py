"""Benchmark section "runtime" (issue #7, section 6): the tenant runtime and its sandbox.

1. Messages per second through `GuardedAgentRuntime` (with a real file-backed `AuditLog`, as
   `serve` runs it) vs a bare autogen-core `SingleThreadedAgentRuntime`: the same agent, the
   same messages, in the same process and run; and the instructions each runs per message,
   counted by valgrind's callgrind (`measure_instructions`), which the machine's noise does not
   move.
2. `POST /v1/tasks` round trip against real `serve` and `sandbox` processes on loopback, for a
   task the model answers at once and for one that runs python in the sandbox.
3. One code block through `SandboxCodeExecutor` and a real sandbox process vs autogen-ext's
   `LocalCommandLineCodeExecutor` in a temporary directory.
4. The idle memory (RSS) of a tenant's processes: `serve` with no agent, with the built-in
   kinds, and with a platform team's kind (examples/custom-agents, installed as a package
   beside the runtime's), and `sandbox`.

The machine this runs on is noisy, so every comparison is a ratio of variants measured in
the same run, interleaved (the order alternates each round), and each figure is repeated and
reported as min / median / max. Nothing here asserts a timing; only results are checked.

The model is the one stand-in: no model hub is reachable, so an OpenAI-compatible server with
a fixed script answers (the runtime talks to it through its own model client, model_client.py, as it
would to a real one). Its answers take microseconds, so the round trips show our overhead.

Run alone, from the repository root: `python -m bench.runtime --rounds 5 --out /tmp/runtime.json`
prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import tenantry_runtime
from aiohttp import web
from autogen_core import (
    AgentId,
    CancellationToken,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    TypeSubscription,
    message_handler,
)
from autogen_core.code_executor import CodeBlock, CodeExecutor
from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor
from tenantry_runtime.audit import AuditLog
from tenantry_runtime.executor import SandboxCodeExecutor
from tenantry_runtime.guard import GuardedAgentRuntime, TenantGuard

from bench.stats import percentile
from e2e.model_server import completion  # the one reply shape of every scripted model

# How the runtime tests start `serve` and `sandbox`, reused rather than copied: as root the
# sandbox runs as its unprivileged user, with its packages staged where that user can read
# them, and that staging is not small.
from tests.support import runtime_services
from tests.support.ports import free_port

COMMAND = "make bench SECTIONS=runtime"
TENANT = "acme"
TARGET_OVERHEAD = 0.05
"""Reported against, never asserted: the guard should cost at most 5% of bare throughput."""

MESSAGES = 20_000
BATCH = 100  # per batch: half published to the tenant's topic, half sent direct (awaited)
SLICES = 10  # a round's messages per variant, in this many alternating runs (a shared
# machine's bursts of load then fall on both variants alike more often)
MESSAGE_ROUNDS = 25
"""Rounds of the messages at least, whatever the section's rounds: on this shared machine one
round's overhead lands anywhere from -4 % to +15 % (the host's load, not the guard), so the
median of 9 rounds moved by two points from run to run of the same code. A round is 7 s."""
TASKS_PER_ROUND = 10
EXECUTIONS_PER_ROUND = 10
WARMUP = 2

IDLE_TARGETS = (
    ("runtime process (built-in kinds)", "serve, built-in kinds (assistant + coder)", 60),
    ("sandbox process", "sandbox", 30),
)
"""Reported against, never asserted (issue 14): (target's label, idle variant, MiB)."""

IDLE_SECONDS = 2.0
"""How long a process idles, healthy, before its RSS is read."""
EXAMPLE_KINDS = Path(__file__).resolve().parents[1] / "examples" / "custom-agents"

CODE = "print(sum(range(1000)))\n"
DIRECT_PROMPT = "What is the answer?"
CODE_PROMPT = "Compute the sum of 0..999 with code."


# --- 1. messages per second -----------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    task_id: str  # like every message of the runtime's, so the audit line is full size


class Sink(RoutedAgent):
    def __init__(self, tally: list[int]) -> None:
        super().__init__("counts what reaches it")
        self._tally = tally

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        self._tally[0] += 1


async def _register(runtime: SingleThreadedAgentRuntime, tally: list[int]) -> None:
    # As tenantry_runtime.agents registers its agents, on both runtimes alike, so the only
    # difference left between the variants is the guard. "driver" is the messages' sender:
    # autogen looks a sender up, and never delivers a publish back to its own sender.
    for agent_type in ("sink", "driver"):
        await RoutedAgent.register(
            runtime,
            agent_type,
            lambda: Sink(tally),
            skip_class_subscriptions=True,
            skip_direct_message_subscription=True,
        )
    await runtime.add_subscription(TypeSubscription("ping", "sink"))


async def _throughput(runtime: SingleThreadedAgentRuntime, messages: int) -> dict[str, float]:
    """Seconds from start() to stop_when_idle() for `messages`, every one handled.

    Wall-clock seconds, as asked, and CPU seconds of this process: the runtime is one thread,
    and its CPU time leaves out what other processes on a busy machine take from it.
    """
    tally = [0]
    await _register(runtime, tally)
    ping, topic = Ping(task_id="0" * 32), TopicId("ping", TENANT)
    recipient, sender = AgentId("sink", TENANT), AgentId("driver", TENANT)
    gc.collect()  # a collection left over from the previous run is not this run's cost
    wall, cpu = time.perf_counter(), time.process_time()
    runtime.start()
    for _ in range(messages // BATCH):
        sends = [runtime.send_message(ping, recipient, sender=sender) for _ in range(BATCH // 2)]
        for _ in range(BATCH // 2):
            await runtime.publish_message(ping, topic, sender=sender)
        await asyncio.gather(*sends)
    await runtime.stop_when_idle()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if tally[0] != messages:
        raise RuntimeError(f"{tally[0]} of {messages} messages were handled")
    return {"wall": wall, "cpu": cpu}


async def _bare(messages: int, workdir: Path) -> dict[str, float]:
    return await _throughput(SingleThreadedAgentRuntime(), messages)


async def _guarded(messages: int, workdir: Path) -> dict[str, float]:
    path = workdir / "audit.jsonl"
    path.unlink(missing_ok=True)
    audit = AuditLog.open(TENANT, str(path))  # a file, one write per line, as serve writes it
    try:
        return await _throughput(GuardedAgentRuntime(TenantGuard(TENANT, audit)), messages)
    finally:
        audit.close()
        path.unlink()


async def _guard_cost(messages: int, workdir: Path) -> dict[str, float]:
    """CPU microseconds per message of the guard's decision with its audit record, and of the
    record alone (alternating, like the runtimes): where the guard's share goes. As a burst
    of BATCH messages pays them in the runtime: each record held, and the burst's records
    written together before the first of them is delivered (audit.py)."""
    path = workdir / "audit-cost.jsonl"
    audit = AuditLog.open(TENANT, str(path))
    guard, ping = TenantGuard(TENANT, audit), Ping(task_id="0" * 32)
    topic, sender = TopicId("ping", TENANT), AgentId("driver", TENANT)

    def decide() -> None:
        guard.admit_publish(ping, topic, sender, hold=True)  # as GuardedAgentRuntime asks

    def audit_line() -> None:
        audit.message(
            kind="publish",
            topic=str(topic),
            sender=str(sender),
            recipient=None,
            message_type="Ping",
            decision="delivered",
            task_id=ping.task_id,
            until_delivery=True,
        )

    steps = {"guard": decide, "audit_line": audit_line}
    seconds = dict.fromkeys(steps, 0.0)
    bursts = messages // SLICES // BATCH
    try:
        for order in _orders(SLICES, list(steps)):
            for name in order:
                start = time.process_time()
                for _ in range(bursts):
                    for _ in range(BATCH):
                        steps[name]()
                    audit.write_held()  # as the burst's first delivery does
                seconds[name] += time.process_time() - start
    finally:
        audit.close()
        path.unlink()
    return {name: value / (bursts * BATCH * SLICES) * 1e6 for name, value in seconds.items()}


COUNTED_MESSAGES = (1_000, 5_000)
"""Messages in the two counted runs of each variant: per message is their counts' difference
over 4,000, so what both runs do once (start, imports, the warm-up) cancels."""


async def count_one(variant: str, messages: int) -> None:
    """One variant's messages in this process, after a warm-up: what callgrind counts."""
    run = _bare if variant == "bare" else _guarded
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-count-") as workdir:
        await run(200, Path(workdir))
        await run(messages, Path(workdir))


def measure_instructions() -> dict[str, Any]:
    """Instructions per message of each runtime, counted by valgrind's callgrind: the guard's
    cost in work, free of the noise a shared machine puts into seconds (what it leaves out:
    cache misses and stalls, which are time and not instructions). Without valgrind, or when a
    count fails, what was not counted says why (`not_counted`); the timed figures stand."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {"not_counted": "valgrind is not installed (`make bench` installs it)"}
    counts: dict[str, dict[int, int]] = {}
    try:
        for variant in ("bare", "guarded"):
            for messages in COUNTED_MESSAGES:
                done = subprocess.run(
                    [
                        valgrind,
                        "--tool=callgrind",
                        "--cache-sim=no",
                        "--callgrind-out-file=/dev/null",
                        sys.executable,
                        "-m",
                        "bench.runtime",
                        "--count-one",
                        variant,
                        str(messages),
                    ],
                    # One hash seed for every run: with it a count is the same from run to run
                    # to some tens of instructions; with a random one it moved by millions.
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=1800,
                )
                counts.setdefault(variant, {})[messages] = collected(done.stderr)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        return {"not_counted": f"the count failed: {error}"}
    few, many = COUNTED_MESSAGES
    per_message = {
        variant: (by_count[many] - by_count[few]) / (many - few)
        for variant, by_count in counts.items()
    }
    tool = subprocess.run([valgrind, "--version"], capture_output=True, text=True, check=False)
    return {"per_message": per_message, "counts": counts, "valgrind": tool.stdout.strip()}


def collected(stderr: str) -> int:
    """The instructions callgrind counted, from its summary ("==PID== Collected : N", the one
    event counted with --cache-sim=no)."""
    for line in stderr.splitlines():
        if "Collected :" in line:
            return int(line.rpartition(":")[2].split()[0])
    raise ValueError(f"no count in callgrind's output: {stderr[-300:]!r}")


def counted_overhead(results: dict[str, Any]) -> float | None:
    """The guard's overhead as the throughput it costs, from the instructions counted: 1 - bare
    / guarded instructions per message (as 1 - guarded / bare messages per second would be, at
    one speed per instruction). None when not counted."""
    counted = results.get("instructions") or {}
    per_message = counted.get("per_message")
    if not per_message:
        return None
    return 1 - float(per_message["bare"]) / float(per_message["guarded"])


async def measure_messages(rounds: int, messages: int, workdir: Path) -> dict[str, Any]:
    variants: dict[str, Callable[[int, Path], Awaitable[dict[str, float]]]] = {
        "bare": _bare,
        "guarded": _guarded,
    }
    for run in variants.values():  # warm-up: imports, caches, the allocator
        await run(messages // SLICES, workdir)
    rates: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
    cost: dict[str, list[float]] = {"guard": [], "audit_line": []}
    for _ in range(rounds):
        # A round's messages go in slices, the variants alternating slice by slice, so a
        # burst of load from elsewhere falls on both rather than on one variant's whole run.
        seconds = {name: {"wall": 0.0, "cpu": 0.0} for name in variants}
        for order in _orders(SLICES, list(variants)):
            for name in order:
                for clock, value in (await variants[name](messages // SLICES, workdir)).items():
                    seconds[name][clock] += value
        for name, clocks in seconds.items():
            for clock, value in clocks.items():
                rates[name][clock].append(messages // SLICES * SLICES / value)
        for item, micros in (await _guard_cost(messages, workdir)).items():
            cost[item].append(micros)
    ratios = {
        clock: [g / b for g, b in zip(rates["guarded"][clock], rates["bare"][clock], strict=True)]
        for clock in ("wall", "cpu")
    }
    return {"msgs_per_s": rates, "guarded_over_bare": ratios, "cpu_us_per_message": cost}


# --- 2. HTTP task round trip ----------------------------------------------------------------


async def _scripted_model(request: web.Request) -> web.Response:
    """The model's stand-in: code for CODE_PROMPT, then the code's output; else an answer."""
    body = await request.json()
    last = body["messages"][-1]["content"]
    if last.startswith("Output of the code"):
        content = "The code printed:\n" + last.split("\n", 1)[1]
    elif last == CODE_PROMPT:
        content = f"Let me compute that.\n```python\n{CODE}```\n"
    else:
        content = "The answer is 42."
    return web.json_response(completion(body["model"], content))


@dataclass(frozen=True)
class _Stack:
    """Where the running services of sections 2 and 3 answer."""

    runtime_url: str
    sandbox_url: str
    token: str
    sandbox_python: str


@contextlib.asynccontextmanager
async def _services(workdir: Path) -> AsyncIterator[_Stack]:
    """The scripted model, a sandbox and a runtime process; all stopped on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        model = web.AppRunner(web.Application())
        model.app.router.add_post("/v1/chat/completions", _scripted_model)
        await model.setup()
        stack.push_async_callback(model.cleanup)
        model_port = free_port()
        await web.TCPSite(model, "127.0.0.1", model_port).start()

        # Not under workdir: the sandbox user must reach its workspace and token.
        home = runtime_services.make_sandbox_home()
        stack.callback(shutil.rmtree, home.root, ignore_errors=True)
        token = runtime_services.SANDBOX_TOKEN
        sandbox_env = runtime_services.sandbox_env(home)
        sandbox = await asyncio.to_thread(
            runtime_services.start_service,
            "sandbox",
            sandbox_env,
            workdir / "sandbox",
            as_sandbox_user=True,
            cwd=home.root,
        )
        stack.callback(sandbox.stop)

        key = workdir / "api-key"
        key.write_text("sk-bench\n")
        config = {
            "tenant": TENANT,
            "topicTypes": ["default"],
            "agents": [
                {"name": "assistant", "kind": "assistant", "topicType": "default"},
                {"name": "coder", "kind": "coder", "topicType": "code"},
            ],
            "model": {
                "model": "scripted",
                "baseUrl": f"http://127.0.0.1:{model_port}/v1",
                "apiKeyFile": str(key),
            },
            "sandbox": {"url": sandbox.url, "tokenFile": str(home.token_file)},
        }
        (workdir / "runtime.json").write_text(json.dumps(config))
        serve_env = runtime_services.base_env(
            TENANTRY_TENANT=TENANT,
            TENANTRY_CONFIG=str(workdir / "runtime.json"),
            TENANTRY_AUDIT_LOG=str(workdir / "serve" / "audit.jsonl"),
            TENANTRY_HOST="127.0.0.1",
            TENANTRY_PORT=str(free_port()),
            # The tenantry_runtime this process imported, not whichever one is installed.
            PYTHONPATH=str(Path(tenantry_runtime.__file__).parents[1]),
        )
        runtime = await asyncio.to_thread(
            runtime_services.start_service, "serve", serve_env, workdir / "serve"
        )
        stack.callback(runtime.stop)
        python, _ = runtime_services.sandbox_python()
        yield _Stack(str(runtime.url), str(sandbox.url), token, str(python))


async def _post_task(session: aiohttp.ClientSession, url: str, content: str) -> float:
    start = time.perf_counter()
    async with session.post(
        f"{url}/v1/tasks", json={"topicType": "default", "content": content}
    ) as r:
        body = await r.json()
    elapsed = time.perf_counter() - start
    if r.status != 200 or ("sum" in content) != ("499500" in body["result"]):
        raise RuntimeError(f"task {content!r}: {r.status} {body}")
    return elapsed


async def measure_tasks(services: _Stack, rounds: int, per_round: int) -> dict[str, Any]:
    prompts = {"model only": DIRECT_PROMPT, "model + sandbox": CODE_PROMPT}
    samples: dict[str, list[float]] = {name: [] for name in prompts}
    # One connection, kept alive, as a client of the runtime's API would use.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for prompt in prompts.values():
            for _ in range(WARMUP):
                await _post_task(session, services.runtime_url, prompt)
        for order in _orders(rounds * per_round, list(prompts)):
            for name in order:
                samples[name].append(await _post_task(session, services.runtime_url, prompts[name]))
    return {"seconds": samples}


# --- 3. sandbox vs LocalCommandLineCodeExecutor ---------------------------------------------


async def _execute(executor: CodeExecutor) -> float:
    start = time.perf_counter()
    result = await executor.execute_code_blocks(
        [CodeBlock(code=CODE, language="python")], CancellationToken()
    )
    elapsed = time.perf_counter() - start
    if result.exit_code != 0 or result.output.strip() != "499500":
        raise RuntimeError(f"{type(executor).__name__}: {result}")
    return elapsed


async def measure_executors(
    services: _Stack, rounds: int, per_round: int, workdir: Path
) -> dict[str, Any]:
    sandbox = SandboxCodeExecutor(services.sandbox_url, services.token, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "may execute code on the local machine"
        # The same interpreter the sandbox runs code with, so only the executors differ.
        python = SimpleNamespace(
            env_exe=services.sandbox_python, bin_path=str(Path(services.sandbox_python).parent)
        )
        local = LocalCommandLineCodeExecutor(
            work_dir=workdir / "local-executor", virtual_env_context=python
        )
    executors: dict[str, CodeExecutor] = {"sandbox": sandbox, "local": local}
    samples: dict[str, list[float]] = {name: [] for name in executors}
    for executor in executors.values():
        await executor.start()
    try:
        for executor in executors.values():
            for _ in range(WARMUP):
                await _execute(executor)
        for order in _orders(rounds * per_round, list(executors)):
            for name in order:
                samples[name].append(await _execute(executors[name]))
    finally:
        for executor in executors.values():
            await executor.stop()
    return {"seconds": samples, "python": services.sandbox_python}


# --- the section ----------------------------------------------------------------------------


# --- 4. idle memory ---------------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def _idle_configs(workdir: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """runtime.json and the extra import path of each `serve` variant measured."""
    kinds = workdir / "acme-agents"
    if not kinds.exists():
        # The package installed as its Dockerfile installs it (no deps), here into a directory
        # on the process's path instead of the image's virtualenv: its entry point is found alike.
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(kinds),
             str(EXAMPLE_KINDS)],
            check=True,
        )  # fmt: skip
    secrets = workdir / "secrets"
    (secrets / "faq-answers").mkdir(parents=True, exist_ok=True)
    (secrets / "faq-answers" / "answers.json").write_text('{"hours": "9 to 5"}')
    (workdir / "api-key").write_text("sk-bench\n")
    (workdir / "token").write_text("bench-sandbox-token\n")
    base = {"tenant": TENANT, "model": None, "sandbox": None, "secretsDir": str(secrets)}
    builtin = {
        **base,
        "topicTypes": ["default"],
        "agents": [
            {"name": "assistant", "kind": "assistant", "topicType": "default"},
            {"name": "coder", "kind": "coder", "topicType": "code"},
        ],
        # Never called while idle: the model client and the sandbox's connect on first use.
        "model": {"model": "scripted", "baseUrl": "http://127.0.0.1:9/v1",
                  "apiKeyFile": str(workdir / "api-key")},
        "sandbox": {"url": "http://127.0.0.1:9", "tokenFile": str(workdir / "token")},
    }  # fmt: skip
    example = {
        **base,
        "topicTypes": ["faq"],
        "agents": [
            {"name": "faq", "kind": "faq", "topicType": "faq", "config": {"secret": "faq-answers"}}
        ],
    }
    return {
        "serve, no agent": ({**base, "topicTypes": ["default"], "agents": []}, ""),
        "serve, built-in kinds (assistant + coder)": (builtin, ""),
        "serve, example kind (faq)": (example, str(kinds)),
    }


async def _idle_rss(command: str, env: dict[str, str], logs: Path, **options: Any) -> float:
    service = await asyncio.to_thread(runtime_services.start_service, command, env, logs, **options)
    try:
        await asyncio.sleep(IDLE_SECONDS)
        return _rss_mib(service.proc.pid)
    finally:
        await asyncio.to_thread(service.stop)


async def measure_idle_memory(rounds: int, workdir: Path) -> dict[str, Any]:
    """RSS of each process once healthy and idle, in MiB; the variants alternate each round."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any measure
    configs = await asyncio.to_thread(_idle_configs, workdir)
    package = str(Path(tenantry_runtime.__file__).parents[1])
    home = runtime_services.make_sandbox_home()
    mib: dict[str, list[float]] = {name: [] for name in [*configs, "sandbox"]}
    try:
        for order in _orders(rounds, list(mib)):
            for name in order:
                if name == "sandbox":
                    env = runtime_services.sandbox_env(home)
                    rss = await _idle_rss(
                        "sandbox",
                        env,
                        workdir / "idle-sandbox",
                        as_sandbox_user=True,
                        cwd=home.root,
                    )
                else:
                    config, extra_path = configs[name]
                    path = workdir / "idle-runtime.json"
                    path.write_text(json.dumps(config))
                    env = runtime_services.base_env(
                        TENANTRY_TENANT=TENANT,
                        TENANTRY_CONFIG=str(path),
                        TENANTRY_AUDIT_LOG=str(workdir / "idle-audit.jsonl"),
                        TENANTRY_HOST="127.0.0.1",
                        TENANTRY_PORT=str(free_port()),
                        PYTHONPATH=os.pathsep.join(p for p in (package, extra_path) if p),
                    )
                    rss = await _idle_rss("serve", env, workdir / "idle-serve")
                mib[name].append(rss)
    finally:
        shutil.rmtree(home.root, ignore_errors=True)
    return {"rss_mib": mib, "idle_seconds": IDLE_SECONDS}


def _orders(count: int, names: list[str]) -> Iterator[list[str]]:
    """A B, B A, A B, ...: interleaved, and neither variant always goes first."""
    for i in range(count):
        yield names if i % 2 == 0 else names[::-1]


async def run(rounds: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    results: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "autogen_core": version("autogen-core"),
            "autogen_ext": version("autogen-ext"),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "parameters": {
            "rounds": rounds,
            "message_rounds": max(rounds, MESSAGE_ROUNDS),
            "messages_per_round": MESSAGES,
            "message_batch": BATCH,
            "message_slices": SLICES,
            "tasks_per_round": TASKS_PER_ROUND,
            "executions_per_round": EXECUTIONS_PER_ROUND,
            "warmup": WARMUP,
            "code": CODE,
            "model": "scripted OpenAI-compatible server on loopback (no model hub reachable)",
        },
    }
    results["messages"] = await measure_messages(
        results["parameters"]["message_rounds"], MESSAGES, workdir
    )
    results["instructions"] = measure_instructions()
    results["idle"] = await measure_idle_memory(rounds, workdir / "idle")
    async with _services(workdir) as services:
        results["tasks"] = await measure_tasks(services, rounds, TASKS_PER_ROUND)
        results["executors"] = await measure_executors(
            services, rounds, EXECUTIONS_PER_ROUND, workdir
        )
    return results


# --- the report -----------------------------------------------------------------------------


def _row(label: str, values: list[float], fmt: str, *, p95: bool = False) -> str:
    cells = [
        min(values),
        statistics.median(values),
        *([percentile(values, 0.95)] if p95 else []),
        max(values),
    ]
    return f"| {label} | {len(values)} | " + " | ".join(format(v, fmt) for v in cells) + " |"


def _table(header: str, rows: list[str], *, p95: bool = False) -> str:
    columns = ["min", "median", *(["p95"] if p95 else []), "max"]
    lines = [
        f"Reproduce: `{COMMAND}`",
        "",
        f"| {header} | n | " + " | ".join(columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
        *rows,
    ]
    return "\n".join(lines)


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the report needs it, and Agg must come first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    messages, tasks, executors = results["messages"], results["tasks"], results["executors"]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, label in (("bare", "bare runtime"), ("guarded", "guarded runtime")):
        series = messages["msgs_per_s"][name]["wall"]
        left.plot(range(1, len(series) + 1), series, marker="o", label=label)
    left.set(title="Messages per second, per round", xlabel="round", ylabel="msgs/s")
    left.set_ylim(bottom=0)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.legend()
    for axis, data, title in (
        (middle, tasks["seconds"], "POST /v1/tasks round trip"),
        (right, executors["seconds"], "One python block, per execution"),
    ):
        axis.boxplot([_ms(v) for v in data.values()], tick_labels=list(data), whis=(0, 100))
        axis.set(title=title, ylabel="ms")
        axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(results: dict[str, Any], plots: Path) -> str:
    env, params = results["environment"], results["parameters"]
    messages, tasks, executors = results["messages"], results["tasks"], results["executors"]
    plots.mkdir(parents=True, exist_ok=True)
    _plot(results, plots / "runtime.png")
    median = statistics.median

    rates, ratios = messages["msgs_per_s"], messages["guarded_over_bare"]
    overhead = {clock: [1 - r for r in ratios[clock]] for clock in ratios}
    wall_overhead, cpu_overhead = median(overhead["wall"]), median(overhead["cpu"])
    verdicts = ["met" if o <= TARGET_OVERHEAD else "missed" for o in (wall_overhead, cpu_overhead)]
    throughput = _table(
        "per round",
        [
            _row("bare `SingleThreadedAgentRuntime`, msgs/s", rates["bare"]["wall"], ",.0f"),
            _row("`GuardedAgentRuntime` + audit file, msgs/s", rates["guarded"]["wall"], ",.0f"),
            _row("guarded / bare", ratios["wall"], ".3f"),
            _row("guard overhead (1 - guarded / bare)", overhead["wall"], ".1%"),
            _row("guard overhead, per CPU second", overhead["cpu"], ".1%"),
        ],
    )
    cost = messages["cpu_us_per_message"]
    bare_us = [1e6 / rate for rate in rates["bare"]["cpu"]]
    breakdown = _table(
        "CPU µs per message",
        [
            _row("bare runtime, whole message", bare_us, ".1f"),
            _row("guard: check + audit line", cost["guard"], ".1f"),
            _row("of which the audit line", cost["audit_line"], ".1f"),
            _row(
                "guard's own cost over a bare message, per round",
                [g / b for g, b in zip(cost["guard"], bare_us, strict=True)],
                ".1%",
            ),
        ],
    )
    counted_section = _counted_report(results)
    task_times = {name: _ms(v) for name, v in tasks["seconds"].items()}
    model_only, with_code = task_times["model only"], task_times["model + sandbox"]
    round_trip = _table(
        "task (ms)",
        [_row(name, values, ".1f", p95=True) for name, values in task_times.items()],
        p95=True,
    )
    run_times = {name: _ms(v) for name, v in executors["seconds"].items()}
    execution = _table(
        "executor (ms)",
        [
            _row("`SandboxCodeExecutor` → sandbox process", run_times["sandbox"], ".1f"),
            _row("`LocalCommandLineCodeExecutor`", run_times["local"], ".1f"),
        ],
    )
    idle_section = _idle_report(results.get("idle"), params["rounds"])
    return f"""\
### Runtime: messages per second, guard vs bare

The same agent and {params["messages_per_round"]:,} messages per round and runtime, half
published to the tenant's topic and half sent direct, timed from `start()` to
`stop_when_idle()`; {params.get("message_rounds", params["rounds"])} rounds, the two runtimes
alternating in one process ({params["message_slices"]} slices per round). The guarded runtime
checks every message and writes its audit line to a file as `serve` does: the lines of a burst in one `os.write`, before
the first of its messages is delivered. Python {env["python"]},
autogen-core {env["autogen_core"]}, {env["cpu_count"]} CPUs, load average
{env["loadavg_at_start"][0]:.2f} at the start.

{throughput}

Target: a guard overhead of at most {TARGET_OVERHEAD:.0%} of bare throughput. Median overhead
{wall_overhead:.1%} per wall-clock second (target {verdicts[0]}), {cpu_overhead:.1%} per CPU
second (target {verdicts[1]}); the CPU figure leaves out time other processes took from this
one. Where the guard's share goes, measured alone in the same run:

{breakdown}

The audit line (its text, with the time stamp; the write is one system call per burst, made
before any of the burst's messages is delivered) is most of the guard's own cost; the two
string comparisons of the check are next to nothing. The guard's `publish_message` and
`send_message` add one coroutine call per message (a message is judged when it is awaited);
its delivering overrides add none. Most of a message's
cost is autogen-core's own, paid by both runtimes: a profile shows its per-message
OpenTelemetry spans (made even with no tracer configured) and event logging.

{counted_section}

![runtime benchmarks](bench/runtime.png)

### Runtime: HTTP task round trip

`POST /v1/tasks` to a real `python -m tenantry_runtime serve` process, with its sandbox as a
second real process, on loopback; {params["tasks_per_round"] * params["rounds"]} tasks of each
kind, alternating, over one kept-alive connection. The model is a stand-in: no model hub is
reachable here, so a scripted OpenAI-compatible server answers at once (through the runtime's
model client, as a real one would), and the times are the runtime's own. "model only" is one
model call; "model + sandbox" is a model call, the coder running the reply's python block in
the sandbox, and a second model call.

{round_trip}

Model + sandbox over model only, medians: {median(with_code) / median(model_only):.2f}x
(+{median(with_code) - median(model_only):.1f} ms).

### Runtime: sandbox vs LocalCommandLineCodeExecutor

The same block, `{params["code"].strip()}`, through `SandboxCodeExecutor` and a real sandbox
process over HTTP (a fresh process in its own session, rlimits, a clean env, group kill), and
through autogen-ext's `LocalCommandLineCodeExecutor` (writes the block to a file in a temporary
directory and runs it); both with the same interpreter,
{params["rounds"] * params["executions_per_round"]} runs each, alternating.

{execution}

Sandbox over local, medians: {median(run_times["sandbox"]) / median(run_times["local"]):.2f}x.
{idle_section}"""


def _counted_report(results: dict[str, Any]) -> str:
    overhead = counted_overhead(results)
    if overhead is None:
        why = (results.get("instructions") or {}).get(
            "not_counted", "results from before the count"
        )
        return f"Not counted in instructions: {why}."
    counted = results["instructions"]
    per_message = counted["per_message"]
    few, many = (int(n) for n in sorted(counted["counts"]["bare"], key=int))
    verdict = "met" if overhead <= TARGET_OVERHEAD else "missed"
    rows = [
        f"| bare `SingleThreadedAgentRuntime` | {per_message['bare']:,.0f} |",
        f"| `GuardedAgentRuntime` + audit file | {per_message['guarded']:,.0f} |",
        f"| guard overhead as throughput, 1 − bare / guarded | {overhead:.1%} |",
    ]
    table = "\n".join(["| instructions per message | counted |", "| --- | ---: |", *rows])
    return f"""\
**Counted, not timed.** The same messages, each runtime in a process of its own under
callgrind ({counted["valgrind"]}), which counts the instructions the process runs: {many:,}
messages against {few:,}, so what both runs do once (start, imports, warm-up) cancels. A count
is the same from run to run whatever else the machine does, where one round's seconds move by
points; it leaves out what is time and not work (cache misses, stalls).

{table}

Target: at most {TARGET_OVERHEAD:.0%} ({verdict}). Reproduce: `make bench SECTIONS=runtime`."""


def _idle_report(idle: dict[str, Any] | None, rounds: int) -> str:
    if not idle:
        return ""  # results from before this section measured it
    table = _table("idle RSS (MiB)", [_row(name, v, ".1f") for name, v in idle["rss_mib"].items()])
    return f"""
### Runtime: idle memory of a tenant's processes

What a platform pays per tenant before any task: each process started as its pod starts it,
healthy, then left idle {idle["idle_seconds"]:.0f} s, its RSS read from `/proc`; {rounds}
starts of each, alternating. "example kind" is `examples/custom-agents` (a platform team's
package, installed beside the runtime's as its Dockerfile installs it): only the kinds a tenant
names are imported.

{table}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--plots", type=Path, help="where runtime.png goes (default: a temp dir)")
    parser.add_argument(
        "--count-one", nargs=2, metavar=("VARIANT", "MESSAGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.count_one:  # one process of measure_instructions, run under callgrind
        variant, messages = args.count_one
        asyncio.run(count_one(variant, int(messages)))
        return
    with tempfile.TemporaryDirectory(prefix="tenantry-bench-runtime-") as workdir:
        results = asyncio.run(run(args.rounds, Path(workdir)))
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(report(results, args.plots or Path(workdir) / "plots"))


if __name__ == "__main__":
    main()
