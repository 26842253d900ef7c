#!/usr/bin/env bash
# Set up (if needed) and start the service on the bundled models: scripts/serve.sh [seq2seq-serve flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/seq2seq-serve "$@"
