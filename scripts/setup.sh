#!/usr/bin/env bash
# Set up everything on a fresh machine: system packages for the tests (when root), a virtual environment,
# the CPU build of torch first (a bare `torch` requirement would pull GBs of CUDA wheels), then the
# project with its dev tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# Let Python keep its byte-code caches: the installs skip compiling (--no-compile) on the
# understanding that the first import of each module writes its cache; with
# PYTHONDONTWRITEBYTECODE set every process (the CLI, sandbox workers, cluster workers) would
# recompile torch's modules from source, about 4.5 s per process start on this machine.
unset PYTHONDONTWRITEBYTECODE

# The demo runs on the embedded digits data: only the test command (PRUNE_FASHION=1) waits for
# apt-get update and the Fashion-MNIST package.
need_apt=()
if [ "${PRUNE_FASHION:-0}" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  need_apt+=(dataset-fashion-mnist)
fi
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
# --no-compile: byte-compiling every installed file (torch ships thousands) costs more than
# compiling the few modules a run imports, on first import
if ! python -c 'import torch' >/dev/null 2>&1; then
  pip install -q --no-compile torch==2.13.0
fi
# the demo needs the runtime only; the test command asks for the dev tools and cluster extras too.
# A stamp per (pyproject.toml, extras) skips pip's resolver when nothing changed.
stamp=".venv/.setup-$(sha256sum pyproject.toml | cut -c1-16)-${PRUNE_EXTRAS:-runtime}"
if [ ! -e "$stamp" ]; then
  pip install -q --no-compile -e ".${PRUNE_EXTRAS:+[$PRUNE_EXTRAS]}"
  touch "$stamp"
fi
