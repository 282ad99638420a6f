#!/usr/bin/env bash
# Build the test control plane's binaries — etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl — from Go modules, into a directory keyed by what they are built from.
#
#   scripts/install-control-plane.sh [PREFIX]        (PREFIX defaults to the repository's .tools)
#
# Sources: controller/controlplane/gobuild/ — a go.mod pinning k8s.io/kubernetes (its staging
# modules replaced by the matching k8s.io/* v0.x releases) and go.etcd.io/etcd/server/v3, and
# etcd/main.go (a few lines on etcd's embed package). See docs/controlplane.md.
#
# Output: PREFIX/controlplane/<key>/bin/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
# where <key> = k8s-<version>-etcd-<version>-<hash of go.mod, go.sum, etcd/main.go and this
# script's build flags>. A version bump builds a new directory; a re-run with the same sources
# reuses the existing one (and needs no Go). On success the bin directory is the only line on
# stdout (controller/controlplane reads it).
#
# Go caches: GOPATH, GOMODCACHE and GOCACHE live in PREFIX/go, or in $AGENT_CONTROLLER_GO_CACHE
# when set (a directory laid out like PREFIX/go: mod/ and cache/), so a second clone on the same
# machine can build warm from the first one's caches.
#
# Exit status: 0 built or reused; 3 the binaries are not there and `go` is not on PATH (one line on
# stderr says so; callers such as scripts/test carry on without the control plane); 1 a build failed
# (the failing command's output on stderr).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/controller/controlplane/gobuild"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
# Bump when the way the binaries are built changes (flags below), so the key changes with it.
BUILD_REVISION=1

PREFIX="${1:-$ROOT/.tools}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"

die() {
    echo "install-control-plane: $*" >&2
    exit 1
}

# The pinned versions, read from go.mod (the one source of truth).
# required_version MODULE: its version in a `require` line or block of go.mod.
required_version() {
    awk -v m="$1" '$1 == "require" && $2 == m {print $3; exit} $1 == m && $2 ~ /^v/ {print $2; exit}' "$SRC/go.mod"
}
K8S_VERSION="$(required_version k8s.io/kubernetes)"
ETCD_VERSION="$(required_version go.etcd.io/etcd/server/v3)"
[[ -n "$K8S_VERSION" ]] || die "no k8s.io/kubernetes version in $SRC/go.mod"
[[ -n "$ETCD_VERSION" ]] || die "no go.etcd.io/etcd/server/v3 version in $SRC/go.mod"
MINOR="${K8S_VERSION#v1.}"
MINOR="${MINOR%%.*}"

# Version stamps: what `kube-apiserver --version` and `kubectl version` report (a module build
# has no git tree to read them from; without them the binaries say v0.0.0-master).
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
done
LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
BUILD_FLAGS=(-trimpath -ldflags "$LDFLAGS")

HASH="$(
    {
        cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/etcd/main.go"
        echo "revision=$BUILD_REVISION flags=${BUILD_FLAGS[*]}"
    } | sha256sum | cut -c1-12
)"
KEY="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$HASH"
DEST="$PREFIX/controlplane/$KEY"
BIN="$DEST/bin"

complete() {
    local name
    for name in "${BINARIES[@]}"; do
        [[ -x "$BIN/$name" ]] || return 1
    done
}

if complete; then
    echo "$BIN"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "install-control-plane: go is not on PATH: cannot build the control plane ($KEY); its tests will be skipped" >&2
    exit 3
fi

mkdir -p "$PREFIX/controlplane"
# One build at a time per PREFIX (two test sessions starting together wait for each other).
exec 9>"$PREFIX/controlplane/.lock"
flock 9
if complete; then # built by the session we waited for
    echo "$BIN"
    exit 0
fi

GO_CACHE="${AGENT_CONTROLLER_GO_CACHE:-$PREFIX/go}"
mkdir -p "$GO_CACHE"
GO_CACHE="$(cd "$GO_CACHE" && pwd)"
export GOPATH="$GO_CACHE" GOMODCACHE="$GO_CACHE/mod" GOCACHE="$GO_CACHE/cache"
# -mod=mod: go.sum is complete but the `tool` lines may ask for requirements to be recorded;
# -modcacherw: the module cache stays deletable (rm -rf .tools works).
export GOFLAGS="-mod=mod -modcacherw"

WORK="$DEST/bin.partial"
rm -rf "$WORK"
mkdir -p "$WORK"
LOG="$DEST/build.log"
: >"$LOG"
echo "install-control-plane: building $KEY (go: $(go env GOVERSION); caches in $GO_CACHE)" >&2
total_start=$SECONDS
for name in "${BINARIES[@]}"; do
    start=$SECONDS
    if [[ "$name" == etcd ]]; then pkg=./etcd; else pkg="k8s.io/kubernetes/cmd/$name"; fi
    if ! (cd "$SRC" && go build "${BUILD_FLAGS[@]}" -o "$WORK/$name" "$pkg") >>"$LOG" 2>&1; then
        echo "install-control-plane: go build $pkg failed (log: $LOG):" >&2
        tail -n 40 "$LOG" | sed 's/^/    /' >&2
        exit 1
    fi
    echo "$name $((SECONDS - start))s" >>"$LOG"
    echo "install-control-plane:   $name $((SECONDS - start))s" >&2
done
echo "total $((SECONDS - total_start))s" >>"$LOG"
rm -rf "$BIN"
mv "$WORK" "$BIN"
echo "install-control-plane: built in $((SECONDS - total_start))s" >&2
echo "$BIN"
