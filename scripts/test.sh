#!/usr/bin/env bash
# Set up, then run the whole quality gate: ruff, mypy --strict, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# Let Python keep its byte-code caches: the installs skip compiling (--no-compile) on the
# understanding that the first import of each module writes its cache; with
# PYTHONDONTWRITEBYTECODE set every process (the CLI, sandbox workers, cluster workers) would
# recompile torch's modules from source, about 4.5 s per process start on this machine.
unset PYTHONDONTWRITEBYTECODE
PRUNE_FASHION=1 PRUNE_BROWSER=1 PRUNE_EXTRAS=dev,cluster ./scripts/setup.sh
. .venv/bin/activate
ruff check prune audit threat_models tests
mypy
# Two workers, each taking whole test files (module fixtures are built once): the suite's
# 2-core wall time halves (fresh clone: 381 s, the whole .ci/run 9 min, against 748 s for the
# suite in one process). PRUNE_TEST_WORKERS=0 runs it in one process.
python -m pytest -q -n "${PRUNE_TEST_WORKERS:-2}" --dist loadfile "$@"
