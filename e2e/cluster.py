"""Start, reuse and stop the local Kubernetes control plane that every integration test runs on.

    python e2e/cluster.py up      # build or reuse the binaries, start (or reuse) the cluster
    python e2e/cluster.py down    # stop it and leave no process behind
    python e2e/cluster.py status  # exit 0 when the cluster answers

The cluster is real: etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
Go modules (e2e/toolchain), run by `kwokctl --runtime binary`, with kwok faking the kubelets of
a few nodes so pods are scheduled and reported Running. Only the standard library is used, so
this runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import images
import node

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cache"
# The tests' and the demo's cluster is "tenantry"; `make bench` starts its own, beside it.
CLUSTER_NAME = os.environ.get("TENANTRY_CLUSTER_NAME", "tenantry")
CLUSTER_STATE = (
    STATE / "cluster" if CLUSTER_NAME == "tenantry" else STATE / CLUSTER_NAME / "cluster"
)
KUBECONFIG = CLUSTER_STATE / "kubeconfig"
KWOK_WORKDIR = STATE / "kwok"
# More `kwokctl create cluster` flags, split on spaces (the benchmarks add an audit policy).
EXTRA_CREATE_ARGS = os.environ.get("TENANTRY_KWOK_CREATE_ARGS", "").split()
NODE_COUNT = int(os.environ.get("TENANTRY_NODES", "2"))
# "pods=1500,cpu=1000": what each node offers beyond kwok's defaults.
NODE_ALLOCATABLE = dict(
    item.split("=", 1)
    for item in os.environ.get("TENANTRY_NODE_ALLOCATABLE", "").split(",")
    if item
)
TOOLCHAIN = REPO / "e2e" / "toolchain"
# The same per-user cache that e2e/toolchain/build.sh fills.
BIN_DIR = images.CACHE_ROOT / "bin"


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def wants_real_node() -> bool:
    """The real node runs beside the kwok nodes of the tests' cluster wherever it can.

    TENANTRY_REAL_NODE=0 never starts it (the benchmarks' cluster never has one); =1 requires it;
    unset, it starts when this machine can run it and says why not otherwise."""
    setting = os.environ.get("TENANTRY_REAL_NODE", "")
    if setting == "0" or CLUSTER_NAME != "tenantry":
        return False
    problems = node.missing()
    if problems and setting == "1":
        raise SystemExit(
            "[cluster] TENANTRY_REAL_NODE=1, but this machine lacks:\n  " + "\n  ".join(problems)
        )
    if problems:
        log("no real node (kwok nodes only): this machine lacks " + "; ".join(problems))
    return not problems


def build_toolchain(real_node: bool) -> None:
    started = time.monotonic()
    # Only the control plane: the chart tools (`build.sh tools`) are built by `make toolchain`.
    subprocess.run(
        ["bash", str(TOOLCHAIN / "build.sh"), "cluster"], check=True, stdout=subprocess.DEVNULL
    )
    if real_node:
        subprocess.run(
            ["bash", str(TOOLCHAIN / "build.sh"), "node"], check=True, stdout=subprocess.DEVNULL
        )
    log(f"toolchain step took {time.monotonic() - started:.1f}s")


def environment() -> dict[str, str]:
    env = dict(os.environ)
    # kwokctl runs `kubectl` from PATH: ours must win over any older one on the machine.
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["KWOK_WORKDIR"] = str(KWOK_WORKDIR)
    env["KWOK_KUBE_VERSION"] = images.toolchain_versions()["K8S_VERSION"]
    env["KUBECONFIG"] = str(KUBECONFIG)
    return env


def kubectl(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(KUBECONFIG), *args],
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=60,
    )


def answers(env: dict[str, str]) -> bool:
    if not KUBECONFIG.exists():
        return False
    try:
        return (
            kubectl(env, "get", "--raw", "/readyz", "--request-timeout=5s", check=False).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"[cluster] timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)
    log(f"{what}: ready after {time.monotonic() - started:.1f}s")


def ready_nodes(env: dict[str, str]) -> int:
    result = kubectl(env, "get", "nodes", "-o", "json", check=False)
    if result.returncode != 0:
        return 0
    count = 0
    for item in json.loads(result.stdout)["items"]:
        conditions = item.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            count += 1
    return count


def controllers_running(env: dict[str, str]) -> bool:
    # The ServiceAccount controller in kube-controller-manager creates "default" in every
    # namespace; pods cannot be admitted before it exists.
    return (
        kubectl(env, "get", "serviceaccount", "default", "-n", "default", check=False).returncode
        == 0
    )


def up() -> None:
    started = time.monotonic()
    env = environment()
    # Built first: `missing()` asks for the node's programs.
    build_toolchain(
        real_node=os.environ.get("TENANTRY_REAL_NODE") != "0"
        and CLUSTER_NAME == "tenantry"
        and os.geteuid() == 0
    )
    real_node = wants_real_node()
    config = REPO / "e2e" / "kwok.yaml"
    node_config = CLUSTER_STATE / "kwok-node.yaml"
    if answers(env):
        log(f"reusing the running cluster ({KUBECONFIG})")
        if real_node and not node_config.exists():
            # Its API server listens on loopback alone: no node can reach it.
            log(
                "this cluster was started without the real node: `make cluster-down` and start again"
            )
            real_node = False
    else:
        # A stale cluster (processes gone, state left) would make kwokctl refuse to create.
        down(quiet=True, env=env)
        KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
        node_config.unlink(missing_ok=True)
        if real_node:
            # Before the control plane: its certificate names every address the machine has.
            node.network_up()
            config = node_config
            config.write_text((REPO / "e2e" / "kwok.yaml").read_text() + node.kwok_config_patch())
        step = time.monotonic()
        subprocess.run(
            [
                "kwokctl",
                "create",
                "cluster",
                "--config",
                str(config),
                "--name",
                CLUSTER_NAME,
                "--runtime",
                "binary",
                "--kubeconfig",
                str(KUBECONFIG),
                "--etcd-binary",
                str(BIN_DIR / "etcd"),
                "--kube-apiserver-binary",
                str(BIN_DIR / "kube-apiserver"),
                "--kube-controller-manager-binary",
                str(BIN_DIR / "kube-controller-manager"),
                "--kube-scheduler-binary",
                str(BIN_DIR / "kube-scheduler"),
                "--kwok-controller-binary",
                str(BIN_DIR / "kwok"),
                "--wait",
                "3m",
                *EXTRA_CREATE_ARGS,
            ],
            env=env,
            check=True,
        )
        log(f"control plane started in {time.monotonic() - step:.1f}s")
    subprocess.run(
        [
            "kwokctl",
            "scale",
            "node",
            "--name",
            CLUSTER_NAME,
            "--replicas",
            str(NODE_COUNT),
            # Fake kubelets report this version, so `kubectl get nodes` matches the control plane.
            "--param",
            f'.nodeInfo.kubeletVersion="{images.toolchain_versions()["K8S_VERSION"]}"',
            # Loopback, not kwok's default of 192.0.2.1 (TEST-NET-1, which is this machine's own
            # network here): the API server connects to a node's InternalIP for logs and exec,
            # and must never send a packet off this machine for a fake node.
            "--param",
            '.nodeIPs=["127.0.0.1"]',
            # Real kubelets report ephemeral storage; without it no pod that requests some (the
            # chart's operator pods) could be scheduled.
            "--param",
            '.allocatable["ephemeral-storage"]="100Gi"',
            # More room than kwok's defaults (110 pods, 32 CPUs), for the benchmarks' thousands.
            *(
                arg
                for name, value in NODE_ALLOCATABLE.items()
                for arg in ("--param", f'.allocatable["{name}"]="{value}"')
            ),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_for(f"{NODE_COUNT} Ready nodes", lambda: ready_nodes(env) >= NODE_COUNT, 120)
    wait_for("kube-controller-manager", lambda: controllers_running(env), 120)
    if real_node:
        node.up()
    log(f"cluster up in {time.monotonic() - started:.1f}s; KUBECONFIG={KUBECONFIG}")


def down(quiet: bool = False, env: dict[str, str] | None = None) -> None:
    if env is None:
        env = environment()
    if CLUSTER_NAME == "tenantry":
        node.down(quiet=quiet)
    if shutil.which("kwokctl", path=env["PATH"]) is None:
        if not quiet:
            log("kwokctl is not built: nothing to stop")
        return
    if (KWOK_WORKDIR / "clusters" / CLUSTER_NAME).exists():
        subprocess.run(
            [
                "kwokctl",
                "delete",
                "cluster",
                "--name",
                CLUSTER_NAME,
                "--kubeconfig",
                str(KUBECONFIG),
            ],
            env=env,
            check=False,
            capture_output=quiet,
        )
    shutil.rmtree(KWOK_WORKDIR / "clusters" / CLUSTER_NAME, ignore_errors=True)
    KUBECONFIG.unlink(missing_ok=True)
    if not quiet:
        log("cluster stopped")


APISERVER_PID = KWOK_WORKDIR / "clusters" / CLUSTER_NAME / "pids" / "kube-apiserver.pid"
APISERVER_SAVED = CLUSTER_STATE / "kube-apiserver.cmdline"


def stop_apiserver() -> None:
    """Kill kube-apiserver alone (a fault for tests), keeping its command line to start it again."""
    pid = int(APISERVER_PID.read_text())
    APISERVER_SAVED.write_bytes(Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
        time.sleep(0.1)
    log(f"kube-apiserver (pid {pid}) killed")


def start_apiserver() -> None:
    """Start kube-apiserver again as it ran before `stop_apiserver`, and wait until it answers."""
    argv = [arg.decode() for arg in APISERVER_SAVED.read_bytes().split(b"\0") if arg]
    log_file = KWOK_WORKDIR / "clusters" / CLUSTER_NAME / "logs" / "kube-apiserver.log"
    with log_file.open("ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=output, start_new_session=True)
    # kwokctl stops the cluster by this pid file: the new process must be in it.
    APISERVER_PID.write_text(str(process.pid))
    env = environment()
    wait_for("kube-apiserver", lambda: answers(env), 120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", choices=["up", "down", "status", "stop-apiserver", "start-apiserver"]
    )
    command = parser.parse_args().command
    if command == "stop-apiserver":
        stop_apiserver()
    elif command == "start-apiserver":
        start_apiserver()
    elif command == "up":
        up()
    elif command == "down":
        down()
    else:
        sys.exit(0 if answers(environment()) else 1)


if __name__ == "__main__":
    main()
