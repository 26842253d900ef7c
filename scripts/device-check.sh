#!/usr/bin/env bash
# The GPU check, run on the GPU machine (with .device/ from scripts/device-prepare.sh):
#   OUT=/some/dir bash scripts/device-check.sh
# It installs the carried wheels, records the GPU, runs the CUDA tests and profiles one decoder
# step of 128 rows (bench/step_profile.py), then runs the benchmark on
# the GPU (half precision, decoder step from CUDA graphs), then continuous batching alone with
# eager steps (--cuda-graphs false) for what the graphs bring; if the first run fails, it runs
# again with eager steps instead. Into $OUT go eight files, the
# most the device tool brings back: checks.log (GPU, CUDA tests, step profile), bench.log (both runs) and
# {gpu,gpu-eager}/{report.md,results.json,latency_vs_throughput.png}; raw request logs stay in
# $BENCH_OUT. Extra arguments go to both benchmarks.
# A dry run here: PYTHON=.venv/bin/python SKIP_WHEELS=1 DEVICE=cpu OUT=/tmp/dc scripts/device-check.sh --quick
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
PY=${PYTHON:-python3}
BENCH_OUT=${BENCH_OUT:-/tmp/device-bench}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
{
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    $PY -m pytest -q -p no:cacheprovider tests/service/test_cuda.py tests/seq2seq/test_cuda_graphs.py 2>&1
    $PY -m bench.step_profile --device "${DEVICE:-cuda}" --threads 4 --rows 128 --steps 200 --profile-steps 20 \
        --inputs .device/data/test_2016_flickr.de.gz 2>&1
} | tee "$OUT/checks.log"
bench() {  # LABEL ARGS...: one benchmark run, its report files copied into $OUT/LABEL
    local label=$1
    shift
    $PY -m bench --device "${DEVICE:-cuda}" --threads 4 --label "$label" --out "$BENCH_OUT" \
        --inputs .device/data/test_2016_flickr.de.gz "$@" 2>&1 | tee -a "$OUT/bench.log" || return 1
    mkdir -p "$OUT/$label"
    cp "$BENCH_OUT/$label"/{report.md,results.json,latency_vs_throughput.png} "$OUT/$label/"
}
if bench gpu --duration 6 --chat-inputs .device/data/test_2016_flickr.en.gz "$@"; then
    bench gpu-eager --duration 4 --modes continuous --concurrency 1,128 --rates '' --chat-model '' \
        --server-args="--cuda-graphs false" "$@"
else  # CUDA graphs that fail to capture must not cost the GPU numbers: the same run with eager steps
    echo "== the benchmark failed; again with --cuda-graphs false" | tee -a "$OUT/bench.log"
    bench gpu-eager --duration 6 --chat-inputs .device/data/test_2016_flickr.en.gz \
        --server-args="--cuda-graphs false" "$@"
fi
