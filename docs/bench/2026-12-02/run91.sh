#!/usr/bin/env bash
# Run 91 (H200): split-KV's slices set at each launch (plan(rows, heads, cache)), every slice working, against the
# code before it (HEAD~1's gptserve, copied to artifacts/old-head, and run from there: `python -m` puts the working
# directory first on the path, so run 90's PYTHONPATH=old-head:$PWD ran the new code every time) in the same run,
# gpt2-large and the 40B; then the copies in graphs of the step (run91_graph_copies.py).
#   git archive HEAD~1 gptserve | tar -x -C artifacts/old-head   (before the run; carried to the GPU machine)
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
O=${OUT:-artifacts/bench}/run91; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
engine() {  # old|new preset variants [options]: bench.engine from the code named, batches 1 and 16, no peers
    local code=$1 preset=$2 variants=$3; shift 3
    (cd "$([ $code = old ] && echo $REPO/artifacts/old-head || echo $REPO)" && export PYTHONPATH=$REPO &&
        python3 -c "import gptserve.engine.decode_attention as d; print('== $code', d.__file__)" &&
        timeout 240 python3 -m bench.engine --preset $preset --variants $variants --batches 1,16 --peers '' "$@" \
            --output $O/engine-$preset-$code 2>&1 | grep -v Warning | grep "^| $preset\|^==\|Error") | tee -a $O/engine.txt
}
engine old gpt2-large bf16-splitkv
engine new gpt2-large bf16-splitkv
engine old gpt-large-40b fp8wo-splitkv-kvfp8 --max-seq-len 1280
engine new gpt-large-40b fp8wo-splitkv-kvfp8,bf16-sdpa --max-seq-len 1280
PYTHONPATH=$REPO timeout 100 python3 docs/bench/2026-12-02/run91_graph_copies.py 2>&1 | grep -v Warning \
    | tee $O/graph-copies.txt
