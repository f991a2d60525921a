#!/usr/bin/env bash
# Builds Berth's container image from the top-level Dockerfile without a registry, then
# smoke-tests it. As root on Debian 12; idempotent, non-interactive:
#   1. Debian packages it uses (mmdebstrap, buildah, podman, runc, binutils), if missing;
#   2. the release binary (`cargo build --release --locked`: a no-op when it is up to date),
#      stripped into the build context;
#   3. the base image: Debian trixie (slim) bootstrapped from Debian's packages with mmdebstrap,
#      imported as localhost/debian:trixie-slim (cached; BERTH_IMAGE_REFRESH=1 bootstraps anew);
#   4. `buildah build` of the Dockerfile, tagged berth:<version> and ghcr.io/berth-dev/berth:<version>;
#   5. checks: size at most 220 MB, labels, and `berth --version`, `berth agent --help` and
#      the PostgreSQL client tools as UID 65532 on a read-only root
#      (`podman run --read-only`; BERTH_IMAGE_SMOKE=chroot unpacks the image with
#      `podman image mount` and uses `chroot --userspec` on a read-only bind mount instead).
# Container storage (vfs driver, chroot isolation, cgroupfs) lives in ~/.cache/berth/image;
# nothing in /etc/containers is changed. `podman` commands need the same environment:
#   eval "$(scripts/build-image.sh --print-env)"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

CACHE="${BERTH_IMAGE_CACHE:-$HOME/.cache/berth/image}"
SUITE=trixie
MIRROR="${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${BERTH_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_IMAGE="localhost/debian:$SUITE-slim"
PG_MAJOR=17
MAX_BYTES=220000000
AGENT_UID=65532

VERSION="$(awk -F'"' '/^\[package\]/ {p = 1} p && /^version *=/ {print $2; exit}' Cargo.toml)"
[ -n "$VERSION" ] || die "no [package] version in Cargo.toml"
IMAGE="berth:$VERSION"
GHCR_IMAGE="ghcr.io/berth-dev/berth:$VERSION"
# The commit the binary reports (build.rs: BERTH_GIT_COMMIT, else git, else unknown).
REVISION="${BERTH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"

mkdir -p "$CACHE"
cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
# runc, not crun: crun 1.8 refuses a host with cgroups v1 and v2 mounted side by side ("hybrid").
# Limits lower than the host's: raising them needs CAP_SYS_RESOURCE, which a sandboxed root
# (as on this CI machine) lacks.
cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
# No registry is reachable or wanted: short names never resolve to one.
cat >"$CACHE/registries.conf" <<EOF
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf" \
  CONTAINERS_CONF="$CACHE/containers.conf" \
  CONTAINERS_REGISTRIES_CONF="$CACHE/registries.conf" \
  BUILDAH_ISOLATION=chroot
if [ "${1:-}" = --print-env ]; then
  for v in CONTAINERS_STORAGE_CONF CONTAINERS_CONF CONTAINERS_REGISTRIES_CONF BUILDAH_ISOLATION; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap and buildah's chroot isolation need it)"

# 1. Tools.
APT_PACKAGES=(mmdebstrap buildah podman runc binutils)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The stripped release binary, alone in the build context (see .dockerignore).
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
log "release build (cargo reuses an up-to-date one)"
cargo build --release --locked
CONTEXT="$CACHE/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
strip --strip-all -o "$CONTEXT/berth" "$TARGET_DIR/release/berth"

# 3. The base image, bootstrapped from Debian's packages like the official slim image
#    (minbase; no manuals, docs or translations, also for packages installed later).
BASE_TAR="$CACHE/debian-$SUITE-slim.tar"
if [ "${BERTH_IMAGE_REFRESH:-0}" = 1 ]; then
  rm -f "$BASE_TAR"
  podman image rm --force "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if [ ! -s "$BASE_TAR" ]; then
  log "bootstrapping Debian $SUITE with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --aptopt='APT::Install-Recommends "false"' \
    "$SUITE" "$BASE_TAR.partial" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
  mv "$BASE_TAR.partial" "$BASE_TAR"
  podman image rm --force "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! podman image exists "$BASE_IMAGE"; then
  log "importing $BASE_TAR as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# 4. The image. --layers keeps the apt layer for a rerun on the same base.
log "building $IMAGE from the Dockerfile"
buildah build --quiet --layers --pull=never --format=oci \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg PG_MAJOR="$PG_MAJOR" \
  --build-arg VERSION="$VERSION" \
  --build-arg REVISION="$REVISION" \
  --tag "$IMAGE" --tag "$GHCR_IMAGE" \
  --file Dockerfile "$CONTEXT" >/dev/null

# 5. Checks. Every mismatch ends the script with an error.
expect_eq() { [ "$2" = "$3" ] || die "$1: expected '$2', got '$3'"; }
expect_match() { grep -Eq -- "$2" <<<"$3" || die "$1: expected a match of /$2/, got: $3"; }

size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
log "image $IMAGE ($GHCR_IMAGE): $((size / 1000000)) MB ($size bytes)"
((size <= MAX_BYTES)) || die "image is $size bytes, more than the limit of $MAX_BYTES"
expect_eq "image user" "$AGENT_UID:$AGENT_UID" "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
expect_eq "version label" "$VERSION" \
  "$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")"
expect_eq "revision label" "$REVISION" \
  "$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")"

SMOKE="${BERTH_IMAGE_SMOKE:-podman}"
case "$SMOKE" in
  podman)
    # Like the chart's pods: read-only root (podman mounts a tmpfs on /tmp as the emptyDir),
    # the image's non-root UID/GID, no network.
    in_image() {
      local entrypoint="$1"
      shift
      podman run --rm --pull=never --read-only --network=none --user "$AGENT_UID:$AGENT_UID" \
        --entrypoint "$entrypoint" "$IMAGE" "$@"
    }
    ;;
  chroot)
    ROOTFS="$(podman image mount "$IMAGE")"
    RO="$(mktemp -d)"
    cleanup() {
      umount -R "$RO" 2>/dev/null || true
      rmdir "$RO"
      podman image unmount "$IMAGE" >/dev/null || true
    }
    trap cleanup EXIT
    mount --bind "$ROOTFS" "$RO"
    mount -o remount,bind,ro "$RO"
    mount -t tmpfs -o mode=1777 tmpfs "$RO/tmp"
    mount -t proc proc "$RO/proc"
    mount --rbind /dev "$RO/dev"
    in_image() {
      local entrypoint="$1"
      shift
      # The image's environment (PATH with PostgreSQL 17 first, HOME and TMPDIR in /tmp).
      local vars=()
      mapfile -t vars < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
      env -i "${vars[@]}" chroot --userspec="$AGENT_UID:$AGENT_UID" "$RO" "$entrypoint" "$@"
    }
    ;;
  *) die "BERTH_IMAGE_SMOKE must be podman or chroot, not '$SMOKE'" ;;
esac
log "smoke test ($SMOKE): UID $AGENT_UID, read-only root"

expect_eq "id" "$AGENT_UID:$AGENT_UID" "$(in_image sh -c 'echo "$(id -u):$(id -g)"')"
expect_match "root file system" "Read-only file system" "$(in_image sh -c 'touch /probe 2>&1' || true)"
expect_eq "scratch directory" "ok" "$(in_image sh -c 'echo ok >"$TMPDIR/probe" && cat "$HOME/probe"')"
expect_eq "berth --version" "berth $VERSION (${REVISION:0:12})" "$(in_image berth --version)"
expect_match "berth agent --help" "backup-postgres" "$(in_image berth agent --help)"
for tool in pg_dump pg_dumpall pg_restore psql; do
  expect_match "$tool --version" "^$tool \(PostgreSQL\) $PG_MAJOR\.[0-9]+" "$(in_image "$tool" --version)"
done
log "all checks passed: $IMAGE"
