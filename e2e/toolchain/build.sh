#!/usr/bin/env bash
# Build (or reuse) the local control-plane binaries from Go modules and print their directory.
#
# Binaries live in a per-user cache keyed by component, version and the hash of the wrapper
# module's go.sum, so every clone on this machine reuses them and a version bump rebuilds.
# Go's own module and build caches stay at Go's per-user defaults, which also survive clones.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
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
  local key
  key=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-12)
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

total_started=$SECONDS
build etcd "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
build kwok "$KWOK_VERSION" "" \
  sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
build kubernetes "$K8S_VERSION" "$(k8s_ldflags)" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
# np-guard's netpol-analyzer, for the connectivity proof. Its checksums are not in the public
# checksum database, so go.sum was recorded once with GONOSUMDB=github.com/np-guard and is
# what every build verifies against.
build netpol "$NETPOL_VERSION" "" github.com/np-guard/netpol-analyzer/cmd/netpolicy
log "toolchain ready in $((SECONDS - total_started))s: $bin_dir"
echo "$bin_dir"
