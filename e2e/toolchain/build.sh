#!/usr/bin/env bash
# Build (or reuse) the local control plane and the chart tools from Go modules, and print the
# directory of the binaries.
#
#   build.sh              everything
#   build.sh cluster      etcd, Kubernetes and kwok: what e2e/cluster.py needs
#   build.sh tools        helm, kubeconform, kube-score, and the kstatus and vapcheck programs
#                         (tests/chart)
#   build.sh node         what a real node runs: kubelet and kube-proxy (the control plane's
#                         version), CoreDNS, kube-router and our pause program. Not part of
#                         "everything": only asked for by name (make node-toolchain).
#
# Binaries live in a per-user cache keyed by component, version and the hash of the wrapper
# module's files (go.mod, go.sum and any source of our own), so every clone on this machine
# reuses them and a version bump or a changed source rebuilds.
# Go's own module and build caches stay at Go's per-user defaults, which also survive clones.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$here/versions.env"
cache_root=${TENANTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantry}
bin_dir="$cache_root/bin"
mkdir -p "$bin_dir"

log() { printf '[toolchain] %s\n' "$*" >&2; }

# build COMPONENT VERSION LDFLAGS PACKAGE...: build the packages of e2e/toolchain/COMPONENT into
# a versioned cache directory unless it is already complete, then link them into $bin_dir.
build() {
  local component=$1 version=$2 ldflags=$3
  shift 3
  local module="$here/$component"
  grep -q " $version" "$module/go.mod" || {
    log "versions.env says $component $version but $module/go.mod pins another version"
    exit 1
  }
  # Every file of the module, in name order: for a module of only go.mod and go.sum this is the
  # same key as before sources were hashed too, so existing caches stay valid.
  local key
  key=$(find "$module" -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)
  local out="$cache_root/$component-$version-$key"
  if [[ -f "$out/.complete" ]]; then
    log "$component $version: cached in $out"
  else
    log "$component $version: building $* (cold builds take a while on 2 cores)"
    local started=$SECONDS tmp="$out.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$module" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w $ldflags" -o "$tmp/" "$@")
    # go build names a binary after its package path; etcd's main package is ".../server/v3".
    [[ -f "$tmp/server" ]] && mv "$tmp/server" "$tmp/etcd"
    touch "$tmp/.complete"
    rm -rf "$out" && mv "$tmp" "$out"
    log "$component $version: built in $((SECONDS - started))s"
  fi
  local binary
  for binary in "$out"/*; do
    ln -sfn "$binary" "$bin_dir/$(basename "$binary")"
  done
}

k8s_ldflags() {
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local pkg flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# Version stamps. The cache key covers only the module's files, so ldflags may carry nothing
# but the versions that build() checks against go.mod. That is also why helm is not stamped
# with a Kubernetes version: unstamped it assumes 1.20, and every caller passes --kube-version.
helm_ldflags() {
  echo "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

build_cluster() {
  build etcd "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
  build kwok "$KWOK_VERSION" "" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
  build kubernetes "$K8S_VERSION" "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_tools() {
  build helm "$HELM_VERSION" "$(helm_ldflags)" helm.sh/helm/v3/cmd/helm
  build kubeconform "$KUBECONFORM_VERSION" "-X main.version=$KUBECONFORM_VERSION" \
    github.com/yannh/kubeconform/cmd/kubeconform
  build kube-score "$KUBE_SCORE_VERSION" "-X main.version=$KUBE_SCORE_VERSION" \
    github.com/zegl/kube-score/cmd/kube-score
  # Our own program; its module's version is that of the cli-utils it links.
  build kstatus "$CLI_UTILS_VERSION" "" .
  # Our own program: the chart's admission policies decided by k8s.io/apiserver offline. It links
  # the staging modules of the control plane's version (v1.35.8 -> v0.35.8).
  build vapcheck "v0.${K8S_VERSION#v1.}" "" .
  # np-guard's netpol-analyzer, for the connectivity proof. Its checksums are not in the public
  # checksum database, so go.sum was recorded once with GONOSUMDB=github.com/np-guard and is
  # what every build verifies against.
  build netpol "$NETPOL_VERSION" "" github.com/np-guard/netpol-analyzer/cmd/netpolicy
}

# The real node (issue 11). kubelet and kube-proxy come from the same k8s.io/kubernetes version as
# the control plane, through a wrapper module of their own (e2e/toolchain/node) so that the
# control plane's cache key stays what it was; Go's build cache shares the packages they have in
# common. Every binary is static (CGO_ENABLED=0, as kube-router's own release builds are).
build_node() {
  build node "$K8S_VERSION" "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  # CoreDNS prints its GitCommit in -version; the release tag stands in for it.
  build coredns "$COREDNS_VERSION" \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" github.com/coredns/coredns
  # kube-router's own release build stamps Version and BuildDate; the date is fixed, as in
  # k8s_ldflags, so that the cache key (module files only) still says everything about the binary.
  local kr=github.com/cloudnativelabs/kube-router/v2
  build kube-router "$KUBE_ROUTER_VERSION" "-X $kr/pkg/version.Version=$KUBE_ROUTER_VERSION \
    -X $kr/pkg/version.BuildDate=1970-01-01T00:00:00Z" "$kr/cmd/kube-router"
  # Our own program, the sandbox image's only file.
  build pause "$PAUSE_VERSION" "-X main.version=$PAUSE_VERSION" .
}

total_started=$SECONDS
groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(cluster tools)
for group in "${groups[@]}"; do
  case $group in
    cluster) build_cluster ;;
    tools) build_tools ;;
    node) build_node ;;
    *)
      log "unknown group '$group': use cluster, tools, node or nothing (cluster and tools)"
      exit 2
      ;;
  esac
done
log "toolchain (${groups[*]}) ready in $((SECONDS - total_started))s: $bin_dir"
echo "$bin_dir"
