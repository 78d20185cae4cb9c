#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md, in stages that each fit a 10-minute call on the GPU machine.
#
# Usage: scripts/bench_gpu.sh STAGE... [-- OUT_DIR]      (OUT_DIR default: artifacts/bench, or $OUT when set)
#   setup    install the wheels carried in .whl/ (tritonserver from nvidia-pytriton, numpy<2 for its stub,
#            tritonclient, rapidjson, prometheus_client) into /tmp/site; every later stage needs it
#   tests    the GPU tests (tests/gpu)
#   engine   gpt2-large variants (VARIANTS, default bf16 and FP8 weight-only, SDPA) at batch 1 and 16 (BATCHES;
#            empty: none), with the same-run peer (PEERS, default Hugging Face static-cache generate; PEERS= for
#            none) and the accuracy check (ACCURACY=0 skips it; ACCURACY_ROWS=1 runs its prompts one at a time)
#   profile  bench.profile_decode of each VARIANTS entry (gpt2-large, batch 1 and 16): kernels per step, time per class
#   prefill  gpt-large-40b's prefill of 16 x 1024 tokens: its linears' FP8 and int8 parts against bf16
#            (bench.prefill_linear_sweep), then bench.profile_decode --prefill of each VARIANTS entry
#   attention  bench.decode_attention_sweep: split-KV's launch configurations against the SDPA path, gpt2-large
#            with a bf16 cache and gpt-large-40b with an FP8 one, batches 1, 4, 16
#   40b      gpt-large-40b, bf16 and FP8 weight-only (VARIANTS), batch 1 and 16 (BATCHES; empty: none)
#            (--max-seq-len 1280); ACCURACY=1: FP8 against bf16 on weights with clear logit gaps
#            (engine and 40b: CONSTANTS="module.NAME=value ..." sets engine constants for the run, e.g.
#            CONSTANTS=gptserve.engine.decode_attention.PROGRAMS=528; BASE=DIR first runs the same variants from
#            the gptserve package in DIR, the same run's peer for a change: make it with `mkdir -p artifacts/base &&
#            git archive COMMIT gptserve | tar -x -C artifacts/base` and carry it; its JSON goes to OUT_DIR/base;
#            CONSTANTS apply to the working tree's run alone; the base runs with this tree's bench package)
#   triton   tritonserver with both models: READY time cold (empty compile cache) and warm (same cache, restart),
#            then tools/compare_models.py over the runbook envelope (Poisson, prompts 128-512, 256 new tokens)
#            and py-spy of the stream stub at 16 QPS (every thread, and with --gil the lock holder alone)
#   stream   the stream model alone: READY, a sweep, the py-spy profiles at 16 QPS
#   scheduler  the in-flight scheduler in-process (bench.scheduler), no Triton
#   ready    READY of both models on the compile cache an earlier stage left (a warm start; COLD=1: on an
#            empty cache), then stop
#   triton-variant  the stream model alone with STREAM_PARAMS (e.g. "stream_interval=4 delivery_threads=1")
#   triton2  the same sweep at twice the load, for a machine with two GPUs (one instance of each model per GPU),
#            then py-spy of both stream stubs at 32 QPS
# Prompt 1024 and 256 new tokens (greedy) unless a stage says otherwise; JSON and logs go to OUT_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-artifacts/bench}"
STAGES=()
while [ $# -gt 0 ]; do
    case "$1" in --) OUT_DIR="$2"; shift 2 ;; *) STAGES+=("$1"); shift ;; esac
done
STAGE_NAMES="setup|tests|engine|profile|prefill|attention|40b|triton|stream|ready|triton-variant|triton2|scheduler"
[ ${#STAGES[@]} -gt 0 ] || { echo "usage: scripts/bench_gpu.sh $STAGE_NAMES ... [-- OUT_DIR]" >&2; exit 2; }
PY="${PYTHON:-python3}"
[[ "$PY" != */* ]] || PY="$(realpath "$PY")"  # a path stays valid where bench_engine changes directory
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"  # absolute: bench_engine runs BASE's code from BASE
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

free_ports() {
    "$PY" -c "import socket; s=[socket.socket() for _ in range(3)]; [x.bind(('127.0.0.1', 0)) for x in s]; print(*[x.getsockname()[1] for x in s])"
}

# start_server LOG NAME: plain tritonserver (`tritonserver --model-repository model_repository`, the gRPC path
# the benchmarks load; scripts/serve.sh's HTTP front and supervisor are left out: the GPU machine's upload limit
# has no room for caddy's wheel) on free ports; appends "NAME <seconds to READY>" to OUT_DIR/ready.txt
start_server() {
    read -r HTTP_PORT GRPC_PORT METRICS_PORT < <(free_ports)
    local t0=$SECONDS
    (VENV_PYTHON="$PY" source scripts/triton_env.sh && exec "$TRITONSERVER" --model-repository "$REPOSITORY" \
        --backend-directory "$BACKEND_DIR" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
        --metrics-port "$METRICS_PORT" --allow-metrics true >"$1" 2>&1) &
    SERVER=$!
    until curl -sf "127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null; do
        kill -0 $SERVER 2>/dev/null || { echo "tritonserver died; tail of $1:" >&2; tail -30 "$1" >&2; return 1; }
        sleep 1
    done
    echo "$2 $((SECONDS - t0))" | tee -a "$OUT_DIR/ready.txt"
}

constants() {  # CONSTANTS="module.NAME=value ..." -> bench.engine's --constant options (engine and 40b stages)
    local c
    for c in ${CONSTANTS:-}; do echo "--constant $c"; done
}

# bench_engine ARGS... [-- ARGS of the working tree's run only]: bench.engine from the working tree; with BASE, first
# from BASE's gptserve, without peers or the accuracy check. It runs with BASE as its working directory:
# `python -m` puts that first on the path, ahead of PYTHONPATH, which then holds only this repository (for bench).
# PYTHONPATH without /tmp/site: its numpy 1.26 (for the stub) breaks the image's transformers (HF peer).
bench_engine() {
    local common=() own=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do common+=("$1"); shift; done
    [ $# -gt 0 ] && shift && own=("$@")
    if [ -n "${BASE:-}" ]; then
        [ -d "$BASE/gptserve" ] || { echo "BASE=$BASE holds no gptserve package" >&2; return 1; }
        (cd "$BASE" && PYTHONPATH="$OLDPWD" "$PY" -m bench.engine "${common[@]}" --peers '' --output "$OUT_DIR/base")
    fi
    PYTHONPATH="$PWD" "$PY" -m bench.engine "${common[@]}" ${own[@]+"${own[@]}"} --output "$OUT_DIR"
}

stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }

profile_stream() {  # QPS: py-spy of every stream stub under a 20 s load at QPS: all threads, and the GIL holder alone
    local stub i=0 pids=()  # wait for these alone: a bare `wait` would wait for the server too
    "$PY" tools/load_test.py --url "127.0.0.1:$GRPC_PORT" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
        --model gpt_large_stream --target-qps "$1" --duration 20 --prompt-len-min 128 --prompt-len-max 512 \
        --max-new-tokens 256 --output-json "$OUT_DIR/load-stream-$1.json" >"$OUT_DIR/load-stream-$1.log" 2>&1 &
    pids+=($!)
    sleep 6
    for stub in $(pgrep -f "triton_python_backend_stub.*gpt_large_stream"); do
        /tmp/site/bin/py-spy record --pid "$stub" -d 10 -r 200 --threads -f raw --nonblocking \
            -o "$OUT_DIR/pyspy-stream-$1-$i.txt" >/dev/null 2>&1 || echo "py-spy failed" &
        pids+=($!)
        /tmp/site/bin/py-spy record --pid "$stub" -d 10 -r 200 --threads --gil -f raw --nonblocking \
            -o "$OUT_DIR/pyspy-gil-stream-$1-$i.txt" >/dev/null 2>&1 || echo "py-spy --gil failed" &
        pids+=($!)
        i=$((i + 1))
    done
    wait "${pids[@]}"
    tail -25 "$OUT_DIR/load-stream-$1.log"
}

sweep() {  # QPS list, output name[, models]
    "$PY" tools/compare_models.py --url "127.0.0.1:$GRPC_PORT" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
        --models "${3:-gpt_large,gpt_large_stream}" --qps "$1" --duration 20 --prompt-len-min 128 --prompt-len-max 512 \
        --max-new-tokens 256 --cooldown 2 --stop-after-fail --no-progress \
        --output-json "$OUT_DIR/$2.json" --output-png "$OUT_DIR/$2.png"
}

REPOSITORY=model_repository

# use_compile_cache: inductor's cache and Triton's (the engine's own kernels) in one directory, so removing it
# makes a start cold, as a container without its cache volume would be
use_compile_cache() {
    export TORCHINDUCTOR_CACHE_DIR="/tmp/gptserve-compile-cache" TRITON_CACHE_DIR="/tmp/gptserve-compile-cache/triton"
}

# with_stream_parameters "k=v ...": REPOSITORY becomes a copy of gpt_large_stream alone, with these parameters
with_stream_parameters() {
    REPOSITORY=/tmp/model_repository-variant
    rm -rf "$REPOSITORY" && mkdir -p "$REPOSITORY" && cp -r model_repository/gpt_large_stream "$REPOSITORY/"
    local cfg="$REPOSITORY/gpt_large_stream/config.pbtxt" entries=() kv
    for kv in $1; do entries+=("  { key: \"${kv%%=*}\" value: { string_value: \"${kv#*=}\" } }"); done
    { echo "parameters ["; (IFS=,; echo "${entries[*]}" | sed 's/} },  {/} },\n  {/g'); echo "]"; } >>"$cfg"
    tail -4 "$cfg"
}

for stage in "${STAGES[@]}"; do
    echo "== $stage =="
    case "$stage" in
    setup)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        bash scripts/setup_triton.sh "$PY" | tail -1
        nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$OUT_DIR/device.txt"
        ;;
    tests)  # TESTS narrows them with pytest -k
        "$PY" -m pytest tests/gpu -q --tb=short -p no:cacheprovider ${TESTS:+-k "$TESTS"} 2>&1 | tail -60 | tee "$OUT_DIR/gpu-tests.txt"
        ;;
    stream)  # the stream model alone: READY, a sweep, a profile under load
        use_compile_cache
        REPOSITORY=/tmp/model_repository-stream
        rm -rf "$REPOSITORY" && mkdir -p "$REPOSITORY" && cp -r model_repository/gpt_large_stream "$REPOSITORY/"
        start_server "$OUT_DIR/tritonserver-stream.log" ready_stream_only_s
        sweep "${QPS:-4,8,16,24,32}" compare-models-stream gpt_large_stream
        profile_stream 16
        stop_server
        REPOSITORY=model_repository
        ;;
    scheduler)
        "$PY" -m bench.scheduler --preset gpt2-large --concurrency 16 --requests 48 | tee "$OUT_DIR/scheduler.json"
        ;;
    engine)
        bench_engine --preset gpt2-large --variants "${VARIANTS:-bf16-sdpa,fp8wo-sdpa}" --batches "${BATCHES-1,16}" \
            -- $(constants) --peers "${PEERS-hf-static}" --peer-batches 1,16 \
            $([ "${ACCURACY:-1}" = 1 ] && echo --accuracy --accuracy-rows "${ACCURACY_ROWS:-0}")
        ;;
    profile)  # where a decode step's GPU time goes, per VARIANTS entry: kernels per step, time per kernel class
        for variant in $(echo "${VARIANTS:?set VARIANTS, e.g. bf16-sdpa,bf16-fused}" | tr , " "); do
            PYTHONPATH="$PWD" "$PY" -m bench.profile_decode --preset gpt2-large --variant "$variant" --batches 1,16 \
                --output "$OUT_DIR" | tee "$OUT_DIR/profile-$variant.txt"
        done
        ;;
    prefill)
        PYTHONPATH="$PWD" "$PY" -m bench.prefill_linear_sweep --preset gpt-large-40b --output "$OUT_DIR" 2>&1 \
            | grep -v Warning | tee "$OUT_DIR/prefill-linear-sweep.txt"
        for variant in $(echo "${VARIANTS:-bf16-sdpa,fp8wo-sdpa}" | tr , " "); do
            PYTHONPATH="$PWD" "$PY" -m bench.profile_decode --preset gpt-large-40b --variant "$variant" --prefill \
                --batches 16 --steps 3 --max-seq-len 1280 --output "$OUT_DIR" \
                | tee "$OUT_DIR/profile-prefill-$variant.txt"
        done
        ;;
    attention)
        for preset_cache in "gpt2-large bf16" "gpt-large-40b fp8"; do
            read -r preset cache <<<"$preset_cache"
            PYTHONPATH="$PWD" "$PY" -m bench.decode_attention_sweep --preset "$preset" --cache "$cache" \
                --output "$OUT_DIR" 2>&1 | grep -v Warning | tee "$OUT_DIR/decode-attention-sweep-$preset-$cache.txt"
        done
        ;;
    40b)
        bench_engine --preset gpt-large-40b --variants "${VARIANTS:-bf16-sdpa,fp8wo-sdpa}" --batches "${BATCHES-1,16}" \
            --max-seq-len 1280 -- $(constants) --peers '' $([ "${ACCURACY:-0}" = 1 ] && echo --accuracy)
        ;;
    triton)  # KEEP_CACHE=1: start on the compile cache a previous run left (a warm start)
        use_compile_cache
        if [ "${KEEP_CACHE:-0}" = 1 ]; then
            start_server "$OUT_DIR/tritonserver-warm.log" ready_warm_s
        else
            rm -rf "$TORCHINDUCTOR_CACHE_DIR"
            start_server "$OUT_DIR/tritonserver-cold.log" ready_cold_s
        fi
        sweep "${QPS:-4,8,16,24,32}" compare-models
        profile_stream 16
        stop_server
        ;;
    ready)  # READY of both models on the compile cache an earlier stage left (COLD=1: on none), then stop
        use_compile_cache
        if [ "${COLD:-0}" = 1 ]; then
            rm -rf "$TORCHINDUCTOR_CACHE_DIR"
            start_server "$OUT_DIR/tritonserver-ready-cold.log" ready_cold_s
        else
            start_server "$OUT_DIR/tritonserver-ready.log" ready_warm_s
        fi
        stop_server
        ;;
    triton-variant)  # the stream model alone with STREAM_PARAMS, on the compile cache of an earlier triton stage
        use_compile_cache
        with_stream_parameters "${STREAM_PARAMS:?set STREAM_PARAMS, e.g. stream_interval=4}"
        start_server "$OUT_DIR/tritonserver-variant.log" ready_variant_s
        sweep "${QPS:-8,16,24,32}" compare-models-variant gpt_large_stream
        stop_server
        REPOSITORY=model_repository
        ;;
    triton2)
        use_compile_cache
        start_server "$OUT_DIR/tritonserver-2gpu.log" ready_2gpu_s
        sweep "${QPS:-8,16,32,48}" compare-models-2gpu
        profile_stream 32
        stop_server
        ;;
    *)
        echo "bench_gpu.sh: unknown stage '$stage'" >&2
        exit 2
        ;;
    esac
done
