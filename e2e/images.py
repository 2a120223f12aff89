"""Build the project's two container images with no registry: the tenant runtime and the operator.

    python3 e2e/images.py [build]   # build what is missing (else say "cached"); prints REF ARCHIVE
    python3 e2e/images.py paths     # print REF ARCHIVE for the current sources; exit 1 if unbuilt
    python3 e2e/images.py verify    # run the built images with buildah and runc (no cluster)
    python3 e2e/images.py node      # the real node's pause and CoreDNS images (from the toolchain)

No registry is reachable here, so nothing starts FROM python:3.11-slim. The base is made from
Debian packages with mmdebstrap (bookworm, Python 3.11 with venv and pip, `python` on PATH,
ca-certificates; nothing else) and given to buildah as `localhost/tenantry/python:3.11-bookworm`.
runtime_image/Dockerfile and operator_image/Dockerfile are then built unchanged with
`--build-arg PYTHON_IMAGE=<that base>`; their default stays python:3.11-slim for a user with a
registry. The builds' pip fetches from PyPI (reachable), pinned by the files they COPY.

Each image (the base too) is saved as an OCI archive in the per-user cache,
`${XDG_CACHE_HOME:-~/.cache}/tenantry/images/NAME-KEY.oci.tar`, KEY the sha256 of everything that
makes it: for the base, the mmdebstrap command line (suite, mirrors, package list, options) and
its image config; for each image, its Dockerfile and .dockerignore, every file its COPY lines
send (filtered as the .dockerignore filters them: install.sh, the pins, the sources), the base's
key and the build settings. A run with nothing changed only says "cached"; a fresh clone on
this machine finds the same archives. Each archive names its image as the kubelet will look it
up (docker.io/tenantry/runtime:0.1.0, from charts/tenantry), so `ctr -n k8s.io images import
ARCHIVE` keeps that name. The 3 most recently used archives of each image are kept.

Building needs root (buildah's storage is /var/lib/containers) and Debian's buildah, mmdebstrap
and runc: installed here with apt-get when missing. Only the standard library is used, so this
runs before any virtualenv exists. Nothing is left in buildah's storage afterwards: the images
live in the archives, and `verify` loads them again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The same per-user cache that e2e/toolchain/build.sh and e2e/cluster.py use.
CACHE_ROOT = Path(
    os.environ.get("TENANTRY_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tenantry"
)
IMAGES_DIR = CACHE_ROOT / "images"
KEEP_PER_IMAGE = 3

# runc is buildah's isolation here (and the real node's runtime under containerd). Without
# recommends: buildah's would add crun, netavark, aardvark-dns and fuse-overlayfs, none needed
# with overlay on ext4 and `--network host`.
APT_PACKAGES = ("buildah", "mmdebstrap", "runc")

# --- the base ------------------------------------------------------------------------------------

BASE_REF = "localhost/tenantry/python:3.11-bookworm"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What the Dockerfiles use of python:3.11-slim: `python3 -m venv` with pip in it (install.sh) and
# the CA bundle; `python` on PATH as there (the images' ENTRYPOINTs find their venv's first).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# The image config python:3.11-slim has that matters here.
BASE_CONFIG = {"env": ["LANG=C.UTF-8"], "cmd": ["python3"]}


def mmdebstrap_argv(output: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--mode=root",
        # The Essential:yes set (no apt: the images never install Debian packages) plus ours.
        "--variant=essential",
        f"--include={','.join(BASE_PACKAGES)}",
        # Merged /usr as bookworm has it, made by symlinks; otherwise init-system-helpers pulls in
        # the usrmerge package, and with it perl (50 MB).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        # The container runtime provides /dev.
        "--skip=output/dev",
        # As debian:bookworm-slim: no manuals, info pages, translations or docs but copyrights.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        # The runtime bind-mounts its own; these would be this machine's.
        '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
        SUITE,
        str(output),
        *MIRRORS,
    ]


def base_key() -> str:
    recipe = {"mmdebstrap": mmdebstrap_argv(Path("OUTPUT")), "config": BASE_CONFIG}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# --- the images ----------------------------------------------------------------------------------

# What shapes the images besides their inputs; part of every image's key.
BUILD_SETTINGS = {"format": "oci", "layers": False, "base": BASE_REF}


def buildah_build_argv(dockerfile: Path, iidfile: Path, pip_mounts: Sequence[str]) -> list[str]:
    return [
        "buildah",
        "build",
        "--quiet",
        # runc (Debian's buildah default and what FIELD-NOTES measured), not crun.
        "--isolation=oci",
        "--runtime=runc",
        # The RUN steps need the network for pip. The default, a private network, makes buildah set
        # up CNI's bridge plugin on the host: it left a `cni-podman0` bridge (10.88.0.1/16), CNI
        # chains in iptables' filter table and /var/lib/cni/networks/podman behind, which would
        # sit beside the real node's own CNI bridge and firewall rules. The host's network creates
        # nothing; a build step can reach only what this machine reaches anyway.
        "--network=host",
        # The base is local: never ask a registry (a missing base fails at once).
        "--pull=never",
        # No intermediate images, and no build container left behind even when a step fails.
        "--layers=false",
        "--rm",
        "--force-rm",
        "--format=oci",
        # No --timestamp (reproducible image ids): it also sets the mtime of every file in the
        # layers, and pip's .pyc files are checked against their source's mtime, so all of them
        # would be stale and recompiled at every start on the read-only root (checked: a pyc
        # recording 1795985565 beside its source at 0 with --timestamp 0).
        *pip_mounts,
        f"--build-arg=PYTHON_IMAGE={BASE_REF}",
        f"--file={dockerfile}",
        f"--ignorefile={dockerfile.with_name(dockerfile.name + '.dockerignore')}",
        f"--iidfile={iidfile}",
        str(REPO),
    ]


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    dockerfile: Path

    @property
    def ignorefile(self) -> Path:
        return self.dockerfile.with_name(self.dockerfile.name + ".dockerignore")


def normalized(ref: str) -> str:
    """The name the kubelet (and containerd's CRI) looks an image up by: tenantry/x -> docker.io/."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def chart_value(text: str, pattern: str, where: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"[images] cannot find {pattern!r} in {where}")
    return match.group(1)


def images() -> list[Image]:
    """The two images, named as the chart (and the operator's defaults) name them."""
    values = (REPO / "charts" / "tenantry" / "values.yaml").read_text()
    chart = (REPO / "charts" / "tenantry" / "Chart.yaml").read_text()
    runtime = chart_value(values, r"^\s+runtimeImage:\s*(\S+)", "values.yaml")
    sandbox = chart_value(values, r"^\s+sandboxImage:\s*(\S+)", "values.yaml")
    if sandbox != runtime:
        raise SystemExit(f"[images] the chart's sandboxImage {sandbox} is not {runtime}")
    repository = chart_value(
        values, r"^image:\n(?:[ #].*\n)*?\s+repository:\s*(\S+)", "values.yaml"
    )
    version = chart_value(chart, r"^appVersion:\s*\"?([^\"\s]+)", "Chart.yaml")
    return [
        Image("runtime", normalized(runtime), REPO / "runtime_image" / "Dockerfile"),
        Image(
            "operator",
            normalized(f"{repository}:{version}"),
            REPO / "operator_image" / "Dockerfile",
        ),
    ]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression for a slash-separated relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, glob_regex(line.lstrip("!").strip().strip("/"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern matches a path or a directory above it; the last match decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def copied_files(image: Image) -> list[Path]:
    """Every file of the build context that the Dockerfile's COPY lines send into a build."""
    text = re.sub(r"\\\n", " ", image.dockerfile.read_text())
    rules = ignore_rules(image.ignorefile)
    files: set[Path] = set()
    for line in re.findall(r"^\s*COPY\s+(.+)$", text, re.MULTILINE | re.IGNORECASE):
        words = line.split()
        if any(word.startswith("--from") for word in words):
            continue
        *sources, _destination = [word for word in words if not word.startswith("--")]
        for source in sources:
            if any(char in source for char in "*?["):
                raise SystemExit(f"[images] {image.dockerfile}: COPY {source}: globs are not keyed")
            top = REPO / source
            if not top.exists():
                raise SystemExit(f"[images] {image.dockerfile}: COPY {source}: no such path")
            candidates = (
                [top] if not top.is_dir() else [p for p in top.rglob("*") if not p.is_dir()]
            )
            files.update(
                p for p in candidates if not ignored(p.relative_to(REPO).as_posix(), rules)
            )
    return sorted(files)


def file_digest(path: Path) -> str:
    if path.is_symlink():
        return "symlink:" + os.readlink(path)
    mode = "x" if path.stat().st_mode & 0o111 else "-"
    return mode + hashlib.sha256(path.read_bytes()).hexdigest()


def image_key(image: Image, base: str) -> str:
    digest = hashlib.sha256()
    header = {"ref": image.ref, "base": base, "settings": BUILD_SETTINGS}
    digest.update(json.dumps(header, sort_keys=True).encode() + b"\n")
    for path in [image.dockerfile, image.ignorefile, *copied_files(image)]:
        digest.update(f"{path.relative_to(REPO).as_posix()}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


# --- the cache -----------------------------------------------------------------------------------


def archive_path(name: str, key: str) -> Path:
    return IMAGES_DIR / f"{name}-{key[:16]}.oci.tar"


def touch(path: Path) -> None:
    """Mark an archive as used, so that pruning keeps it."""
    for used in (path, path.with_suffix(".json")):
        if used.exists():
            used.touch()


def prune(name: str) -> None:
    archives = sorted(
        IMAGES_DIR.glob(f"{name}-*.oci.tar"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in archives[KEEP_PER_IMAGE:]:
        log(f"{name}: removing the old archive {old.name}")
        old.unlink()
        old.with_suffix(".json").unlink(missing_ok=True)


def cache_size() -> str:
    total = sum(p.stat().st_size for p in IMAGES_DIR.iterdir() if p.is_file())
    return f"{total / 2**20:.0f} MiB"


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One build at a time on this machine (two clones share the cache and buildah's storage)."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with (IMAGES_DIR / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another build holds the image cache's lock; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the machine ---------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a command and return its stdout; on failure, show the end of its output and stop."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"[images] failed ({result.returncode}): {' '.join(argv)}")
    return result.stdout


def missing_packages(packages: Sequence[str] = APT_PACKAGES) -> list[str]:
    """The Debian packages of PACKAGES that are not installed."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {
        line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")
    }
    return [package for package in packages if package not in installed]


def apt_install(packages: Sequence[str]) -> None:
    """Install PACKAGES with apt-get (root); waits for another apt-get holding dpkg's lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = "-oDPkg::Lock::Timeout=600"
    run(["apt-get", lock_wait, "update"], env=env)
    run(["apt-get", lock_wait, "install", "-y", "--no-install-recommends", *packages], env=env)
    still = missing_packages(packages)
    if still:
        raise SystemExit(f"apt-get did not install {', '.join(still)}")


def ensure_prerequisites() -> None:
    """Root, Linux, and Debian's buildah, mmdebstrap and runc (installed when missing)."""
    if platform.system() != "Linux":
        raise SystemExit(f"[images] building the images needs Linux; this is {platform.system()}")
    if os.geteuid() != 0:
        raise SystemExit(
            "[images] building the images needs root (mmdebstrap --mode=root, buildah's storage "
            "in /var/lib/containers); run `make images` as root"
        )
    missing = missing_packages()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(
            f"[images] needs the Debian packages {', '.join(missing)} and this machine has no "
            "apt-get (Debian or Ubuntu expected)"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    apt_install(missing)


def pip_mounts(workdir: Path) -> list[str]:
    """What pip in a build step needs to trust and find PyPI as this machine does.

    This machine reaches PyPI through a TLS proxy whose CA only the host trusts: without it every
    build step fails with `CERTIFICATE_VERIFY_FAILED ... self-signed certificate in certificate
    chain`. The host's CA bundle is bind-mounted over the build container's, read-only, and a pip
    config names it (with the host's index and timeout settings, when set). Mounts exist only
    while a RUN step runs, and only /opt/... leaves the build stage, so nothing of it reaches an
    image; it changes how pip fetches, never what (the pins), so it is not part of any key.
    """
    bundle = next(
        (
            Path(candidate)
            for candidate in (
                os.environ.get("PIP_CERT"),
                os.environ.get("SSL_CERT_FILE"),
                "/etc/ssl/certs/ca-certificates.crt",
            )
            if candidate and Path(candidate).is_file()
        ),
        None,
    )
    lines = ["[global]"]
    mounts = []
    if bundle is not None:
        lines.append("cert = /etc/ssl/certs/ca-certificates.crt")
        mounts.append(f"--volume={bundle.resolve()}:/etc/ssl/certs/ca-certificates.crt:ro")
    for variable, option in (
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_TRUSTED_HOST", "trusted-host"),
        ("PIP_DEFAULT_TIMEOUT", "timeout"),
    ):
        if os.environ.get(variable):
            lines.append(f"{option} = {os.environ[variable]}")
    config = workdir / "pip.conf"
    config.write_text("\n".join(lines) + "\n")
    mounts.append(f"--volume={config}:/etc/pip.conf:ro")
    return mounts


@contextlib.contextmanager
def buildah_session() -> Iterator[Path]:
    """A scratch directory for buildah's big temporary files; afterwards, nothing of ours is left.

    Build containers that appear meanwhile are removed even when a build is interrupted, and so is
    the /etc/cni/net.d/cni.lock that buildah's network setup creates (even with --network host) on
    a machine that had no /etc/cni.
    """
    had_cni = Path("/etc/cni").exists()
    # Scratch directories of a run that was killed (this one holds the lock: no other is running).
    for stale in [*IMAGES_DIR.glob(".work-*"), *IMAGES_DIR.glob(".runc-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    before = set(run(["buildah", "containers", "--quiet"]).split())
    workdir = Path(tempfile.mkdtemp(prefix=".work-", dir=IMAGES_DIR))
    os.environ["TMPDIR"] = str(workdir)
    try:
        yield workdir
    finally:
        os.environ.pop("TMPDIR")
        after = set(run(["buildah", "containers", "--quiet"]).split())
        for container in after - before:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        if not had_cni:
            Path("/etc/cni/net.d/cni.lock").unlink(missing_ok=True)
            for directory in ("/etc/cni/net.d", "/etc/cni"):
                with contextlib.suppress(OSError):
                    Path(directory).rmdir()


def save(image_id: str, ref: str, archive: Path, metadata: Mapping[str, object]) -> None:
    """Write IMAGE as an OCI archive naming REF, atomically, with a JSON note beside it."""
    partial = archive.with_name(archive.name + ".partial")
    digest = archive.with_name(archive.name + ".digest")
    try:
        run(
            [
                "buildah",
                "push",
                "--quiet",
                "--format=oci",
                f"--digestfile={digest}",
                image_id,
                f"oci-archive:{partial}:{ref}",
            ]
        )
        metadata = {
            **metadata,
            "ref": ref,
            "imageId": image_id,
            "manifestDigest": digest.read_text().strip(),
            "archiveBytes": partial.stat().st_size,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        archive.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
        digest.unlink(missing_ok=True)


def make_base(key: str, archive: Path, workdir: Path) -> str:
    """mmdebstrap a root file system, commit it as BASE_REF, save it; returns the image id."""
    started = time.monotonic()
    tarball = workdir / "base.tar"
    # Reproducible (file times, no logs or machine ids): the same packages give the same layer.
    run(mmdebstrap_argv(tarball), env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    log(f"base: mmdebstrap {SUITE} took {time.monotonic() - started:.0f}s")
    container = run(["buildah", "from", "--quiet", "scratch"]).strip()
    try:
        run(["buildah", "add", "--quiet", container, str(tarball), "/"])
        config = ["--cmd", json.dumps(BASE_CONFIG["cmd"])]
        for variable in BASE_CONFIG["env"]:
            config += ["--env", variable]
        run(["buildah", "config", *config, container])
        image_id = run(["buildah", "commit", "--quiet", "--format=oci", container, BASE_REF])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    tarball.unlink()
    image_id = image_id.strip()
    save(image_id, BASE_REF, archive, {"key": key, "packages": list(BASE_PACKAGES)})
    log(f"base: made in {time.monotonic() - started:.0f}s -> {archive}")
    return image_id


def load(archive: Path, ref: str | None = None) -> str:
    """Put an archive's image into buildah's storage (named REF when given); returns its id."""
    image_id = run(["buildah", "pull", "--quiet", "--policy=always", f"oci-archive:{archive}"])
    image_id = image_id.strip().splitlines()[-1]
    if ref is not None:
        run(["buildah", "tag", image_id, ref])
    return image_id


def remove_image(image_id: str) -> None:
    subprocess.run(["buildah", "rmi", image_id], capture_output=True, check=False)


# --- the node's own images ------------------------------------------------------------------------

# The real node (e2e/node.py) runs two programs of the toolchain as containers: our pause as
# containerd's sandbox image, CoreDNS as the cluster DNS pod (tenant policies allow DNS to pods
# labelled k8s-app=kube-dns in kube-system, so it must be a pod). Each image is one static binary
# on an empty root, run as a numeric non-root user.
NODE_IMAGES = {
    "pause": ("PAUSE_VERSION", ["/pause"]),
    "coredns": ("COREDNS_VERSION", ["/coredns"]),
}


def toolchain_versions() -> dict[str, str]:
    """e2e/toolchain/versions.env as a dict (cluster.py reads it through here too)."""
    lines = (REPO / "e2e" / "toolchain" / "versions.env").read_text().splitlines()
    pairs = (
        line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def node_image_plan() -> list[tuple[str, str, Path, Path]]:
    """(name, ref, binary, archive) of each node image; the key is the binary's digest."""
    versions = toolchain_versions()
    plan = []
    for name, (version_key, entrypoint) in NODE_IMAGES.items():
        ref = f"localhost/tenantry/{name}:{versions[version_key]}"
        binary = CACHE_ROOT / "bin" / name
        if not binary.exists():
            raise SystemExit(f"[images] {binary} is missing: run `make node-toolchain` first")
        recipe = {"ref": ref, "entrypoint": entrypoint, "binary": file_digest(binary)}
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        plan.append((name, ref, binary, archive_path(name, key)))
    return plan


def build_node_images() -> dict[str, Path]:
    plan = node_image_plan()
    todo = [item for item in plan if not item[3].exists()]
    for name, _ref, _binary, archive in plan:
        if archive.exists():
            touch(archive)
            log(f"{name}: cached ({archive.name})")
    if todo:
        ensure_prerequisites()
        with cache_lock(), buildah_session():
            for name, ref, binary, archive in todo:
                started = time.monotonic()
                container = run(["buildah", "from", "--quiet", "scratch"]).strip()
                try:
                    target = NODE_IMAGES[name][1][0]
                    run(
                        [
                            "buildah",
                            "copy",
                            "--quiet",
                            "--chmod=0555",
                            container,
                            str(binary),
                            target,
                        ]
                    )
                    entrypoint = json.dumps(NODE_IMAGES[name][1])
                    run(
                        [
                            "buildah",
                            "config",
                            "--entrypoint",
                            entrypoint,
                            "--user",
                            "65532:65532",
                            container,
                        ]
                    )
                    image_id = run(["buildah", "commit", "--quiet", "--format=oci", container, ref])
                finally:
                    subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
                save(image_id.strip(), ref, archive, {"binary": file_digest(binary)})
                remove_image(image_id.strip())
                prune(name)
                log(f"{name}: built in {time.monotonic() - started:.1f}s -> {archive}")
    return {ref: archive for _name, ref, _binary, archive in plan}


# --- commands ------------------------------------------------------------------------------------


def plan() -> tuple[tuple[str, Path], list[tuple[Image, str, Path]]]:
    base = base_key()
    targets = []
    for image in images():
        key = image_key(image, base)
        targets.append((image, key, archive_path(image.name, key)))
    return (base, archive_path("base", base)), targets


def build() -> dict[str, Path]:
    (base, base_archive), targets = plan()
    todo = [(image, key, archive) for image, key, archive in targets if not archive.exists()]
    for image, _key, archive in targets:
        if archive.exists():
            touch(archive)
            log(f"{image.name}: cached ({archive.name})")
    if todo:
        ensure_prerequisites()
        started = time.monotonic()
        with cache_lock(), buildah_session() as workdir:
            made: list[str] = []
            try:
                if base_archive.exists():
                    touch(base_archive)
                    log(f"base: cached ({base_archive.name}); loading it into buildah")
                    made.append(load(base_archive, BASE_REF))
                else:
                    log(f"base: making {BASE_REF} from Debian {SUITE} with mmdebstrap")
                    made.append(make_base(base, base_archive, workdir))
                    prune("base")
                mounts = pip_mounts(workdir)
                for image, key, archive in todo:
                    if archive.exists():  # built by another run while this one waited
                        continue
                    step = time.monotonic()
                    log(
                        f"{image.name}: building {image.dockerfile.relative_to(REPO)} as {image.ref}"
                    )
                    iidfile = workdir / f"{image.name}.iid"
                    run(buildah_build_argv(image.dockerfile, iidfile, mounts))
                    image_id = iidfile.read_text().strip().removeprefix("sha256:")
                    made.append(image_id)
                    note = {
                        "key": key,
                        "base": base,
                        "dockerfile": str(image.dockerfile.relative_to(REPO)),
                    }
                    save(image_id, image.ref, archive, note)
                    prune(image.name)
                    log(f"{image.name}: built in {time.monotonic() - step:.0f}s -> {archive}")
            finally:
                for image_id in reversed(made):
                    remove_image(image_id)
        log(
            f"built in {time.monotonic() - started:.0f}s; the cache holds {cache_size()} ({IMAGES_DIR})"
        )
    return {image.ref: archive for image, _key, archive in targets}


def paths() -> dict[str, Path]:
    _base, targets = plan()
    missing = [image.name for image, _key, archive in targets if not archive.exists()]
    if missing:
        raise SystemExit(
            f"[images] not built for these sources: {', '.join(missing)} (make images)"
        )
    return {image.ref: archive for image, _key, archive in targets}


# --- verify --------------------------------------------------------------------------------------


def image_config(image_id: str) -> dict[str, Any]:
    inspected = json.loads(run(["buildah", "inspect", "--type=image", image_id]))
    config: dict[str, Any] = inspected["OCIv1"]["config"]
    return config


def buildah_run(
    container: str, argv: Sequence[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """ARGV in the container as the image's USER, with no network."""
    result = subprocess.run(
        ["buildah", "run", "--network=none", container, "--", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"[images] failed in the container: {' '.join(argv)}")
    return result


def expect(condition: bool, what: str, detail: str = "") -> None:
    if not condition:
        raise SystemExit(f"[images] verify: {what} FAILED\n{detail}")
    log(f"verify: {what}: ok")


PROBE = """
import sys, time, urllib.error, urllib.request
url, token, body = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(url, data=body.encode() or None, method="POST" if body else "GET")
request.add_header("Content-Type", "application/json")
if token:
    request.add_header("Authorization", "Bearer " + token)
for _ in range(150):
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
            sys.exit(0)
    except urllib.error.HTTPError as error:
        sys.exit(f"{url}: {error.code} {error.read().decode()}")
    except OSError:
        time.sleep(0.2)
sys.exit("no answer from " + url)
"""


@dataclass
class ReadOnlyRun:
    """A process started from an image's root file system, read-only, as `uid` (no passwd entry),
    with no capabilities and only loopback, and one HTTP request sent to it from inside."""

    args: list[str]
    uid: int
    env: list[str]
    tmpfs: list[str]
    files: dict[str, str]
    url: str
    token: str = ""
    body: str = ""


def runc_readonly(rootfs: str, config: dict[str, Any], spec_run: ReadOnlyRun) -> Any:
    """Runs `spec_run` with runc (state in a scratch directory) and returns the JSON answer."""
    scratch = Path(tempfile.mkdtemp(prefix=".runc-", dir=IMAGES_DIR))
    name = f"tenantry-verify-{os.getpid()}-{spec_run.uid}"
    runc = ["runc", "--root", str(scratch / "state")]
    try:
        run(["runc", "spec", "--bundle", str(scratch)])
        spec = json.loads((scratch / "config.json").read_text())
        spec["root"] = {"path": rootfs, "readonly": True}
        spec["process"].update(
            terminal=False,
            user={"uid": spec_run.uid, "gid": spec_run.uid},
            args=spec_run.args,
            env=[*config.get("Env", []), *spec_run.env],
            cwd=config.get("WorkingDir") or "/",
            capabilities={kind: [] for kind in ("bounding", "effective", "permitted")},
        )
        for directory in spec_run.tmpfs:
            options = ["nosuid", "nodev", "mode=1777"]
            spec["mounts"].append(
                {"destination": directory, "type": "tmpfs", "source": "tmpfs", "options": options}
            )
        for destination, content in spec_run.files.items():
            source = scratch / Path(destination).name
            source.write_text(content)
            source.chmod(0o444)
            options = ["bind", "ro"]
            spec["mounts"].append(
                {
                    "destination": destination,
                    "type": "bind",
                    "source": str(source),
                    "options": options,
                }
            )
        (scratch / "config.json").write_text(json.dumps(spec))
        with (scratch / "output.log").open("w") as output:
            subprocess.run(
                [*runc, "run", "--detach", "--bundle", str(scratch), name],
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                check=True,
            )
        probe = subprocess.run(
            [
                *runc,
                "exec",
                name,
                "python",
                "-c",
                PROBE,
                spec_run.url,
                spec_run.token,
                spec_run.body,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if probe.returncode != 0:
            logs = (scratch / "output.log").read_text()
            raise SystemExit(
                f"[images] verify: no answer from {spec_run.args}:\n{probe.stderr}{logs}"
            )
        return json.loads(probe.stdout)
    finally:
        subprocess.run([*runc, "kill", name, "KILL"], capture_output=True, check=False)
        subprocess.run([*runc, "delete", "--force", name], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def verify_runtime(container: str, config: dict[str, Any]) -> None:
    entrypoint = [str(word) for word in config["Entrypoint"]]
    help_text = buildah_run(container, [*entrypoint, "--help"]).stdout
    expect(
        "{serve,sandbox}" in help_text, "runtime: ENTRYPOINT --help as the image's user", help_text
    )
    refused = buildah_run(container, [*entrypoint, "serve"], check=False)
    expect(
        refused.returncode == 2 and "TENANTRY_TENANT is not set" in refused.stderr,
        "runtime: `serve` without its tenant refuses to start (status 2)",
        refused.stderr,
    )
    rootfs = run(["buildah", "mount", container]).strip()
    try:
        token = "verify-token"  # noqa: S105 - a token of this check only
        code = (
            "import os, pathlib\n"
            "pathlib.Path('f').write_text('ok')\n"
            # The server's environment holds the token: closed to its runs (not dumpable).
            "try:\n"
            "    environ = 'open' if open(f'/proc/{os.getppid()}/environ').read() else 'empty'\n"
            "except PermissionError:\n"
            "    environ = 'closed'\n"
            # The image's /tmp is world-writable: only a read-only root makes it not so.
            "print(os.getuid(), os.access('/tmp', os.W_OK), pathlib.Path('f').read_text(), environ)\n"
        )
        # As rendered: a writable /workspace, no writable /tmp (docs/runtime-contract.md).
        answer = runc_readonly(
            rootfs,
            config,
            ReadOnlyRun(
                args=[*entrypoint, "sandbox"],
                uid=4242,
                env=["TENANTRY_TENANT=acme", f"TENANTRY_SANDBOX_TOKEN={token}"],
                tmpfs=["/workspace"],
                files={},
                url="http://127.0.0.1:8080/v1/execute",
                token=token,
                body=json.dumps({"language": "python", "code": code}),
            ),
        )
        expect(
            answer.get("exitCode") == 0 and answer.get("output") == "4242 False ok closed\n",
            "runtime: `sandbox` as uid 4242 on a read-only root runs code in its workspace, "
            "and the server's environment (its token) is closed to it",
            json.dumps(answer),
        )
        runtime_json = {"tenant": "acme", "topicTypes": ["default"], "agents": [], "model": None}
        answer = runc_readonly(
            rootfs,
            config,
            ReadOnlyRun(
                args=[*entrypoint, "serve"],
                uid=4243,
                env=["TENANTRY_TENANT=acme", "TENANTRY_CONFIG=/etc/tenantry/runtime.json"],
                tmpfs=["/tmp"],  # noqa: S108 (the pod's emptyDir, inside the container)
                files={"/etc/tenantry/runtime.json": json.dumps(runtime_json)},
                url="http://127.0.0.1:8080/healthz",
            ),
        )
        expect(
            answer.get("status") == "ok",
            "runtime: `serve` as uid 4243 on a read-only root answers /healthz",
            json.dumps(answer),
        )
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)


def verify_operator(container: str, config: dict[str, Any]) -> None:
    entrypoint = [str(word) for word in config["Entrypoint"]]
    expect(
        entrypoint == ["tenantry", "run"], "operator: ENTRYPOINT is `tenantry run`", str(entrypoint)
    )
    help_text = buildah_run(container, ["tenantry", "--help"]).stdout
    expect(
        "{run,crd,render,audit}" in help_text,
        "operator: `tenantry --help` as the image's user",
        help_text,
    )
    run_help = buildah_run(container, [*entrypoint, "--help"]).stdout
    expect("usage: tenantry run" in run_help, "operator: ENTRYPOINT --help", run_help)
    crd = buildah_run(container, ["tenantry", "crd"]).stdout
    expect(
        crd == (REPO / "crds" / "agenttenants.tenantry.dev.yaml").read_text(),
        "operator: `tenantry crd` prints crds/agenttenants.tenantry.dev.yaml",
    )
    pip = buildah_run(container, ["pip", "list", "--format=freeze"]).stdout
    names = {line.split("==")[0].lower() for line in pip.split()}
    expect(
        "tenantry" in names and not names & {"setuptools", "wheel"}, "operator: no build tools", pip
    )


def verify() -> None:
    ensure_prerequisites()
    archives = paths()
    with cache_lock(), buildah_session():
        for image in images():
            archive = archives[image.ref]
            log(f"verify: {image.name} from {archive.name}")
            image_id = load(archive)
            container = ""
            try:
                container = run(["buildah", "from", "--quiet", "--pull=never", image_id]).strip()
                config = image_config(image_id)
                uid = buildah_run(
                    container, ["python", "-c", "import os; print(os.getuid(), os.getgid())"]
                )
                expect(
                    uid.stdout.split() == ["65532", "65532"] == str(config.get("User")).split(":"),
                    f"{image.name}: runs as the numeric non-root USER 65532:65532",
                    uid.stdout + str(config.get("User")),
                )
                if image.name == "runtime":
                    verify_runtime(container, config)
                else:
                    verify_operator(container, config)
            finally:
                if container:
                    subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
                remove_image(image_id)
    log("verify: both images passed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command", nargs="?", default="build", choices=["build", "paths", "verify", "node"]
    )
    command = parser.parse_args().command
    if command == "verify":
        verify()
        return
    builders = {"build": build, "paths": paths, "node": build_node_images}
    built = builders[command]()
    for ref, archive in built.items():
        print(ref, archive)


if __name__ == "__main__":
    main()
