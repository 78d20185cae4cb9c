#!/usr/bin/env bash
# Run 97 (H200): the fused linear asking for its epilogue's operands (scale, bias, residual, cache positions)
# before its loops, the weights' loop as before (working tree), against HEAD~2's kernel (artifacts/head,
# `git archive d3632ae gptserve | tar -x -C artifacts/head`), each run from its own directory; the working
# tree's engine also with FP8 weight-only and Hugging Face static-cache generate as the same run's peers.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
O=${OUT:-artifacts/bench}/run97; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
from() {  # DIR COMMAND...: run a python command with DIR's gptserve first on the path
    local dir=$1; shift
    (cd "$dir" && PYTHONPATH=$dir:$REPO timeout 230 "$@")
}
PYTHONPATH=$REPO timeout 120 python3 -m pytest tests/gpu -q -x -k "fused_linear or qkv_kernel or auto_fuses" 2>&1 \
    | tail -3 | tee $O/gpu-tests.txt
for dir in $REPO/artifacts/head $REPO; do
    from $dir python3 $REPO/docs/bench/2026-12-02/run96_rows_linear_ab.py 2>&1 | grep -v Warn | tee -a $O/rows-linear-ab.txt
done
from $REPO/artifacts/head python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv --batches 1,16 \
    --peers '' --output $O/engine-head 2>&1 | grep "^| gpt2\|Error" | tee -a $O/engine.txt
from $REPO python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv,fp8wo-splitkv --batches 1,16 \
    --peers hf-static --output $O/engine-new 2>&1 | grep "^|\|Error" | tee -a $O/engine.txt
