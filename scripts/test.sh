#!/usr/bin/env bash
# Set up (if needed) and run the checks: ruff, then the default test suite (fast, no containers or browsers).
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow tests/deploy
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
