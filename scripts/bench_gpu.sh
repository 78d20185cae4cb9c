#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md, in stages that each fit a 10-minute call on the GPU machine.
#
# Usage: scripts/bench_gpu.sh STAGE... [-- OUT_DIR]      (OUT_DIR default: artifacts/bench, or $OUT when set)
#   setup    install the wheels carried in .whl/ (tritonserver from nvidia-pytriton, numpy<2 for its stub,
#            tritonclient, rapidjson, prometheus_client) into /tmp/site; every later stage needs it
#   tests    the GPU tests (tests/gpu)
#   engine   gpt2-large variants (bf16 and FP8 weight-only, SDPA) at batch 1 and 16, with the same-run peer
#            (Hugging Face static-cache generate) and a decode profile of each variant
#   40b      gpt-large-40b, bf16 and FP8 weight-only, batch 1 and 16 (--max-seq-len 1280)
#   triton   tritonserver with both models: READY time cold (empty compile cache) and warm (same cache, restart),
#            then tools/compare_models.py over the runbook envelope (Poisson, prompts 128-512, 256 new tokens)
#   triton2  the same sweep at twice the load, for a machine with two GPUs (one instance of each model per GPU)
# Prompt 1024 and 256 new tokens (greedy) unless a stage says otherwise; JSON and logs go to OUT_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-artifacts/bench}"
STAGES=()
while [ $# -gt 0 ]; do
    case "$1" in --) OUT_DIR="$2"; shift 2 ;; *) STAGES+=("$1"); shift ;; esac
done
[ ${#STAGES[@]} -gt 0 ] || { echo "usage: scripts/bench_gpu.sh setup|tests|engine|40b|triton|triton2 ... [-- OUT_DIR]" >&2; exit 2; }
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

free_ports() {
    "$PY" -c "import socket; s=[socket.socket() for _ in range(3)]; [x.bind(('127.0.0.1', 0)) for x in s]; print(*[x.getsockname()[1] for x in s])"
}

# start_server LOG NAME: tritonserver on free ports; appends "NAME <seconds to READY>" to OUT_DIR/ready.txt
start_server() {
    read -r HTTP_PORT GRPC_PORT METRICS_PORT < <(free_ports)
    export HTTP_PORT GRPC_PORT METRICS_PORT VENV_PYTHON="$PY"
    local t0=$SECONDS
    bash scripts/serve.sh >"$1" 2>&1 &
    SERVER=$!
    until curl -sf "127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null; do
        kill -0 $SERVER 2>/dev/null || { echo "tritonserver died; tail of $1:" >&2; tail -30 "$1" >&2; return 1; }
        sleep 1
    done
    echo "$2 $((SECONDS - t0))" | tee -a "$OUT_DIR/ready.txt"
}

stop_server() { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }

sweep() {  # QPS list, output name
    "$PY" tools/compare_models.py --url "127.0.0.1:$GRPC_PORT" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
        --models gpt_large,gpt_large_stream --qps "$1" --duration 20 --prompt-len-min 128 --prompt-len-max 512 \
        --max-new-tokens 256 --cooldown 2 --stop-after-fail --no-progress \
        --output-json "$OUT_DIR/$2.json" --output-png "$OUT_DIR/$2.png"
}

for stage in "${STAGES[@]}"; do
    echo "== $stage =="
    case "$stage" in
    setup)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        bash scripts/setup_triton.sh "$PY" | tail -1
        nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT_DIR/device.txt"
        ;;
    tests)
        "$PY" -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT_DIR/gpu-tests.txt"
        ;;
    engine)
        "$PY" -m bench.engine --preset gpt2-large --variants "${VARIANTS:-bf16-sdpa,fp8wo-sdpa}" --batches 1,16 \
            --peers hf-static --peer-batches 1,16 --accuracy --output "$OUT_DIR"
        ;;
    40b)
        "$PY" -m bench.engine --preset gpt-large-40b --variants bf16-sdpa,fp8wo-sdpa --batches 1,16 --peers '' \
            --max-seq-len 1280 --output "$OUT_DIR"
        ;;
    triton)  # KEEP_CACHE=1: start on the compile cache a previous run left (a warm start)
        export TORCHINDUCTOR_CACHE_DIR="/tmp/gptserve-compile-cache"
        if [ "${KEEP_CACHE:-0}" = 1 ]; then
            start_server "$OUT_DIR/tritonserver-warm.log" ready_warm_s
        else
            rm -rf "$TORCHINDUCTOR_CACHE_DIR"
            start_server "$OUT_DIR/tritonserver-cold.log" ready_cold_s
        fi
        sweep "${QPS:-4,8,16,24,32}" compare-models
        stop_server
        ;;
    triton2)
        export TORCHINDUCTOR_CACHE_DIR="/tmp/gptserve-compile-cache"
        start_server "$OUT_DIR/tritonserver-2gpu.log" ready_2gpu_s
        sweep "${QPS:-8,16,32,48}" compare-models-2gpu
        stop_server
        ;;
    *)
        echo "bench_gpu.sh: unknown stage '$stage'" >&2
        exit 2
        ;;
    esac
done
