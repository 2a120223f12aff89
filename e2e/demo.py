"""`make demo`: the operator on the local cluster with the example tenants.

Installs the CRD, (re)starts `tenantry run` in the background (log in .cache/demo/), applies
examples/, waits for every tenant to be Ready and shows what each one got. On a machine that runs
the real node (e2e/node.py: root, Linux) the tenants' pods are real containers there, and the
demo ends by sending one task to acme from a gateway pod: the scripted model (e2e/model_server.py,
on a stand-in address outside the cluster: no model provider is reachable here) writes a
program, acme's sandbox pod runs it, and the answer and the audit lines it produced are printed.
Elsewhere the pods are kwok's stand-ins and the demo says why. The cluster and the operator stay
up for exploring; `make demo-down` stops the operator and the model, `make cluster-down`
everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import node

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cache" / "demo"
PID_FILE = STATE / "operator.pid"
MODEL_PID_FILE = STATE / "model.pid"
MODEL_ADDRESS, MODEL_PORT = node.MODEL
GATEWAY = "demo-gateway"
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
    stop(PID_FILE, "operator")
    stop(MODEL_PID_FILE, "scripted model")


def stop(pid_file: Path, what: str) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    print(f"{what} stopped")


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


def capture(*args: str) -> str:
    return subprocess.run(
        ["kubectl", *args], env=ENV, check=True, capture_output=True, text=True
    ).stdout


def start_model() -> None:
    """The scripted model on its stand-in address, in the node's `outside` namespace."""
    process = node.scripted_model(STATE / "model-requests.jsonl")
    MODEL_PID_FILE.write_text(str(process.pid))


def apply_tenants(real_node: bool) -> None:
    """examples/, the secret source first; on the real node acme's model is the stand-in."""
    import yaml  # noqa: PLC0415 - the venv's; `demo.py down` runs before any venv exists

    kubectl("apply", "-f", str(REPO / "examples" / "secret-source.yaml"))
    for example in sorted((REPO / "examples").glob("*.yaml")):
        if example.name == "secret-source.yaml":
            continue
        documents = [d for d in yaml.safe_load_all(example.read_text()) if d]
        for document in documents:
            if real_node and document["metadata"]["name"] == "acme":
                model = document["spec"]["runtime"]["model"]
                print(f"acme's model: {model['baseUrl']} -> the scripted stand-in "
                      f"http://{MODEL_ADDRESS}:{MODEL_PORT}/v1 (no model provider is reachable here)")  # fmt: skip
                model["baseUrl"] = f"http://{MODEL_ADDRESS}:{MODEL_PORT}/v1"
        subprocess.run(["kubectl", "apply", "-f", "-"], env=ENV, check=True,
                       input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
                       text=True)  # fmt: skip


def send_a_task() -> None:
    """One task to acme from a gateway pod, its answer and the audit lines it left."""
    say(f"a gateway namespace ({GATEWAY}, labelled tenantry.dev/gateway=true) with one pod")
    image = "docker.io/tenantry/runtime:0.1.0"
    manifests = node.listener_pod(GATEWAY, "edge", {"tenantry.dev/gateway": "true"}, image)
    subprocess.run(["kubectl", "apply", "-f", "-"], env=ENV, check=True, text=True,
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))  # fmt: skip
    kubectl("wait", "--for=condition=Ready", "pod/edge", "-n", GATEWAY, "--timeout=120s")
    task = {"topicType": "default", "content": "What is 7 times the sum of 1 to 100?"}
    say(f"POST http://runtime.tenant-acme.svc.cluster.local:8080/v1/tasks {json.dumps(task)}")
    # Tried again until answered: the Service is programmed a moment after the tenant is Ready.
    url = "http://runtime.tenant-acme.svc.cluster.local:8080/v1/tasks"
    answer = json.loads(capture("exec", "-n", GATEWAY, "edge", "--", "python", "-c",
                                node.TASK_UNTIL_ANSWERED, url, json.dumps(task), "60"))["answer"]  # fmt: skip
    print(f"answer (task {answer['taskId']}):\n{answer['result']}")
    say("the audit lines of that task (kubectl logs -n tenant-acme deploy/runtime)")
    for line in capture("logs", "-n", "tenant-acme", "deploy/runtime").splitlines():
        if answer["taskId"] in line:
            print(line)


def main() -> None:
    if sys.argv[1:] == ["down"]:
        stop_operator()
        if node.node_ready():
            node.place("kwok")  # new pods (other operators', the tests') go to kwok's nodes again
        return
    real_node = node.node_ready()
    if real_node:
        say(f"the real node {node.NODE_NAME} runs the tenants' pods (kwok's nodes are cordoned)")
        node.place("real")
    else:
        lacking = node.missing() or ["a Ready node: see `python3 e2e/cluster.py up`"]
        say("no real node, so kwok's stand-in pods (no containers, no task); this machine lacks: "
            + "; ".join(lacking))  # fmt: skip
    say("installing the AgentTenant CRD")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/agenttenants.tenantry.dev", "--timeout=60s")
    say("starting the operator")
    start_operator()
    if real_node:
        start_model()
    # The secret source first: a tenant applied before the Secret it copies would meet a
    # SecretNotFound warning first, and only then become Ready.
    say("applying examples/secret-source.yaml, then the tenants in examples/")
    apply_tenants(real_node)
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
    if real_node:
        send_a_task()
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
