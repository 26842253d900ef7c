#!/usr/bin/env bash
# Create .venv and install the project. PyTorch is pinned first (torch==2.13.0, CPU build)
# so that the project's torch range is already satisfied and pip pulls no CUDA wheels.
# Usage: scripts/setup.sh [extra]   (extra: "" for serving, "dev" for tests and training)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ -n "$extra" ]; then
    .venv/bin/python -m pip install -q -e ".[$extra]"
else
    .venv/bin/python -m pip install -q -e .
fi
