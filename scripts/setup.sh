#!/usr/bin/env bash
# Set up everything on a fresh machine: system data packages (when root), a virtual environment,
# the CPU build of torch first (a bare `torch` requirement would pull GBs of CUDA wheels), then the
# project with its dev tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
if [ "${PRUNE_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: not root, skipping apt packages: ${need_apt[*]} (tests that need them are skipped)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c 'import torch' >/dev/null 2>&1; then
  pip install -q torch==2.13.0
fi
# the demo needs the runtime only; the test command asks for the dev tools too
pip install -q -e ".${PRUNE_EXTRAS:+[$PRUNE_EXTRAS]}"
