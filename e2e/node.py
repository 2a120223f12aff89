"""One real node beside the kwok nodes: kubelet, containerd, kube-proxy, kube-router and CoreDNS.

    python3 e2e/node.py check    # exit 0 when this machine can run the node, else say what is missing
    python3 e2e/node.py up       # (cluster.py calls this) start the node on the running cluster
    python3 e2e/node.py down     # stop it and remove everything it made on this machine
    python3 e2e/node.py status   # exit 0 when the node is Ready
    python3 e2e/node.py place real|kwok   # where new pods go: the real node alone, or kwok alone

The node's whole network lives in a network namespace of its own, `tenantry-node`, with no route
off this machine: its one link is a veth to the host (10.250.0.1 host side, 10.250.0.2 the node),
over which the node reaches the API server and the API server reaches the kubelet. The host never
forwards the node's packets anywhere (its own firewall chain drops them) and accepts from the
node only the API server's port. Pods get 10.244.0.0/24 on a CNI bridge inside that namespace;
kube-proxy and kube-router program iptables and ipsets there, so all of that disappears with it.

A second namespace, `tenantry-outside`, stands in for the world outside the cluster: the node
routes 198.51.100.0/24, 203.0.113.0/24 and 169.254.169.254 to it, and only tests' own listeners
answer there. No address a pod can reach belongs to anything but this machine's own namespaces.

Processes run in the node's network namespace (nsenter --net, so they share the host's mounts:
containerd must see the volumes the kubelet mounts). Everything they write outside their own
roots (/var/lib/tenantry-node, /run/tenantry-node) is recorded before they start and removed by
`down`, with the sysctls the kubelet changes. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

if __package__:  # imported as e2e.node (the benchmarks)
    from e2e import images
else:  # a script of e2e/, or imported from it: cluster.py, demo.py, the tests' nodekit
    import images  # type: ignore[import-not-found, no-redef]

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cache" / "node"
BIN_DIR = images.CACHE_ROOT / "bin"
KWOK_CLUSTER = REPO / ".cache" / "kwok" / "clusters" / "tenantry"
KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"

NODE_NAME = "tenantry-node"
NETNS = "tenantry-node"
OUTSIDE_NETNS = "tenantry-outside"
HOST_LINK, NODE_LINK = "tnode-host", "tnode-eth"
HOST_IP, NODE_IP = "10.250.0.1", "10.250.0.2"
OUTSIDE_LINK_NODE, OUTSIDE_LINK = "tnode-out", "tout-eth"
OUTSIDE_GATEWAY, OUTSIDE_IP = "10.250.1.1", "10.250.1.2"
# Stand-in ranges routed to the outside namespace: two documentation ranges (never 192.0.2.0/24,
# this machine's own network) and the cloud metadata address.
OUTSIDE_ROUTES = ("198.51.100.0/24", "203.0.113.0/24", "169.254.169.254/32")
POD_CIDR = "10.244.0.0/24"
BRIDGE = "tnode-cni0"
# kube-apiserver's default service range (kwokctl sets none): the `kubernetes` Service is 10.0.0.1.
SERVICE_CIDR = "10.0.0.0/24"
DNS_IP = "10.0.0.10"
HOST_CHAIN = "TENANTRY-NODE"
# Keeps the kwok-only tests' pods off the real node; `place real` lifts it for the e2e tests.
REAL_NODE_TAINT = "tenantry.dev/real-node"

VAR_ROOT = Path("/var/lib/tenantry-node")
RUN_ROOT = Path("/run/tenantry-node")
CONTAINERD_SOCKET = RUN_ROOT / "containerd.sock"
# What the kubelet, containerd and the CNI plugins write outside their roots whatever they are told.
FOREIGN_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
    Path("/var/lib/containerd"),
    Path("/opt/containerd"),
    Path("/run/mount"),
    Path("/var/lib/kube-router"),
)
# Global sysctls the kubelet sets on start (its "kernel defaults"); restored by `down`.
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
APT_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "ipset",
    "conntrack",
    "e2fsprogs",  # mkfs.ext4, for local volumes of a hard size (local_volume)
)
CNI_BIN = Path("/usr/lib/cni")
PROCESSES = ("kube-router", "kube-proxy", "kubelet", "containerd")


def log(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], check: bool = True, **kwargs: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"[node] failed ({result.returncode}): {' '.join(map(str, argv))}")
    return str(result.stdout)


def succeeds(argv: Sequence[str]) -> bool:
    """Whether ARGV exits 0 (its output discarded): for checks, not for work."""
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def in_node(argv: Sequence[str]) -> list[str]:
    """ARGV in the node's network namespace (and only that namespace)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def in_outside(argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{OUTSIDE_NETNS}", "--", *argv]


# --- can this machine run it? -------------------------------------------------------------------


def missing() -> list[str]:
    """What this machine lacks to run the node, each as a sentence; empty when it can."""
    if platform.system() != "Linux":
        return [f"Linux (this is {platform.system()})"]
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "root: the node creates network namespaces, mounts and cgroups (run `make test` as root)"
        )
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("a cgroup file system at /sys/fs/cgroup")
    for name in ("kubelet", "kube-proxy", "kube-router", "pause", "coredns"):
        if not (BIN_DIR / name).exists():
            problems.append(f"{BIN_DIR / name} (`make node-toolchain` builds it)")
    if shutil.which("apt-get") is None and shutil.which("containerd") is None:
        problems.append("containerd, runc and the CNI plugins (Debian packages; no apt-get here)")
    return problems


def install_packages() -> None:
    needed = images.missing_packages(APT_PACKAGES)
    if needed and shutil.which("apt-get") is not None:
        log(f"installing {' '.join(needed)} with apt-get")
        images.apt_install(needed)


# --- the network --------------------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def api_port() -> int:
    server = next(
        line.split("server:", 1)[1].strip()
        for line in KUBECONFIG.read_text().splitlines()
        if "server:" in line
    )
    port = urlparse(server).port
    if port is None:
        raise SystemExit(f"[node] no port in the kubeconfig's server {server}")
    return port


def network_up() -> None:
    """The node's and the outside's namespaces, their links and routes; the host's firewall chain.

    Called before the control plane starts, so that its certificate names the host's link address
    (kwokctl puts every address of the machine in it)."""
    if netns_exists(NETNS):
        return
    STATE.mkdir(parents=True, exist_ok=True)
    if not (STATE / "before.json").exists():
        record_foreign_state()
    log(f"network namespace {NETNS}: {HOST_IP} (host) <-> {NODE_IP} (node), pods {POD_CIDR}")
    for name in (NETNS, OUTSIDE_NETNS):
        run(["ip", "netns", "add", name])
    run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK])
    run(["ip", "link", "set", NODE_LINK, "netns", NETNS])
    run(["ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_LINK])
    run(["ip", "link", "set", HOST_LINK, "up"])
    node = ["ip", "-n", NETNS]
    run([*node, "addr", "add", f"{NODE_IP}/30", "dev", NODE_LINK])
    run([*node, "link", "set", NODE_LINK, "up"])
    run([*node, "link", "set", "lo", "up"])
    # The host reaches pods (the API server's webhooks and proxy) over the node's link.
    run(["ip", "route", "add", POD_CIDR, "via", NODE_IP, "dev", HOST_LINK])
    # The outside: one veth from the node; its addresses are claimed by the tests' listeners.
    run([*node, "link", "add", OUTSIDE_LINK_NODE, "type", "veth", "peer", "name", OUTSIDE_LINK])
    run([*node, "link", "set", OUTSIDE_LINK, "netns", OUTSIDE_NETNS])
    run([*node, "addr", "add", f"{OUTSIDE_GATEWAY}/30", "dev", OUTSIDE_LINK_NODE])
    run([*node, "link", "set", OUTSIDE_LINK_NODE, "up"])
    outside = ["ip", "-n", OUTSIDE_NETNS]
    run([*outside, "addr", "add", f"{OUTSIDE_IP}/30", "dev", OUTSIDE_LINK])
    run([*outside, "link", "set", OUTSIDE_LINK, "up"])
    run([*outside, "link", "set", "lo", "up"])
    for prefix in OUTSIDE_ROUTES:
        run([*node, "route", "add", prefix, "via", OUTSIDE_IP])
    # Replies from the outside go back to pods through the node; nothing else is routed there.
    run([*outside, "route", "add", POD_CIDR, "via", OUTSIDE_GATEWAY])
    # The node forwards between pods, the host link and the outside; bridged pod traffic passes
    # iptables (kube-proxy's and kube-router's rules), as on any Kubernetes node.
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1")):
        run(in_node(["sysctl", "-q", "-w", f"{key}={value}"]))
    host_firewall_up()


def host_firewall_rules(port: int | None) -> list[list[str]]:
    """The host's chain: the node may reach the API server and nothing else of the host, and the
    host forwards nothing from or to the node (it forwards for this VM: ip_forward is 1)."""
    rules = [
        ["-A", HOST_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
    ]
    if port is not None:
        rules.append(
            ["-A", HOST_CHAIN, "-i", HOST_LINK, "-p", "tcp", "--dport", str(port), "-j", "RETURN"]
        )
    rules.append(["-A", HOST_CHAIN, "-i", HOST_LINK, "-j", "DROP"])
    rules.append(["-A", HOST_CHAIN, "-o", HOST_LINK, "-j", "DROP"])
    if port is not None:
        # The API server listens on every address (it must on the host link): only loopback and
        # the node's link may reach it.
        rules.append(
            ["-A", HOST_CHAIN, "-p", "tcp", "--dport", str(port), "!", "-i", "lo", "-j", "DROP"]
        )
    return rules


def host_firewall_up(port: int | None = None) -> None:
    run(["iptables", "-w", "-N", HOST_CHAIN], check=False)
    run(["iptables", "-w", "-F", HOST_CHAIN])
    for rule in host_firewall_rules(port):
        run(["iptables", "-w", *rule])
    for hook in ("INPUT", "FORWARD"):
        if not succeeds(["iptables", "-w", "-C", hook, "-j", HOST_CHAIN]):
            run(["iptables", "-w", "-I", hook, "1", "-j", HOST_CHAIN])


def host_firewall_down() -> None:
    for hook in ("INPUT", "FORWARD"):
        while succeeds(["iptables", "-w", "-D", hook, "-j", HOST_CHAIN]):
            pass
    run(["iptables", "-w", "-F", HOST_CHAIN], check=False)
    run(["iptables", "-w", "-X", HOST_CHAIN], check=False)


def kwok_config_patch() -> str:
    """kwokctl settings the node needs, appended to e2e/kwok.yaml's componentsPatches."""
    pki = KWOK_CLUSTER / "pki"
    return f"""
  # The real node (e2e/node.py): pods reach the API server as the `kubernetes` Service, whose
  # endpoint is the host's link to the node; the host firewall admits only that port from it.
  - name: kube-apiserver
    extraArgs:
      - key: bind-address
        value: 0.0.0.0
      - key: advertise-address
        value: {HOST_IP}
      # The node's name does not resolve here.
      - key: kubelet-preferred-address-types
        value: InternalIP
      # The kubelet admits only clients with a certificate of the cluster's CA.
      - key: kubelet-client-certificate
        value: {pki / "admin.crt"}
      - key: kubelet-client-key
        value: {pki / "admin.key"}
  # kwok leaves the real node alone: it fakes only the nodes `kwokctl scale` made.
  - name: kwok-controller
    extraArgs:
      - key: manage-all-nodes
        value: "false"
      - key: manage-nodes-with-annotation-selector
        value: kwok.x-k8s.io/node=fake
"""


# --- configuration files ------------------------------------------------------------------------


def node_kubeconfig() -> str:
    pki = KWOK_CLUSTER / "pki"
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tenantry",
                    "cluster": {
                        "server": f"https://{HOST_IP}:{api_port()}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "node",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "node", "context": {"cluster": "tenantry", "user": "node"}}],
            "current-context": "node",
        },
        indent=2,
    )


def containerd_config(pause_ref: str) -> str:
    return f"""version = 2
root = "{VAR_ROOT / "containerd"}"
state = "{RUN_ROOT / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{RUN_ROOT / "containerd-ttrpc.sock"}"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{VAR_ROOT / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # Our own pause image, imported from an archive: there is no registry to pull one from.
  sandbox_image = "{pause_ref}"
  # CAP_SYS_RESOURCE is not in this VM's bounding set: without this runc fails every sandbox
  # ("failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{STATE / "cni"}"
"""


def cni_config() -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "tenantry-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Pods keep their own addresses on the way to the API server and the outside;
                    # both route replies back through the node.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(VAR_ROOT / "cni" / "networks"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config() -> str:
    pki = KWOK_CLUSTER / "pki"
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This kernel mounts cgroup v1; kubelet 1.35 refuses it unless told (KEP-5573).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [DNS_IP],
            "clusterDomain": "cluster.local",
            # Pods with dnsPolicy Default get no nameserver of this machine.
            "resolvConf": str(STATE / "resolv.conf"),
            "podLogsDir": str(VAR_ROOT / "pod-logs"),
            "failSwapOn": False,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            # The imported images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "maxPods": 60,
            # A fork bomb in one pod stops at its own limit, whatever a runtime's rlimits say.
            "podPidsLimit": 1024,
            "serializeImagePulls": False,
        },
        indent=2,
    )


def kube_proxy_config() -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "clientConnection": {"kubeconfig": str(STATE / "kubeconfig")},
            # The namespace's own conntrack table is sized by the host; do not touch sysctls.
            "conntrack": {"maxPerCore": 0},
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
        },
        indent=2,
    )


def write_configs(pause_ref: str) -> None:
    (STATE / "cni").mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    files = {
        "kubeconfig": node_kubeconfig(),
        "containerd.toml": containerd_config(pause_ref),
        "cni/10-tenantry-node.conflist": cni_config(),
        "kubelet.json": kubelet_config(),
        "kube-proxy.json": kube_proxy_config(),
        "resolv.conf": "# no nameserver: pods use the cluster DNS (dnsPolicy ClusterFirst)\n",
    }
    for name, text in files.items():
        (STATE / name).write_text(text)


# --- processes ----------------------------------------------------------------------------------


def start(name: str, argv: Sequence[str]) -> None:
    with (STATE / "logs" / f"{name}.log").open("ab") as output:
        process = subprocess.Popen(
            in_node(argv),
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (STATE / f"{name}.pid").write_text(str(process.pid))
    time.sleep(0.2)
    if process.poll() is not None:
        tail = (STATE / "logs" / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"[node] {name} exited at once ({process.returncode}):\n{tail}")


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"[node] timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    log(f"{what}: after {time.monotonic() - started:.1f}s")


def kubectl(*args: str, check: bool = True, stdin: str | None = None) -> str:
    return run(
        [str(BIN_DIR / "kubectl"), "--kubeconfig", str(KUBECONFIG), *args],
        check=check,
        input=stdin,
        timeout=120,
    )


def ctr(*args: str, check: bool = True) -> str:
    return run(["ctr", "--address", str(CONTAINERD_SOCKET), "-n", "k8s.io", *args], check=check)


def image_archives() -> dict[str, Path]:
    """Every image the node runs: the project's two (make images) and the node's own two."""
    archives: dict[str, Path] = {}
    for command in ("build", "node"):
        output = run([sys.executable, str(REPO / "e2e" / "images.py"), command])
        for line in output.splitlines():
            ref, path = line.split()
            archives[ref] = Path(path)
    return archives


def import_images(archives: dict[str, Path]) -> None:
    """Import each archive whose image containerd does not hold yet (same name, same digest)."""
    step = time.monotonic()
    held = {
        line.split()[0]: line.split()[2]
        for line in ctr("images", "list").splitlines()[1:]
        if len(line.split()) > 2
    }
    imported = 0
    for ref, archive in archives.items():
        digest = json.loads(archive.with_suffix(".json").read_text())["manifestDigest"]
        if held.get(ref) == digest:
            continue
        ctr("images", "import", str(archive))
        if ref not in ctr("images", "list", "--quiet").split():
            raise SystemExit(f"[node] importing {archive} did not give the image {ref}")
        imported += 1
    log(f"imported {imported} of {len(archives)} images in {time.monotonic() - step:.1f}s")


def node_ready() -> bool:
    if not KUBECONFIG.exists() or not (BIN_DIR / "kubectl").exists():
        return False
    out = kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
    if not out:
        return False
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def coredns_manifests(image: str) -> str:
    labels = {"k8s-app": "kube-dns"}
    corefile = (
        ".:53 {\n    errors\n    health 127.0.0.1:8080\n    ready :8181\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
        "        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }\n"
        "    cache 30\n    loop\n}\n"
    )
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "tenantry-node:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "tenantry-node:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "tenantry-node:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "nodeSelector": {"kubernetes.io/hostname": NODE_NAME},
                        "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists"}],
                        "securityContext": {
                            # Port 53 without root or a capability: tenant policies allow DNS to
                            # the pod's port 53, as they see it after service translation.
                            "sysctls": [
                                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}
                            ],
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "limits": {"memory": "128Mi"},
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
                ],
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})


def coredns_ready() -> bool:
    out = kubectl("get", "deployment", "coredns", "-n", "kube-system", "-o", "json", check=False)
    return bool(out) and json.loads(out).get("status", {}).get("readyReplicas", 0) >= 1


def record_foreign_state() -> None:
    """What exists before the node runs, so that `down` removes only what the node made."""
    before = {
        "paths": [str(path) for path in FOREIGN_PATHS if path.exists()],
        "netns": sorted(os.listdir("/run/netns")) if Path("/run/netns").exists() else [],
        # `ip netns add` makes /run/netns a mount point (a bind of itself) the first time.
        "netns_dir": Path("/run/netns").exists(),
        "netns_mount": "/run/netns" in mount_points(),
        "sysctls": {key: run(["sysctl", "-n", key]).strip() for key in SYSCTLS},
    }
    (STATE / "before.json").write_text(json.dumps(before, indent=2))


def up() -> None:
    started = time.monotonic()
    problems = missing()
    if problems:
        raise SystemExit(
            "[node] this machine cannot run the real node; it lacks:\n  " + "\n  ".join(problems)
        )
    if node_ready() and (STATE / "kubelet.pid").exists():
        log(f"reusing the running node {NODE_NAME}")
        # The sources may have changed since it started: its images follow them.
        import_images(image_archives())
        return
    install_packages()
    STATE.mkdir(parents=True, exist_ok=True)
    if not (STATE / "before.json").exists():
        record_foreign_state()
    network_up()
    host_firewall_up(api_port())
    archives = image_archives()
    pause_ref = next(ref for ref in archives if "/pause:" in ref)
    coredns_ref = next(ref for ref in archives if "/coredns:" in ref)
    write_configs(pause_ref)
    for directory in (VAR_ROOT, RUN_ROOT):
        directory.mkdir(parents=True, exist_ok=True)
    start("containerd", ["containerd", "--config", str(STATE / "containerd.toml")])
    wait_for(
        "containerd",
        lambda: succeeds(["ctr", "--address", str(CONTAINERD_SOCKET), "version"]),
        60,
    )
    import_images(archives)
    start(
        "kubelet",
        [
            str(BIN_DIR / "kubelet"),
            f"--config={STATE / 'kubelet.json'}",
            f"--kubeconfig={STATE / 'kubeconfig'}",
            f"--root-dir={VAR_ROOT / 'kubelet'}",
            f"--cert-dir={VAR_ROOT / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=tenantry.dev/node=real",
            f"--register-with-taints={REAL_NODE_TAINT}=true:NoSchedule",
            "--v=1",
        ],
    )
    wait_for(f"node {NODE_NAME} Ready", node_ready, 120)
    start(
        "kube-proxy",
        [str(BIN_DIR / "kube-proxy"), f"--config={STATE / 'kube-proxy.json'}", "--v=1"],
    )
    start("kube-router", kube_router_argv())
    kubectl("apply", "-f", "-", stdin=coredns_manifests(coredns_ref))
    wait_for("CoreDNS Ready", coredns_ready, 120)
    log(f"node {NODE_NAME} up in {time.monotonic() - started:.1f}s")


# --- stand-ins for the world outside the cluster -------------------------------------------------

# Answers every connection with one line naming its address, then closes it.
LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(128)
while True:
    connection, _ = server.accept()
    connection.sendall(b"stand-in " + sys.argv[1].encode() + b"\\n")
    connection.close()
"""


def claim(address: str) -> None:
    """Give the outside namespace ADDRESS, so that nothing else on any network can own it here."""
    if f" {address}/32 " not in run(["ip", "-n", OUTSIDE_NETNS, "-o", "addr", "show", "dev", "lo"]):
        run(["ip", "-n", OUTSIDE_NETNS, "addr", "add", f"{address}/32", "dev", "lo"])


def stand_in(address: str, port: int, argv: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
    """A listener on ADDRESS:PORT in the outside namespace (ARGV, or one that names itself).

    The address is claimed, and the listener answering, before this returns: no probe can
    ever reach past it."""
    claim(address)
    command = argv or [sys.executable, "-c", LISTENER, address, str(port)]
    # Its output goes to a file of its own: it outlives the command that started it (`make
    # demo`), and holding that command's stdout would keep a reader (`make demo | tail`) waiting.
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / f"stand-in-{address}-{port}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            in_outside(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while f"{address}:{port} " not in run(in_outside(["ss", "-Hltn"])):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(
                f"[node] the stand-in on {address}:{port} did not start; its output: {log}"
            )
        time.sleep(0.1)
    return process


# The model provider as the cluster sees one: acme's egress (examples/acme.yaml) allows
# 203.0.113.0/24 on 443, and nothing answers there but the scripted model (e2e/model_server.py).
MODEL = ("203.0.113.10", 443)


def scripted_model(log: Path) -> subprocess.Popen[bytes]:
    """The scripted model on MODEL in the outside namespace; it appends each request to LOG."""
    host, port = MODEL
    argv = [sys.executable, str(REPO / "e2e" / "model_server.py"), host, str(port), str(log)]
    return stand_in(host, port, argv)


# Run in a pod (python -c SCRIPT URL BODY SECONDS): POSTs a task to a tenant's runtime until it is
# answered. A name that does not resolve yet, a Service kube-proxy has not programmed yet
# ("Network is unreachable"), a connection refused or not taken within 0.5 s, or an error status
# is tried again 0.2 s later, for SECONDS at most: a connection attempt left to TCP's retries
# would wait 1, 2, then 4 s more when its first packets are dropped (they are, for a moment, on
# the real node). Prints the answer, when it came (a pod's clock is this machine's), how long the
# answered request took, and the failed attempts by error: how many, how long in all.
TASK_UNTIL_ANSWERED = """
import http.client, json, sys, time, urllib.parse
url, body = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2].encode()
deadline, failures = time.time() + float(sys.argv[3]), {}
while True:
    began = time.time()
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=0.5)
    try:
        connection.connect()
        connection.sock.settimeout(120)
        connection.request("POST", url.path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status == 200:
            answer = json.load(response)
            break
        error = f"status {response.status}"
    except OSError as exception:
        error = str(exception)
    finally:
        connection.close()
    failed = failures.setdefault(error, [0, 0.0])
    failed[0] += 1
    failed[1] += time.time() - began
    if time.time() > deadline:
        sys.exit(f"no answer from {sys.argv[1]}: {failures}")
    time.sleep(0.2)
answered = time.time()
print(json.dumps({"answered_at": answered, "request_seconds": answered - began,
                  "failures": failures, "answer": answer}))
"""


# A pod that listens on 8080 and answers "hello": the demo's gateway, the tests' gateway and
# outsider (probe sources and targets). The runtime image has the Python it needs.
LISTENER_POD_SCRIPT = (
    "import socket\ns = socket.socket()\ns.bind(('', 8080))\ns.listen(64)\n"
    "while True:\n    c, _ = s.accept()\n    c.sendall(b'hello')\n    c.close()\n"
)


def listener_pod(
    namespace: str, name: str, labels: dict[str, str], image: str
) -> list[dict[str, object]]:
    """A namespace (with LABELS) and one restricted, token-less pod in it listening on 8080."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": name,
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", LISTENER_POD_SCRIPT],
                        "ports": [{"containerPort": 8080}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        },
    ]


# --- down ---------------------------------------------------------------------------------------


def kube_router_argv() -> list[str]:
    """The NetworkPolicy enforcer alone: no routing, no service proxy (kube-proxy's job), no CNI
    configuration (the bridge's)."""
    return [
        str(BIN_DIR / "kube-router"),
        f"--kubeconfig={STATE / 'kubeconfig'}",
        f"--hostname-override={NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        "--metrics-port=0",
        "--health-port=20244",
        "--v=1",
    ]


def kill_enforcer() -> None:
    """SIGKILL kube-router, as a crash would (a fault for the tests); its rules stay behind."""
    pid_file = STATE / "kube-router.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    pid_file.unlink()


def start_enforcer() -> None:
    start("kube-router", kube_router_argv())


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pid(pid: int, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def node_processes() -> Iterator[int]:
    """Every process whose network namespace is the node's or the outside's (pods included)."""
    targets = set()
    for name in (NETNS, OUTSIDE_NETNS):
        with contextlib.suppress(OSError):
            targets.add(os.stat(f"/run/netns/{name}").st_ino)
    if not targets:
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino in targets:
                    yield int(entry.name)


def kubepods_processes() -> Iterator[int]:
    """Every process in the kubelet's cgroups: pods sit in network namespaces of their own."""
    for tree in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for procs in tree.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                yield from (int(line) for line in procs.read_text().split())


def shim_processes() -> Iterator[int]:
    needle = str(CONTAINERD_SOCKET).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    yield int(entry.name)


def kill_all(pids: Callable[[], Iterator[int]], what: str) -> None:
    for _ in range(50):
        found = [pid for pid in pids() if pid != os.getpid()]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise SystemExit(f"[node] {what} survive SIGKILL: {list(pids())}")


def mount_points() -> list[str]:
    return [
        line.split()[4].replace("\\040", " ")
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]


def our_mounts() -> list[str]:
    roots = (str(VAR_ROOT), str(RUN_ROOT), "/run/netns/cni-", "/var/run/netns/cni-")
    return [point for point in mount_points() if point.startswith(roots)]


def unmount_all() -> None:
    for _ in range(5):
        mounts = our_mounts()
        if not mounts:
            return
        for point in reversed(mounts):
            subprocess.run(["umount", point], capture_output=True, check=False)
    for point in reversed(our_mounts()):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroups() -> None:
    for tree in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for directory in sorted(
            (p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            tree.rmdir()


def stop_processes() -> None:
    """The node's programs, then every container process, the shims that watched them and
    containerd; then anything still in the node's network namespaces."""
    for name in PROCESSES[:-1]:
        pid_file = STATE / f"{name}.pid"
        if pid_file.exists():
            stop_pid(int(pid_file.read_text()))
            pid_file.unlink()
    kill_all(kubepods_processes, "pod processes")
    kill_all(shim_processes, "containerd shims")
    pid_file = STATE / "containerd.pid"
    if pid_file.exists():
        stop_pid(int(pid_file.read_text()))
        pid_file.unlink()
    kill_all(node_processes, "processes in the node's network namespaces")


def remove_namespaces(before: dict[str, Any]) -> None:
    """Pod namespaces containerd made, then the node's and the outside's (with their links,
    routes, iptables rules and ipsets); the host's end of the node's link and its route go with
    them. Then the host's firewall chain."""
    existing = sorted(os.listdir("/run/netns")) if Path("/run/netns").exists() else []
    for entry in existing:
        if entry.startswith("cni-") and entry not in before.get("netns", []):
            subprocess.run(["ip", "netns", "delete", entry], capture_output=True, check=False)
            Path(f"/run/netns/{entry}").unlink(missing_ok=True)
    for name in (NETNS, OUTSIDE_NETNS):
        if netns_exists(name):
            run(["ip", "netns", "delete", name])
    run(["ip", "link", "delete", HOST_LINK], check=False)
    host_firewall_down()
    netns_dir = Path("/run/netns")
    if netns_dir.exists() and not os.listdir(netns_dir):
        if not before.get("netns_mount", False) and str(netns_dir) in mount_points():
            subprocess.run(["umount", str(netns_dir)], capture_output=True, check=False)
        if not before.get("netns_dir", False):
            with contextlib.suppress(OSError):
                netns_dir.rmdir()


def remove_files(before: dict[str, Any]) -> None:
    """Cgroups, sysctls, and every path the node made outside and inside its roots."""
    remove_cgroups()
    for key, value in before.get("sysctls", {}).items():
        run(["sysctl", "-q", "-w", f"{key}={value}"], check=False)
    for path in FOREIGN_PATHS:
        if str(path) not in before.get("paths", []) and path.exists():
            shutil.rmtree(path, ignore_errors=True)
    for root in (VAR_ROOT, RUN_ROOT):
        shutil.rmtree(root, ignore_errors=True)


# --- local volumes -------------------------------------------------------------------------------

VOLUMES_DIR = VAR_ROOT / "volumes"


def local_volume(name: str, size_mib: int) -> Path:
    """A directory for a `local` PersistentVolume that is bounded for real: an ext4 file system
    of SIZE_MIB in a file, loop-mounted under the node's root (so `down` unmounts it, the loop
    device goes with the mount, and the file with the root). A provisioner that hands out
    directories of the host's disk (local-path) bounds nothing: a claim's size is a label there."""
    image, mount_point = VOLUMES_DIR / f"{name}.img", VOLUMES_DIR / name
    if str(mount_point) in mount_points():
        return mount_point
    mount_point.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as stream:
        stream.truncate(size_mib * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
    run(["mount", "-o", "loop", str(image), str(mount_point)])
    return mount_point


def local_volume_down(name: str) -> None:
    mount_point = VOLUMES_DIR / name
    if str(mount_point) in mount_points():
        run(["umount", str(mount_point)])
    (VOLUMES_DIR / f"{name}.img").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mount_point.rmdir()


def our_loop_devices() -> list[str]:
    """Loop devices backed by a file under the node's roots."""
    if shutil.which("losetup") is None:
        return []
    listing = json.loads(run(["losetup", "--list", "--json"], check=False) or '{"loopdevices": []}')
    return [
        device["name"]
        for device in listing.get("loopdevices", [])
        if str(device.get("back-file") or "").startswith(str(VAR_ROOT))
    ]


def leftovers() -> list[str]:
    """Whatever of the node is still on this machine after `down`: each is a bug to fix."""
    left = [f"mount {point}" for point in our_mounts()]
    left += [f"loop device {device}" for device in our_loop_devices()]
    left += [f"network namespace {name}" for name in (NETNS, OUTSIDE_NETNS) if netns_exists(name)]
    if succeeds(["ip", "link", "show", HOST_LINK]):
        left.append(f"link {HOST_LINK}")
    if succeeds(["iptables", "-w", "-S", HOST_CHAIN]):
        left.append(f"iptables chain {HOST_CHAIN}")
    left += [f"cgroup {tree}" for tree in Path("/sys/fs/cgroup").glob("*/kubepods")]
    left += [f"process {pid}" for pid in shim_processes() if pid != os.getpid()]
    left += [f"path {root}" for root in (VAR_ROOT, RUN_ROOT) if root.exists()]
    return left


def down(quiet: bool = False) -> None:
    before_file = STATE / "before.json"
    if not before_file.exists() and not netns_exists(NETNS):
        if not quiet:
            log("no real node: nothing to stop")
        return
    before = json.loads(before_file.read_text()) if before_file.exists() else {}
    stop_processes()
    unmount_all()
    remove_namespaces(before)
    remove_files(before)
    for name in PROCESSES:
        (STATE / f"{name}.pid").unlink(missing_ok=True)
    before_file.unlink(missing_ok=True)
    left = leftovers()
    if left:
        raise SystemExit("[node] left behind:\n  " + "\n  ".join(left))
    if not quiet:
        log(
            "node stopped; its namespaces, links, firewall chain, mounts, cgroups and files are gone"
        )


def place(where: str) -> None:
    """Send new pods to the real node alone (`real`) or to the kwok nodes alone (`kwok`)."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    for node in nodes:
        name = node["metadata"]["name"]
        if name == NODE_NAME:
            if where == "real":
                kubectl("taint", "node", name, f"{REAL_NODE_TAINT}-", check=False)
            else:
                kubectl("taint", "node", name, f"{REAL_NODE_TAINT}=true:NoSchedule", "--overwrite")
        else:
            kubectl("cordon" if where == "real" else "uncordon", name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["check", "up", "down", "status", "place"])
    parser.add_argument("where", nargs="?", choices=["real", "kwok"])
    arguments = parser.parse_args()
    if arguments.command == "check":
        problems = missing()
        for problem in problems:
            print(f"missing: {problem}")
        sys.exit(1 if problems else 0)
    elif arguments.command == "up":
        up()
    elif arguments.command == "down":
        down()
    elif arguments.command == "place":
        if arguments.where is None:
            parser.error("place needs `real` or `kwok`")
        place(arguments.where)
    else:
        sys.exit(0 if node_ready() else 1)


if __name__ == "__main__":
    main()
