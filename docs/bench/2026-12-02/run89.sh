#!/usr/bin/env bash
# Ran at 6420a9f: TARGET_PROGRAMS and the five-number --configs belong to that code (6213e8a replaced them).
# Run 89 (H200): split-KV at 20 slices a head for gpt2-large's batch 1 (TARGET_PROGRAMS 400) against the plan's
# 13 (256) in the engine, same run; the attention alone for both presets; the batch-1 step's copies traced.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
O=${OUT:-artifacts/bench}/run89; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
for target in 256 400 256; do  # the default twice: before and after, for the machine's drift
    timeout 200 python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv --batches 1,16 --peers '' \
        --constant gptserve.engine.decode_attention.TARGET_PROGRAMS=$target --output $O/engine-$target \
        2>&1 | grep -v Warning | tail -8 | tee -a $O/engine.txt
done
timeout 90 python3 -m bench.decode_attention_sweep --preset gpt2-large --cache bf16 --batches 1 \
    --configs "13,64,2,3,1056;20,64,2,3,1056;26,64,2,3,1056" --output $O 2>&1 | grep -v Warning | tee $O/sweep-gpt2.txt
timeout 120 python3 -m bench.decode_attention_sweep --preset gpt-large-40b --cache fp8 --batches 1,16 \
    --configs "4,64,2,3,1056;7,64,2,3,1056" --output $O 2>&1 | grep -v Warning | tee $O/sweep-40b.txt
timeout 150 python3 docs/bench/2026-12-02/run89_trace_copies.py 2>&1 | grep -v Warning | tee $O/trace-copies.txt
