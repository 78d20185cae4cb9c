#!/usr/bin/env bash
# Run 96 (H200): the fused linear asking for its epilogue's operands and first weight tile before the LayerNorm
# (working tree) against HEAD's kernel (artifacts/head) and 17c6b58 (artifacts/base: before the decode graphs'
# inputs got separate allocations), each run from its own directory (`python -m` puts it first on the path):
#   git archive 17c6b58 gptserve | tar -x -C artifacts/base; git archive HEAD gptserve | tar -x -C artifacts/head
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
O=${OUT:-artifacts/bench}/run96; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
from() {  # DIR COMMAND...: run a python command with DIR's gptserve first on the path
    local dir=$1; shift
    (cd "$dir" && PYTHONPATH=$dir:$REPO timeout 170 "$@")
}
PYTHONPATH=$REPO timeout 200 python3 -m pytest tests/gpu -q -x -k \
    "copy_nothing or fused_linear or qkv_kernel or auto_fuses or fp8_weight_only_kernel or wide_row" 2>&1 \
    | tail -15 | tee $O/gpu-tests.txt
for dir in $REPO/artifacts/head $REPO; do
    from $dir python3 $REPO/docs/bench/2026-12-02/run96_rows_linear_ab.py 2>&1 | grep -v Warn | tee -a $O/rows-linear-ab.txt
done
for dir in $REPO/artifacts/base $REPO/artifacts/head $REPO; do
    from $dir python3 -c "import gptserve.engine.graphs as g; print('== engine from', g.__file__)" | tee -a $O/engine.txt
    from $dir python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv --batches 1,16 --peers '' \
        --output $O/engine-$(basename $dir) 2>&1 | grep "^| gpt2\|Error" | tee -a $O/engine.txt
done
PYTHONPATH=$REPO timeout 100 python3 -m bench.profile_decode --preset gpt2-large --variant bf16-splitkv \
    --batches 1 --steps 5 --output $O/profile 2>&1 | grep "^|" | tee $O/profile.txt
# the copy test on 17c6b58's graphs.py (expected to fail if the separate inputs are what removed the copies)
cp artifacts/base/gptserve/engine/graphs.py gptserve/engine/graphs.py
PYTHONPATH=$REPO timeout 90 python3 -m pytest tests/gpu -q -k copy_nothing 2>&1 | tail -8 | tee $O/copy-test-old-graphs.txt
