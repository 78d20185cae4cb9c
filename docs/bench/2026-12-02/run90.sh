#!/usr/bin/env bash
# Run 90 as it ran. Its "old" engine runs ran the new code (see run91.sh); its graph dump wrote no file
# (torch.cuda.CUDAGraph.debug_dump after the capture), so run91_graph_copies.py profiles replays instead.
# Run 90 (H200): split-KV's slices set at each launch (plan(rows, heads, cache)), every slice working, against the
# code before it (HEAD's gptserve copied to artifacts/old-head) in the same run; the copies in a graph of the step;
# the GPU tests.
set -uo pipefail
export PYTHONUNBUFFERED=1
O=${OUT:-artifacts/bench}/run90; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $O/device.txt
for code in old new old new; do
    path=$PWD; [ $code = old ] && path=$PWD/artifacts/old-head:$PWD
    PYTHONPATH=$path python3 -c "import gptserve.engine.decode_attention as d; print('== $code', d.__file__)" \
        | tee -a $O/engine.txt
    PYTHONPATH=$path timeout 150 python3 -m bench.engine --preset gpt2-large --variants bf16-splitkv --batches 1,16 \
        --peers '' --output $O/engine-$code 2>&1 | grep -v Warning | grep "^| gpt2" | tee -a $O/engine.txt
done
export PYTHONPATH=$PWD
timeout 120 python3 docs/bench/2026-12-02/run90_graph_copies.py $O/dot 2>&1 | grep -v Warning | tee $O/graph-copies.txt
timeout 60 python3 -m bench.decode_attention_sweep --preset gpt2-large --batches 2,4 \
    --configs "13,64,2,3;14,64,2,3;20,64,2,3" --output $O 2>&1 | grep "^batch" | tee $O/sweep.txt
timeout 220 python3 -m pytest tests/gpu -q --tb=short -p no:cacheprovider 2>&1 | tail -30 | tee $O/gpu-tests.txt
