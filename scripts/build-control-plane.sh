#!/usr/bin/env bash
# Builds the Kubernetes control plane the end-to-end tests run against, once per version, into a
# cache outside the work tree:
#
#   $BERTH_CONTROL_PLANE_CACHE/<version>/bin/{kube-apiserver,kube-controller-manager,etcd}
#   (default cache: ${XDG_CACHE_HOME:-$HOME/.cache}/berth/control-plane)
#
# No release binaries can be downloaded here (no dl.k8s.io, no GitHub), so the binaries are built
# from the Go module proxy. k8s.io/kubernetes cannot be `go install`ed because its go.mod replaces
# every staging module with a local path; a small module of ours requires it and replaces each
# staging module with its published v0.X.Y instead. etcd is built in the same module from the
# etcd server version Kubernetes itself requires (a three-line main calling etcdmain.Main).
#
# Prints the bin directory on stdout as its last line. Idempotent: a complete build is reused.
set -euo pipefail

K8S_VERSION="${BERTH_K8S_VERSION:-v1.35.4}"
CACHE="${BERTH_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth/control-plane}"
OUT="$CACHE/$K8S_VERSION"
BIN="$OUT/bin"

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -f "$OUT/.complete" ]]; then
  log "kube-apiserver, kube-controller-manager and etcd $K8S_VERSION cached in $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || die "go is required (Go 1.25 or newer)"
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [[ -f "$OUT/.complete" ]]; then echo "$BIN"; exit 0; fi

MOD="$OUT/module"
rm -rf "$MOD"
mkdir -p "$MOD/etcd" "$BIN"
cd "$MOD"

# "v1.35.4" -> staging modules at "v0.35.4"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"

log "fetching k8s.io/kubernetes $K8S_VERSION's go.mod"
gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
[[ -f "$gomod" ]] || die "go mod download k8s.io/kubernetes@$K8S_VERSION gave no go.mod"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$gomod")"
[[ -n "$etcd_version" ]] || die "no go.etcd.io/etcd/server/v3 in k8s.io/kubernetes's go.mod"

{
  echo "module berth.dev/control-plane"
  echo
  echo "go $(go env GOVERSION | sed 's/^go//; s/^\([0-9]*\.[0-9]*\).*/\1/')"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $etcd_version"
  echo ")"
  echo
  echo "replace ("
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod" \
    | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod

cat > etcd/main.go <<'GO'
// etcd, built from the server version Kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

export GOFLAGS=-mod=mod
# The compile cache (2.7 GB) is worth nothing once the binaries exist: keep it beside them and
# remove it after a successful build. The module cache (~600 MB) stays for the next version.
export GOCACHE="$OUT/go-build-cache"
ldflags="-s -w"
for v in gitVersion="$K8S_VERSION" gitMajor=1 gitMinor="$minor" gitTreeState=clean; do
  ldflags+=" -X k8s.io/component-base/version.$v"
done

# GNU time, where present, reports the build's peak memory (largest compile or link process).
measured() {
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f "[control-plane] $1: %e s, peak RSS %M KiB" "${@:2}"
  else
    "${@:2}"
  fi
}

start=$SECONDS
for cmd in kube-apiserver kube-controller-manager; do
  log "building $cmd $K8S_VERSION (several minutes on 2 cores)"
  measured "$cmd" go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
log "building etcd $etcd_version"
measured etcd go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" ./etcd

"$BIN/kube-apiserver" --version | grep -q "$K8S_VERSION" || die "kube-apiserver does not report $K8S_VERSION"
"$BIN/etcd" --version >&2
log "built in $((SECONDS - start)) s: $(du -sh "$BIN" | cut -f1) in $BIN"
rm -rf "$GOCACHE" "$MOD"
touch "$OUT/.complete"
echo "$BIN"
