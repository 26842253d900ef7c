#!/usr/bin/env bash
# The GPU check, run on the GPU machine (with .device/ from scripts/device-prepare.sh):
#   OUT=/some/dir bash scripts/device-check.sh
# It installs the carried wheels, records the GPU, runs the CUDA tests, then the benchmark on
# the GPU (half precision, decoder step from CUDA graphs), then continuous batching alone with
# eager steps (--cuda-graphs false) for what the graphs bring, all into $OUT: device.txt,
# cuda-tests.log, bench.log, bench-eager.log and bench/{gpu,gpu-eager}/{report.md,results.json,
# latency_vs_throughput.png}. Extra arguments go to both benchmarks.
# A dry run here: PYTHON=.venv/bin/python SKIP_WHEELS=1 DEVICE=cpu OUT=/tmp/dc scripts/device-check.sh --quick
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
{
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
} | tee "$OUT/device.txt"
$PY -m pytest -q -p no:cacheprovider tests/service/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.log"
$PY -m bench --device "${DEVICE:-cuda}" --threads 4 --label gpu --out "$OUT/bench" --duration 6 \
    --inputs .device/data/test_2016_flickr.de.gz --chat-inputs .device/data/test_2016_flickr.en.gz "$@" 2>&1 | tee "$OUT/bench.log"
$PY -m bench --device "${DEVICE:-cuda}" --threads 4 --label gpu-eager --out "$OUT/bench" --duration 4 \
    --modes continuous --concurrency 1,128 --rates '' --chat-model '' --server-args="--cuda-graphs false" \
    --inputs .device/data/test_2016_flickr.de.gz "$@" 2>&1 | tee "$OUT/bench-eager.log"
