#!/usr/bin/env bash
# Release check against a running server: tools/warmup.py, then tools/load_test.py with the runbook's envelope
# (--target-qps 4 --prompt-len-min 128 --prompt-len-max 512 --max-new-tokens 256), measured under
# tools/power_monitor.py. Artifacts go to $ARTIFACTS_DIR (default artifacts/release_check/):
#   warmup.json, load_test.json, load_test.requests.csv, load_test.png, power.json, summary.txt
#
# Usage: scripts/release_check.sh [--url HOST:PORT] [--metrics-url URL] [--model NAME] [--duration S]
#                                 [--slo SPEC] [--artifacts DIR] [-- EXTRA load_test.py ARGS...]
#   (`make release-check ARGS="--duration 30"` passes ARGS here)
# The server is found as every tool finds it (python -m tools.endpoints): --url, else $HOST:$GRPC_PORT
# (127.0.0.1:8001 when unset), the metrics at http://<that host>:$METRICS_PORT/metrics (8002) unless
# --metrics-url; the variables `make serve` reads. Other environment (flags win):
#   GRPC_URL METRICS_URL   the same as --url and --metrics-url
#   MODEL           model (default gpt_large)
#   DURATION        load-test seconds (default 120, as the runbook)
#   TARGET_QPS PROMPT_LEN_MIN PROMPT_LEN_MAX MAX_NEW_TOKENS   the envelope (defaults 4 128 512 256)
#   SLO             load-test SLOs (default e2e_ms=2600: 99% of requests end to end within 2.6 s, the top of
#                   the runbook's 2.3-2.6 s P99 envelope); SLO_ATTAINMENT (0.99), MAX_ERROR_RATE (0.01)
#   WARMUP_ITERS WARMUP_ROUNDS WARMUP_PROMPT_LEN WARMUP_MAX_TOKENS   warmup (defaults 6 2 512 256)
#   MAX_ABS_DIFF_TOL  fail the warmup when the server's max_abs_diff exceeds it (default: report only)
#   READY_TIMEOUT   seconds to wait for the model to be READY (default 300)
#   ARTIFACTS_DIR   where to write (default artifacts/release_check)
#   PYTHON          interpreter (default .venv/bin/python)
# Exit status: 0 all passed; 1 a check or SLO failed; 2 usage error or server unreachable/not ready.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
GRPC_URL="${GRPC_URL:-}"
METRICS_URL="${METRICS_URL:-}"
MODEL="${MODEL:-gpt_large}"
DURATION="${DURATION:-120}"
TARGET_QPS="${TARGET_QPS:-4}"
PROMPT_LEN_MIN="${PROMPT_LEN_MIN:-128}"
PROMPT_LEN_MAX="${PROMPT_LEN_MAX:-512}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-256}"
SLO="${SLO:-e2e_ms=2600}"
SLO_ATTAINMENT="${SLO_ATTAINMENT:-0.99}"
MAX_ERROR_RATE="${MAX_ERROR_RATE:-0.01}"
WARMUP_ITERS="${WARMUP_ITERS:-6}"
WARMUP_ROUNDS="${WARMUP_ROUNDS:-2}"
WARMUP_PROMPT_LEN="${WARMUP_PROMPT_LEN:-512}"
WARMUP_MAX_TOKENS="${WARMUP_MAX_TOKENS:-256}"
MAX_ABS_DIFF_TOL="${MAX_ABS_DIFF_TOL:-}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-artifacts/release_check}"
EXTRA=()

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "release_check: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --url) GRPC_URL="${2:?--url needs a value}"; shift 2 ;;
        --metrics-url) METRICS_URL="${2:?--metrics-url needs a value}"; shift 2 ;;
        --model) MODEL="${2:?--model needs a value}"; shift 2 ;;
        --duration) DURATION="${2:?--duration needs a value}"; shift 2 ;;
        --slo) SLO="${2:?--slo needs a value}"; shift 2 ;;
        --artifacts) ARTIFACTS_DIR="${2:?--artifacts needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found (run 'make setup')"
cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"
# One resolution for all three tools (the tools run as modules from the repository root: no install needed).
WHERE=()
[ -n "$GRPC_URL" ] && WHERE+=(--url "$GRPC_URL")
[ -n "$METRICS_URL" ] && WHERE+=(--metrics-url "$METRICS_URL")
# sets SERVER_URL, METRICS_URL and SERVER_FOUND (shell-quoted); exits 2 saying why on a bad variable or flag
resolved="$("$PYTHON" -m tools.endpoints --shell "${WHERE[@]}")" || exit 2
eval "$resolved"
mkdir -p "$ARTIFACTS_DIR" || die "cannot create $ARTIFACTS_DIR"
TOL_ARGS=()
[ -n "$MAX_ABS_DIFF_TOL" ] && TOL_ARGS=(--max-abs-diff-tol "$MAX_ABS_DIFF_TOL")
SUMMARY="$ARTIFACTS_DIR/summary.txt"

echo "release_check: $SERVER_FOUND; model $MODEL, artifacts in $ARTIFACTS_DIR"
echo "== 1/2 warmup =="
"$PYTHON" -m tools.warmup --url "$SERVER_URL" --metrics-url "$METRICS_URL" --model "$MODEL" \
    --ready-timeout "$READY_TIMEOUT" --iters "$WARMUP_ITERS" --warmup "$WARMUP_ROUNDS" \
    --prompt-len "$WARMUP_PROMPT_LEN" --max-tokens "$WARMUP_MAX_TOKENS" "${TOL_ARGS[@]}" \
    --output-json "$ARTIFACTS_DIR/warmup.json"
warmup_rc=$?
if [ "$warmup_rc" -eq 2 ]; then
    echo "warmup: exit 2 (usage or connection error)" >"$SUMMARY"
    die "warmup could not reach a ready server at $SERVER_URL; load test skipped"
fi

echo "== 2/2 load test ($DURATION s at $TARGET_QPS req/s, prompts $PROMPT_LEN_MIN-$PROMPT_LEN_MAX, $MAX_NEW_TOKENS new tokens) =="
"$PYTHON" -m tools.power_monitor --quiet --model "$MODEL" --url "$SERVER_URL" --metrics-url "$METRICS_URL" \
    --output-json "$ARTIFACTS_DIR/power.json" -- \
    "$PYTHON" -m tools.load_test --url "$SERVER_URL" --metrics-url "$METRICS_URL" --model "$MODEL" \
    --duration "$DURATION" --target-qps "$TARGET_QPS" \
    --prompt-len-min "$PROMPT_LEN_MIN" --prompt-len-max "$PROMPT_LEN_MAX" --max-new-tokens "$MAX_NEW_TOKENS" \
    --slo "$SLO" --slo-attainment "$SLO_ATTAINMENT" --max-error-rate "$MAX_ERROR_RATE" \
    --ready-timeout "$READY_TIMEOUT" --output-json "$ARTIFACTS_DIR/load_test.json" "${EXTRA[@]}"
load_rc=$?

verdict() { case "$1" in 0) echo passed ;; 1) echo FAILED ;; *) echo "ERROR (exit $1)" ;; esac; }
{
    echo "release check $(date -u +%Y-%m-%dT%H:%M:%SZ): server $SERVER_URL model $MODEL"
    echo "warmup:    $(verdict "$warmup_rc")  ($ARTIFACTS_DIR/warmup.json)"
    echo "load test: $(verdict "$load_rc")  ($ARTIFACTS_DIR/load_test.json, SLO $SLO, $DURATION s at $TARGET_QPS req/s)"
} | tee "$SUMMARY"

if [ "$warmup_rc" -eq 2 ] || [ "$load_rc" -eq 2 ]; then exit 2; fi
if [ "$warmup_rc" -ne 0 ] || [ "$load_rc" -ne 0 ]; then exit 1; fi
exit 0
