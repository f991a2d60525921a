#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with the Rust toolchain:
#   1. Debian packages the data-path tests run for real (PostgreSQL 15, RabbitMQ), if missing;
#   2. kubectl, helm, kubernetes-validate and checkov into .tools/ (scripts/install-tools.sh);
#   3. the Kubernetes control plane the end-to-end tests run on (kube-apiserver,
#      kube-controller-manager, etcd), built from the Go module proxy once per version into
#      ~/.cache/berth/control-plane (scripts/build-control-plane.sh; about 7 minutes on 2 cores);
#   4. the container image from the release build, smoke-tested (scripts/build-image.sh;
#      BERTH_SKIP_IMAGE=1 skips it);
#   5. every test with cargo-nextest (installed from crates.io if missing).
# Servers the tests need are started by the tests themselves on free loopback ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test] %s\n' "$*"; }

APT_PACKAGES=(postgresql-15 rabbitmq-server unzip lua5.1)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # apt on a machine without systemd starts nothing; the tests start their own servers.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scripts/install-tools.sh

BERTH_CONTROL_PLANE_BIN="$(scripts/build-control-plane.sh | tail -n1)"
export BERTH_CONTROL_PLANE_BIN

[ "${BERTH_SKIP_IMAGE:-0}" = 1 ] || scripts/build-image.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  # A debug build: 2 minutes on 2 cores against 9 for a release build, and the runner's own
  # speed does not show beside the tests'.
  cargo install cargo-nextest --locked --debug
fi

log "running the test suite"
# A fresh clone builds once: incremental state would only double the disk used.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
exec cargo nextest run --no-fail-fast "$@"
