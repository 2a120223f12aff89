"""`make demo`: the operator on the local cluster with the example tenants.

Installs the CRD, (re)starts `tenantry run` in the background (log in .cache/demo/), applies
examples/, waits for every tenant to be Ready and shows what each one got. The cluster and
the operator stay up for exploring; `make demo-down` stops the operator, `make cluster-down`
everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cache" / "demo"
PID_FILE = STATE / "operator.pid"
LOG_FILE = STATE / "operator.log"
KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"
BIN_DIR = (
    Path(
        os.environ.get("TENANTRY_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tenantry"
    )
    / "bin"
)
ENV = {
    **os.environ,
    "KUBECONFIG": str(KUBECONFIG),
    "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def kubectl(*args: str) -> None:
    subprocess.run(["kubectl", *args], env=ENV, check=True)


def stop_operator() -> None:
    if not PID_FILE.exists():
        return
    pid = int(PID_FILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    PID_FILE.unlink(missing_ok=True)
    print("operator stopped")


def start_operator() -> None:
    stop_operator()
    STATE.mkdir(parents=True, exist_ok=True)
    tenantry = Path(sys.executable).parent / "tenantry"
    with LOG_FILE.open("w") as log:
        process = subprocess.Popen(
            [str(tenantry), "run"],
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PID_FILE.write_text(str(process.pid))
    print(f"operator running as pid {process.pid}; log: {LOG_FILE.relative_to(REPO)}")


def main() -> None:
    if sys.argv[1:] == ["down"]:
        stop_operator()
        return
    say("installing the AgentTenant CRD")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/agenttenants.tenantry.dev", "--timeout=60s")
    say("starting the operator")
    start_operator()
    # The secret source first: a tenant applied before the Secret it copies would meet a
    # SecretNotFound warning first, and only then become Ready.
    say("applying examples/secret-source.yaml, then the tenants in examples/")
    kubectl("apply", "-f", str(REPO / "examples" / "secret-source.yaml"))
    kubectl("apply", "-f", str(REPO / "examples"))
    say("waiting for every tenant to be Ready")
    kubectl("wait", "--for=condition=Ready", "agenttenants", "--all", "--timeout=180s")
    say("kubectl get agenttenants -o wide")
    kubectl("get", "agenttenants", "-o", "wide")
    names = subprocess.run(
        [
            "kubectl",
            "get",
            "agenttenants",
            "-o",
            "jsonpath={range .items[*]}{.status.namespace}{'\\n'}{end}",
        ],
        env=ENV,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for namespace in names:
        say(f"objects in {namespace}")
        kubectl(
            "get",
            "deployments,pods,services,networkpolicies,serviceaccounts,secrets,configmaps,"
            "resourcequotas,limitranges",
            "-n",
            namespace,
        )
    print(
        f"""
The cluster and the operator keep running. Try:
  export KUBECONFIG={KUBECONFIG}
  export PATH={BIN_DIR}:$PATH        # kubectl {BIN_DIR.name}/kubectl matches the server
  kubectl explain agenttenant.spec
  kubectl describe agenttenant acme
  .venv/bin/tenantry render examples/acme.yaml  # what the operator applies, offline
Stop the operator with `make demo-down`, everything with `make cluster-down`."""
    )


if __name__ == "__main__":
    main()
