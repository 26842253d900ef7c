#!/usr/bin/env bash
# Create .venv and install the project. PyTorch is pinned first (torch==2.13.0, CPU build)
# so that the project's torch range is already satisfied and pip pulls no CUDA wheels.
# Usage: scripts/setup.sh [extra]   (extra: "" for serving, "dev" for tests and training)
# An install that is already done for this pyproject.toml and extra is not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
stamp=".venv/.installed${extra:+-$extra}"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
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
echo "$wanted" > "$stamp"
