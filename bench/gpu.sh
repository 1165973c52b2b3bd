#!/usr/bin/env bash
# Everything the engine's GPU work needs from a CUDA machine, in one run from the repository root:
#   bench/gpu.sh OUT_DIR
# 1. the CUDA-only tests (tests/test_engine_cuda.py);
# 2. bench/engine.py's table: ds2-lite with 8 layers at batch 1-256, prompt 256, against the roofline,
#    with tracing on vs off, and against HuggingFace transformers' eager and grouped_mm experts; then the
#    same without decode graphs, and with the graphs' forward compiled by inductor;
# 3. three short ds2-lite sample traces for traces/ (one user alone; a 5 ms and a 200 ms window).
# Needs torch with CUDA, numpy, msgpack, rich, aiohttp, transformers (the peer) and pytest; recording
# needs neither polars nor textual.
set -euo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/device.txt"
python -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py 2>&1 | tee "$out/cuda-tests.txt" \
    || echo "CUDA tests failed; going on"
bench="python -m bench.engine --preset ds2-lite --layers 8 --batches 1,8,32,128,256 --prompt 256"
$bench --peer 2>&1 | tee "$out/engine.txt" || echo "bench with CUDA graphs failed; going on"
$bench --decode-graphs off 2>&1 | tee "$out/engine-no-graphs.txt"
$bench --decode-compile inductor 2>&1 | tee "$out/engine-compiled.txt" || echo "bench with compiled graphs failed"
# all 27 layers: compressed, a tick's [27 x 64] expert load takes about 1 KB, so a few seconds make a few MB
for run in local-single-user:3 article-5ms:4 article-200ms:4; do
    workload=${run%:*} seconds=${run#*:}
    python -m tui.cli record --preset ds2-lite --workload "$workload" --duration "$seconds" --quiet \
        --out "$out/ds2-lite-$workload.msgpack"
done
ls -l "$out"
