#!/usr/bin/env bash
# Set up, then run the whole quality gate: ruff, mypy --strict, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PRUNE_FASHION=1 PRUNE_BROWSER=1 PRUNE_EXTRAS=dev,cluster ./scripts/setup.sh
. .venv/bin/activate
ruff check prune audit threat_models tests
mypy
python -m pytest -q "$@"
