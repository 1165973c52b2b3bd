#!/usr/bin/env bash
# Everything the engine's GPU work needs from a CUDA machine, in one run from the repository root:
#   bench/gpu.sh OUT_DIR
# 1. the CUDA-only tests (tests/test_engine_cuda.py);
# 2. bench/engine.py's table: ds2-lite with 8 layers at batch 1-256, prompt 256, against the roofline,
#    with tracing on vs off, and against HuggingFace transformers' eager and grouped_mm experts (the
#    same weights and prompts, measured round by round); then without decode graphs, and with the
#    graphs' forward compiled by inductor;
# 3. bench/host.py on CUDA: the host time per tick that planning ahead hides under the device's work;
# 4. three short ds2-lite sample traces for traces/ (one user alone; a 5 ms and a 200 ms window).
# Needs torch with CUDA, numpy, msgpack, rich, aiohttp, transformers (the peer) and pytest; recording
# needs neither polars nor textual. Goes on past a failure, so that one run shows everything, and
# exits 1 at the end if the CUDA tests or any step failed.
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=()
step() {  # step NAME LOG COMMAND...: run, keep its output in LOG, note a failure and go on
    local name=$1 log=$2
    shift 2
    if ! "$@" 2>&1 | tee "$log"; then
        failed+=("$name")
        echo "FAILED: $name (see $log); going on"
    fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/device.txt"
step "CUDA tests" "$out/cuda-tests.txt" python -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py
bench=(python -m bench.engine --preset ds2-lite --layers 8 --batches 1,8,32,128,256 --prompt 256)
step "bench with CUDA graphs" "$out/engine.txt" "${bench[@]}" --peer
step "bench without graphs" "$out/engine-no-graphs.txt" "${bench[@]}" --decode-graphs off
step "bench with compiled graphs" "$out/engine-compiled.txt" "${bench[@]}" --decode-compile inductor
step "host time" "$out/host.txt" python -m bench.host --device cuda
# all 27 layers: compressed, a tick's [27 x 64] expert load takes about 1 KB, so a few seconds make a few MB
for run in local-single-user:3 article-5ms:4 article-200ms:4; do
    workload=${run%:*} seconds=${run#*:}
    step "record $workload" "$out/record-$workload.txt" python -m tui.cli record --preset ds2-lite \
        --workload "$workload" --duration "$seconds" --quiet --out "$out/ds2-lite-$workload.msgpack"
done
ls -l "$out"
if ((${#failed[@]})); then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
