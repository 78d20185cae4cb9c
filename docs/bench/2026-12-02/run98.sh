#!/usr/bin/env bash
# Run 98 (H200): the code as committed after runs 96-97 (rows_linear back to d3632ae's kernel; the decode graphs'
# inputs in separate allocations): gpt2-large bf16 and FP8 weight-only against Hugging Face static-cache generate,
# then the 40B's FP8 weight-only (weights and cache) against its bf16 peer, all in the same run.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=${OUT:-artifacts/bench}/run98; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
PYTHONPATH=$PWD timeout 200 python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv,fp8wo-splitkv \
    --batches 1,16 --peers hf-static --output $O/engine 2>&1 | grep "^|\|Error" | tee -a $O/engine.txt
PYTHONPATH=$PWD timeout 330 python3 -m bench.engine --preset gpt-large-40b --max-seq-len 1280 \
    --variants fp8wo-splitkv-kvfp8,bf16-sdpa --batches 1,16 --peers '' --output $O/40b 2>&1 \
    | grep "^|\|Error" | tee -a $O/engine.txt
