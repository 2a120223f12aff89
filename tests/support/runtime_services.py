"""The tenant runtime's processes for tests and benchmarks: real ones on 127.0.0.1, no mocks.

`python -m tenantry_runtime serve | sandbox` are started as subprocesses with only the env
docs/runtime-contract.md defines. When the tests run as root, the sandbox runs as the
unprivileged user SANDBOX_UID, as in its pod: RLIMIT_NPROC does not bind root, and a fork
bomb test that is not bound by it would take the machine down instead of failing. That uid is
the tests' own: the sandbox kills its processes and removes its IPC objects (/dev/shm, System
V). A sandbox that runs as the tester's own user is told to leave IPC objects alone.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.processes import stop

REPO = Path(__file__).resolve().parents[2]
SANDBOX_UID = 65532
TENANT = "acme"
SANDBOX_TOKEN = "s3cret-sandbox-token-for-acme"
MODEL_API_KEY = "sk-test-model-key"


def base_env(**extra: str) -> dict[str, str]:
    """A minimal env for our processes: nothing of the test's own env leaks in by accident."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@dataclass
class Service:
    """A `python -m tenantry_runtime` process and where its output goes."""

    proc: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        stop(self.proc, timeout=10)

    def logs(self) -> str:
        return self.stderr.read_text(errors="replace")


def stage_sandbox_packages() -> Path:
    """Copy what the sandbox server imports to a directory SANDBOX_UID can read.

    The checkout and its virtualenv may sit below a directory private to root (a `mktemp -d`
    clone, a home directory): that user could not import them from there. The copy holds the
    packages this process has loaded (of them the sandbox needs only h11) and is removed at exit.
    """
    import tenantry_runtime.__main__  # noqa: PLC0415 - loads what the server imports
    import tenantry_runtime.sandbox  # noqa: F401, PLC0415

    purelib = Path(sysconfig.get_paths()["purelib"])
    tops = set()
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).is_relative_to(purelib):
            tops.add(Path(origin).relative_to(purelib).parts[0])
    staged = Path(tempfile.mkdtemp(prefix="tenantry-sandbox-python-"))
    atexit.register(shutil.rmtree, staged, ignore_errors=True)
    staged.chmod(0o755)
    sources = [purelib / top for top in tops if not top.startswith(("__editable__", "_distutils"))]
    for source in [*sources, REPO / "runtime_image" / "tenantry_runtime"]:
        if source.is_dir():
            shutil.copytree(
                source, staged / source.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source, staged / source.name)
    for path in [staged, *staged.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return staged


@functools.cache
def sandbox_python() -> tuple[str, dict[str, str]]:
    """An interpreter (and its env) that can run the sandbox as SANDBOX_UID.

    The test's own interpreter may live where that user cannot reach (a home directory
    private to root); then a system Python of the same minor version runs the sandbox, with
    the packages it needs staged where that user can read them.
    """
    if os.geteuid() != 0:
        return sys.executable, {}
    env = base_env(PYTHONPATH=str(stage_sandbox_packages()))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import tenantry_runtime.sandbox"],
                env=env,
                capture_output=True,
                check=False,
                user=SANDBOX_UID,
                group=SANDBOX_UID,
                extra_groups=[],
            )
        except OSError:  # not there, or not executable by that user
            continue
        if probe.returncode == 0:
            return candidate, {"PYTHONPATH": env["PYTHONPATH"]}
    pytest.fail(f"no {version} that user {SANDBOX_UID} can run the sandbox with")


def run_module(
    command: str,
    env: Mapping[str, str],
    logs: Path,
    *,
    as_sandbox_user: bool = False,
    uid: int = SANDBOX_UID,
    cwd: Path | None = None,
    python: str = sys.executable,
    bootstrap: str | None = None,
) -> subprocess.Popen[bytes]:
    """Starts `python -m tenantry_runtime <command>`; as_sandbox_user: as `uid` when root.

    `bootstrap`, when given, is Python run with `-c` in place of `-m tenantry_runtime` (it
    gets `command` as its argument): a test's way to change one thing in the server."""
    extra_env: dict[str, str] = {}
    user: dict[str, Any] = {}
    if as_sandbox_user:
        python, extra_env = sandbox_python()
        if os.geteuid() == 0:
            user = {"user": uid, "group": uid, "extra_groups": []}
    if command == "sandbox" and not user:
        # It runs as the tester: the IPC objects of that user are not the sandbox's to remove
        # (a desktop's shared memory, say). As root it never removes them anyway.
        extra_env.setdefault("TENANTRY_SANDBOX_WIPE_IPC", "false")
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{command}.out").open("wb") as out, (logs / f"{command}.err").open("wb") as err:
        return subprocess.Popen(
            [python, *(["-c", bootstrap] if bootstrap else ["-m", "tenantry_runtime"]), command],
            env={**env, **extra_env},
            stdout=out,
            stderr=err,
            cwd=cwd or logs,
            **user,
        )


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def sandbox_request(
    sandbox: Service, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """(status, body) of one request to a sandbox server, with its token.

    The body is parsed when it is JSON, None when empty, else kept as text.
    """
    port = int(sandbox.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SANDBOX_TOKEN}"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(raw)
        return response.status, raw.decode(errors="replace") or None
    finally:
        connection.close()


def wait_healthy(proc: subprocess.Popen[bytes], port: int, err_log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"port {port}: exited with {proc.returncode}:\n{err_log.read_text()}")
        with contextlib.suppress(OSError):
            if http_get(port, "/healthz")[0] == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"port {port}: not healthy within 60 s:\n{err_log.read_text()}")


def start_service(
    command: str,
    env: Mapping[str, str],
    logs: Path,
    *,
    as_sandbox_user: bool = False,
    uid: int = SANDBOX_UID,
    cwd: Path | None = None,
    python: str = sys.executable,
    bootstrap: str | None = None,
) -> Service:
    port = int(env["TENANTRY_PORT"])
    url = f"http://127.0.0.1:{port}"
    proc = run_module(
        command,
        env,
        logs,
        as_sandbox_user=as_sandbox_user,
        uid=uid,
        cwd=cwd,
        python=python,
        bootstrap=bootstrap,
    )
    service = Service(proc, url, logs / f"{command}.out", logs / f"{command}.err")
    try:
        wait_healthy(proc, port, service.stderr)
    except BaseException:
        service.stop()
        raise
    return service


@dataclass(frozen=True)
class SandboxHome:
    """A directory the sandbox user owns: its workspace and its token file."""

    root: Path
    workspace: Path
    token_file: Path


def sandbox_env(home: SandboxHome, **extra: str) -> dict[str, str]:
    """The env a sandbox server of `home` starts with, on a free loopback port; `extra` adds
    to it or overrides."""
    return base_env(
        TENANTRY_TENANT=TENANT,
        TENANTRY_SANDBOX_TOKEN=SANDBOX_TOKEN,
        TENANTRY_SANDBOX_WORKDIR=str(home.workspace),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
        **extra,
    )


def make_sandbox_home(uid: int = SANDBOX_UID) -> SandboxHome:
    """A fresh workspace, owned by `uid` when the tests run as root, and the token file of the
    runtime's side (the sandbox gets its token in its env: sandbox_env). The file stays the
    tester's: as in a pod, where it is in the runtime's pod only, the sandbox's user cannot
    read it (unless the tests run as that user, not as root).

    Not pytest's tmp_path: its parents are private to root, and the sandbox user must reach
    its workspace. Remove `root` when done.
    """
    root = Path(tempfile.mkdtemp(prefix="tenantry-sandbox-"))
    workspace = root / "workspace"
    workspace.mkdir()
    token_file = root / "token"
    token_file.write_text(SANDBOX_TOKEN + "\n")
    if os.geteuid() == 0:
        for path in (root, workspace):
            os.chown(path, uid, uid)
    token_file.chmod(0o400)
    return SandboxHome(root, workspace, token_file)


def ipc_owners() -> set[int]:
    """The uids that own (or created) a System V IPC object, or own an entry of /dev/shm or
    /dev/mqueue, in this IPC namespace."""
    owners = set()
    for kind in ("shm", "msg", "sem"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            header = lines[0].split() if lines else []
            for line in lines[1:]:
                row = dict(zip(header, line.split(), strict=False))
                owners.update({int(row["uid"]), int(row["cuid"])})
    for directory in ("/dev/shm", "/dev/mqueue"):  # noqa: S108 - looked at, never written
        with contextlib.suppress(OSError):
            owners.update(e.stat(follow_symlinks=False).st_uid for e in os.scandir(directory))
    return owners


def free_uids(count: int, first: int = 62000) -> list[int]:
    """Uids of `first`..`first`+999 with no /etc/passwd entry, no process on this machine and
    no IPC object or /dev/shm entry: nothing a sandbox under one of them does or removes can
    concern anyone else."""
    in_use = ipc_owners()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # gone in the meantime
            in_use.add(os.stat(f"/proc/{pid}").st_uid)
    uids = []
    for uid in range(first, first + 1000):
        with contextlib.suppress(KeyError):
            pwd.getpwuid(uid)
            continue
        if uid not in in_use:
            uids.append(uid)
        if len(uids) == count:
            return uids
    pytest.fail(f"no {count} free uids in {first}-{first + 999}")


StartSandbox = Callable[..., Service]
"""The `start_sandbox` fixture: starts a sandbox server; keyword arguments become its env."""


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that exist, zombies included."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 10.0) -> list[int]:
    """Waits for group `pgid` to have no process left; returns what is left at the end."""
    deadline = time.monotonic() + timeout
    while (left := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def serve_home(config: Mapping[str, Any], home: Path, **env: str) -> dict[str, str]:
    """HOME (made here) with runtime.json CONFIG, and the env of a `serve` process for it: its
    audit log goes to HOME/audit.jsonl; ENV adds to the environment."""
    home.mkdir()
    (home / "runtime.json").write_text(json.dumps(config))
    return base_env(
        TENANTRY_TENANT=str(config["tenant"]),
        TENANTRY_CONFIG=str(home / "runtime.json"),
        TENANTRY_AUDIT_LOG=str(home / "audit.jsonl"),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
        **env,
    )


def start_serve(
    config: Mapping[str, Any], home: Path, bootstrap: str | None = None, **env: str
) -> Service:
    """A healthy `serve` process for runtime.json CONFIG in HOME (see serve_home), where its
    logs and its audit log (`extra["audit"]`) go."""
    service = start_service("serve", serve_home(config, home, **env), home, bootstrap=bootstrap)
    service.extra["audit"] = home / "audit.jsonl"
    return service


def refused_serve(config: Mapping[str, Any], home: Path) -> str:
    """The stderr of a `serve` that refuses runtime.json CONFIG (in HOME, see serve_home), as
    every refusal must: exit status 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "tenantry_runtime", "serve"],
        env=serve_home(config, home),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


StartRuntime = Callable[..., Service]
"""`start(env=None, **changes)`: a `serve` process whose runtime.json is the tests' default
(tests/runtime/conftest.py's `start_runtime`) with `changes`."""


async def call(
    method: str, url: str, body: Any = None, *, raw: bytes | None = None, content_type: str = ""
) -> tuple[int, dict[str, Any]]:
    """One HTTP request to a runtime, and its status and JSON body ({} when it has none). BODY
    is sent as JSON; RAW, instead, as the bytes it is, under CONTENT_TYPE."""
    import aiohttp  # noqa: PLC0415 - only the runtime's tests have it

    sent: dict[str, Any] = (
        {"json": body} if raw is None else {"data": raw, "headers": {"Content-Type": content_type}}
    )
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session,
        session.request(method, url, **sent) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else {}
