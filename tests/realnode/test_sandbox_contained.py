"""The sandbox on the real node, attacked by the code it runs: a fork bomb, a memory hog, the
network and the file system. The attacker's code arrives as the model's reply to a task (the
scripted model obeys a task's fenced block), which is exactly how hostile code reaches a sandbox.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from realnode.nodekit import (
    API_KEY,
    MODEL,
    exec_python,
    fenced,
    get,
    node,
    pods,
    post_task,
    post_task_inside,
    ready,
    tenant_pod,
)

FORK_BOMB = """import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as error:
    print('fork refused after', children, 'children:', error.strerror)
"""

# Ten processes of 200 MiB each: every one stays under the run's RLIMIT_AS (512 MiB); together
# they are twice the sandbox container's memory limit (1Gi), which only the kernel enforces.
MEMORY_HOG = """import os
pids = []
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        block = bytearray(200 * 1024 * 1024)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        os._exit(0)
    pids.append(pid)
print('children:', [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids])
"""

NETWORK = f"""import socket
results = {{}}
for name, address in {{'model': ('{MODEL[0]}', {MODEL[1]}), 'api': ('{node.HOST_IP}', API_PORT),
                       'runtime': ('runtime', 8080), 'dns': ('{node.DNS_IP}', 53)}}.items():
    try:
        socket.create_connection(address, timeout=3).close()
        results[name] = 'connected'
    except OSError as error:
        results[name] = type(error).__name__
try:
    socket.getaddrinfo('kubernetes.default.svc.cluster.local', 443)
    results['resolve'] = 'resolved'
except OSError as error:
    results['resolve'] = type(error).__name__
print('network:', sorted(results.items()))
"""

# The key's bytes are built at run time, so the code itself (and the workspace) never holds them.
SCAN = """import os
needle = bytes.fromhex('{needle}')
found = []
for root, dirs, files in os.walk('/'):
    if root == '/':
        dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev')]
    for name in files:
        path = os.path.join(root, name)
        try:
            if os.path.islink(path) or os.path.getsize(path) > 50_000_000:
                continue
            with open(path, 'rb') as handle:
                if needle in handle.read():
                    found.append(path)
        except OSError:
            pass
for pid in filter(str.isdigit, os.listdir('/proc')):  # every environment it can read
    try:
        if needle in open(f'/proc/{{pid}}/environ', 'rb').read():
            found.append(f'/proc/{{pid}}/environ')
    except OSError:
        pass
tokens = [p for p in ('/var/run/secrets/kubernetes.io', '/run/secrets/kubernetes.io') if os.path.exists(p)]
environ = [k for k, v in os.environ.items() if needle.decode() in v]
print('found:', found, 'tokens:', tokens, 'environ:', environ)
"""


def result_of(answer: dict[str, object]) -> str:
    assert answer["status"] == 200, answer
    body = answer["body"]
    assert isinstance(body, dict)
    return str(body["result"])


def restarts(pod: dict[str, object]) -> int:
    status = pod["status"]
    assert isinstance(status, dict)
    return sum(int(c["restartCount"]) for c in status["containerStatuses"])


def cgroup_limit(pod_uid: str, controller: str, name: str) -> str:
    """The pod's own limit as the kernel holds it (cgroup v1, the kubelet's cgroupfs driver)."""
    matches = list(Path(f"/sys/fs/cgroup/{controller}/kubepods").rglob(f"pod{pod_uid}/{name}"))
    assert len(matches) == 1, matches
    return matches[0].read_text().strip()


def other_tenant_answers() -> None:
    assert "sum: 35350" in result_of(post_task_inside("globex", "7 times the sum of 1 to 100?"))


def test_a_fork_bomb_stops_at_the_limits_and_harms_no_one(
    tenants: list[str], neighbours: dict[str, str]
) -> None:
    (gateway,) = pods(neighbours["gateway"])
    sandbox = tenant_pod("acme", "sandbox")
    # The kernel's limit of the pod, beside the run's own RLIMIT_NPROC.
    assert cgroup_limit(sandbox["metadata"]["uid"], "pids", "pids.max") == "1024"

    output = result_of(post_task(gateway["metadata"]["name"], "acme", fenced(FORK_BOMB)))

    assert "fork refused after" in output, output
    refused_after = int(output.split("fork refused after", 1)[1].split()[0])
    assert refused_after < 64, output  # RLIMIT_NPROC of the sandbox's own uid
    # Nothing of the run is left: the children slept 60 s, the server killed them at its end.
    processes = exec_python(
        "tenant-acme",
        sandbox["metadata"]["name"],
        "import os; print(sum(1 for p in os.listdir('/proc') if p.isdigit()))",
    )
    assert int(processes) <= 2, processes  # the server (and this probe)
    after = tenant_pod("acme", "sandbox")
    assert ready(after) and restarts(after) == restarts(sandbox)
    other_tenant_answers()


def test_a_memory_hog_meets_the_kernels_limit_and_harms_no_one(
    tenants: list[str], neighbours: dict[str, str]
) -> None:
    (gateway,) = pods(neighbours["gateway"])
    sandbox = tenant_pod("acme", "sandbox")
    (container,) = sandbox["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit == "1Gi", limit
    assert cgroup_limit(sandbox["metadata"]["uid"], "memory", "memory.limit_in_bytes") == str(2**30)

    answer = post_task(gateway["metadata"]["name"], "acme", fenced(MEMORY_HOG), timeout=150)

    # The kernel killed what went past the pod's limit; whatever the task then says, the node,
    # the other tenant and acme itself are fine afterwards.
    print("memory hog answered:", json.dumps(answer)[:600])
    assert node.node_ready()
    other_tenant_answers()
    assert "sum: 35350" in result_of(
        post_task(gateway["metadata"]["name"], "acme", "7 times the sum of 1 to 100?")
    )


def test_the_sandbox_has_no_network_no_token_and_no_model_key(
    tenants: list[str], neighbours: dict[str, str]
) -> None:
    (gateway,) = pods(neighbours["gateway"])
    gateway_name = gateway["metadata"]["name"]
    network_code = NETWORK.replace("API_PORT", str(node.api_port()))

    network = result_of(post_task(gateway_name, "acme", fenced(network_code)))

    print(network)
    reached = network.split("network:", 1)[1]
    assert "'connected'" not in reached and "'resolved'" not in reached, network
    assert all(name in reached for name in ("'api'", "'dns'", "'model'", "'resolve'", "'runtime'"))

    scan = SCAN.format(needle=API_KEY.encode().hex())
    seen = result_of(post_task(gateway_name, "acme", fenced(scan)))
    assert "found: [] tokens: [] environ: []" in seen, seen
    # The same scan finds the key in the runtime pod, which holds it: the search works.
    runtime = tenant_pod("acme", "runtime")["metadata"]["name"]
    in_runtime = exec_python("tenant-acme", runtime, scan)
    assert "/model-credentials/" in in_runtime, in_runtime

    # Nor its own token, with which its code could ask its server for runs no run owns: in no
    # file, in no environment it can read (the server's holds it, closed to its runs: not
    # dumpable). The runtime's pod holds it in a file, and the scan finds it there.
    secret = get("secret", "-n", "tenant-acme", "sandbox-token")["data"]["token"]
    scan = SCAN.format(needle=base64.b64decode(secret).hex())
    seen = result_of(post_task(gateway_name, "acme", fenced(scan)))
    assert "found: [] tokens: [] environ: []" in seen, seen
    in_runtime = exec_python("tenant-acme", runtime, scan)
    assert "/sandbox/" in in_runtime, in_runtime
    assert (
        get("pod", "-n", "tenant-acme", tenant_pod("acme", "sandbox")["metadata"]["name"])["spec"][
            "automountServiceAccountToken"
        ]
        is False
    )
