#!/usr/bin/env bash
# Prepare a GPU check on an offline GPU machine that gets a copy of this working tree, here,
# where the package index and ../shared are reachable.
#
# Such a machine may have PyTorch with CUDA but no FastAPI stack. This puts into .device/
# (git-ignored; copy it along): wheels of the service's packages for Python 3.12 on x86-64 Linux,
# at this checkout's versions, and the benchmark's inputs from ../shared/data. It also lists in
# .device/set-aside the bundled models the GPU benchmark does not load: moving them out of
# model_store/ for the copy keeps the tree small (about 20 MB instead of 75). Then run
# scripts/device-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/whl .device/data
py=.venv/bin/python
# Same versions as this checkout's environment, so the two machines run the same code.
# httptools: without it uvicorn falls back to the pure-Python h11 parser (slower per request).
packages=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn httptools annotated-types
          annotated-doc typing-inspection pytest-asyncio)
pins=()
for p in "${packages[@]}"; do
    pins+=("$p==$($py -m pip show "$p" | sed -n 's/^Version: //p')")
done
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/whl "${pins[@]}"
cp ../shared/data/multi30k/test_2016_flickr.{de,en}.gz .device/data/  # translation inputs, chat messages
printf '%s\n' translate-de-en-basic translate-de-en-context translate-fr-en chat-ko > .device/set-aside
du -sh .device
echo "not needed there: $(tr '\n' ' ' < .device/set-aside)(model_store/NAME)"
