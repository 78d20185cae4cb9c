#!/usr/bin/env bash
# The GPU benchmarks behind docs/benchmarks.md, in stages that each fit a 10-minute run on one H100.
#
# Usage: scripts/bench_gpu.sh STAGE [OUT_DIR]     (OUT_DIR default: artifacts/bench)
#   engine  the engine's variants (bf16/FP8 x sdpa/flex) at batch 1, 4, 8, 16, then the GPU tests
#   peers   the same-run peers on identical weights: the engine's eager path, Hugging Face transformers
#           generate (default cache, static cache), and the engine's bf16-sdpa for the ratio
#   40b     gpt-large-40b with FP8 weights at batch 1 and 16
#   triton  tritonserver on the GPU: 16 concurrent gRPC clients through tools/warmup.py against the in-process
#           engine at batch 16, then tools/compare_models.py (gpt_large vs gpt_large_stream, runbook envelope)
# Every stage uses prompt 1024 and 256 new tokens (greedy) unless it says otherwise, and writes JSON to OUT_DIR.
# The triton stage needs nvidia-pytriton, tritonclient and python-rapidjson importable (on the GPU machine:
# wheels carried in .whl/ and installed into /tmp/site, see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STAGE="${1:?usage: scripts/bench_gpu.sh engine|peers|40b|triton [OUT_DIR]}"
OUT_DIR="${2:-artifacts/bench}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

case "$STAGE" in
engine)
    nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT_DIR/device.txt"
    "$PY" -m bench.engine --preset gpt2-large --variants "${VARIANTS:-bf16-sdpa,bf16-flex,fp8-flex}" \
        --peers '' --batches 1,4,8,16 --output "$OUT_DIR"
    "$PY" -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT_DIR/gpu-tests.txt"
    ;;
peers)
    "$PY" -m bench.engine --preset gpt2-large --variants "${VARIANTS:-bf16-sdpa}" --batches 1,16 \
        --peers eager,hf,hf-static --peer-batches 1,16 --output "$OUT_DIR"
    ;;
40b)
    # bf16 KV for 16 slots of 2048 positions (51 GB) and FP8 weights (41 GB) exceed 80 GB: size the cache to
    # the benchmark's prompt + new tokens (1280 positions, 32 GB).
    "$PY" -m bench.engine --preset gpt-large-40b --variants fp8-sdpa --batches 1,16 --peers '' \
        --max-seq-len 1280 --output "$OUT_DIR"
    ;;
triton)
    bash scripts/setup_triton.sh "$PY"
    export VENV_PYTHON="$PY"
    read -r HTTP_PORT GRPC_PORT METRICS_PORT < <("$PY" -c "
import socket; s=[socket.socket() for _ in range(3)]; [x.bind(('127.0.0.1', 0)) for x in s]
print(*[x.getsockname()[1] for x in s])")
    export HTTP_PORT GRPC_PORT METRICS_PORT
    bash scripts/serve.sh > "$OUT_DIR/tritonserver.log" 2>&1 &
    SERVER=$!
    trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
    URL="127.0.0.1:$GRPC_PORT" METRICS="http://127.0.0.1:$METRICS_PORT/metrics"
    "$PY" tools/warmup.py --url "$URL" --metrics-url "$METRICS" --model gpt_large --ready-timeout 400 \
        --batch-sizes 1,16 --prompt-len 1024 --max-tokens 256 --iters 3 --warmup 1 \
        --output-json "$OUT_DIR/triton-warmup.json" || echo "bench_gpu.sh: warmup checks failed (see triton-warmup.json)"
    "$PY" tools/compare_models.py --url "$URL" --metrics-url "$METRICS" --models gpt_large,gpt_large_stream \
        --qps 4,8,12,16 --duration 20 --prompt-len-min 128 --prompt-len-max 512 --max-new-tokens 256 \
        --output-json "$OUT_DIR/compare-models.json"
    kill -TERM $SERVER; wait $SERVER || true
    trap - EXIT
    "$PY" -m bench.engine --preset gpt2-large --variants bf16-sdpa --batches 16 --peers '' --output "$OUT_DIR"
    ;;
*)
    echo "bench_gpu.sh: unknown stage '$STAGE' (engine, peers, 40b, triton)" >&2
    exit 2
    ;;
esac
