#!/usr/bin/env bash
# Rollback drill (the runbook's "rollback plan validated" step), on one host: serve a candidate as a new model
# version beside the current one, run the release check against it, then pin the version that passed:
#   - candidate passed  -> pin version 2 (promote) and prove it serves;
#   - candidate failed  -> pin version 1 (roll back) and prove it serves again: the same greedy request gives the
#                          same tokens as before the candidate arrived, and version 2 is no longer served.
# The drill runs on a temporary copy of the model: version 1 = --current, version 2 = --candidate (both default to
# this checkout's model_repository/<model>/1). tritonserver runs in POLL model-control mode, so pinning is an edit
# of config.pbtxt's version_policy that Triton applies by itself (no model-repository API call, which serve.sh
# keeps restricted). Kubernetes: `kubectl rollout undo deployment/gptserve` (docs/deployment.md#rollback).
#
# Usage: scripts/rollback_drill.sh [--model NAME] [--current DIR] [--candidate DIR] [--fail-candidate]
#                                  [--artifacts DIR] [-- EXTRA release_check.sh ARGS...]
#   --fail-candidate  run the release check with an SLO no server meets (e2e_ms=1), to exercise the rollback
# Environment: PYTHON (default .venv/bin/python), READY_TIMEOUT (300 s), and release_check.sh's own variables;
#   the drill's release-check envelope is sized for the CPU (DURATION 15, TARGET_QPS 4, prompts 16-64, 32 new
#   tokens, short warm-up) unless they are set.
# Artifacts ($ARTIFACTS_DIR, default artifacts/rollback_drill): server.log, release_check/, summary.txt
# Exit status: 0 the drill completed (promoted, or rolled back and proven serving); 1 the pinned version does not
# serve as it should; 2 usage error or the server did not start.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
MODEL=gpt_large
CURRENT=""
CANDIDATE=""
FAIL_CANDIDATE=0
ARTIFACTS_DIR="${ARTIFACTS_DIR:-artifacts/rollback_drill}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
EXTRA=()

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "rollback_drill: error: $*" >&2; exit 2; }
say() { echo "rollback_drill: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="${2:?--model needs a value}"; shift 2 ;;
        --current) CURRENT="${2:?--current needs a value}"; shift 2 ;;
        --candidate) CANDIDATE="${2:?--candidate needs a value}"; shift 2 ;;
        --fail-candidate) FAIL_CANDIDATE=1; shift ;;
        --artifacts) ARTIFACTS_DIR="${2:?--artifacts needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"
SOURCE="model_repository/$MODEL"
[ -f "$SOURCE/config.pbtxt" ] || die "no model '$MODEL' in model_repository/"
CURRENT="${CURRENT:-$SOURCE/1}"
CANDIDATE="${CANDIDATE:-$SOURCE/1}"
[ -d "$CURRENT" ] || die "--current $CURRENT is not a directory"
[ -d "$CANDIDATE" ] || die "--candidate $CANDIDATE is not a directory"
mkdir -p "$ARTIFACTS_DIR" || die "cannot create $ARTIFACTS_DIR"
SUMMARY="$ARTIFACTS_DIR/summary.txt"
WORK="$(mktemp -d)"
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" && wait "$SERVER_PID"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- the repository: version 1 = current, version 2 = candidate, both served --------------------------------
REPO="$WORK/model_repository"
CONFIG="$REPO/$MODEL/config.pbtxt"
mkdir -p "$REPO/$MODEL"
cp "$SOURCE/config.pbtxt" "$CONFIG"
cp -r "$CURRENT" "$REPO/$MODEL/1"
cp -r "$CANDIDATE" "$REPO/$MODEL/2"

serve_versions() {  # pin the served versions; Triton (POLL mode) reloads the model by itself
    local policy="version_policy: { specific: { versions: [ $1 ] } }"
    grep -v '^version_policy:' "$CONFIG" >"$CONFIG.new" && echo "$policy" >>"$CONFIG.new" && mv "$CONFIG.new" "$CONFIG"
}
serve_versions "1, 2"

# --- the server ----------------------------------------------------------------------------------------------
launch_server() {  # on three free ports, in POLL mode; its output goes to server.log
    read -r HTTP_PORT GRPC_PORT METRICS_PORT < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
    ) || die "could not pick free ports with $PYTHON"
    # HEALTH_INTERVAL=0: the drill reloads versions in place (poll mode); the supervisor's deep check would count
    # the reload window as a failing server and stop it (production rolls back by replacing pods instead)
    export HTTP_PORT GRPC_PORT METRICS_PORT MODEL_REPOSITORY="$REPO" HOST=127.0.0.1 HEALTH_INTERVAL=0
    say "serving $MODEL versions 1 ($CURRENT) and 2 ($CANDIDATE) from $REPO on 127.0.0.1:$HTTP_PORT/$GRPC_PORT/$METRICS_PORT"
    bash scripts/serve.sh --model-control-mode=poll --repository-poll-secs=1 >>"$ARTIFACTS_DIR/server.log" 2>&1 &
    SERVER_PID=$!
}

# http VERB PATH [BODY]: prints "<status> <body>" (status 0 when nothing answers)
http() {
    "$PYTHON" - "$HTTP_PORT" "$@" <<'PY'
import sys, urllib.error, urllib.request
port, verb, path = sys.argv[1:4]
data = sys.argv[4].encode() if len(sys.argv) > 4 else None
try:
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=verb),
                                timeout=30) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except OSError as e:
    print(0, e)
PY
}
version_ready() { [ "$(http GET "/v2/models/$MODEL/versions/$1/ready" | cut -d' ' -f1)" = 200 ]; }

# wait_until COMMAND...: poll every second until COMMAND succeeds (0), READY_TIMEOUT passes (1) or the server
# exits (3)
wait_until() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@"; do
        kill -0 "$SERVER_PID" 2>/dev/null || return 3
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}
both_ready() { version_ready 1 && version_ready 2; }
only_ready() { version_ready "$1" && ! version_ready "$2"; }
server_died() { tail -n 20 "$ARTIFACTS_DIR/server.log" >&2; die "tritonserver exited $1 (log: $ARTIFACTS_DIR/server.log)"; }

: >"$ARTIFACTS_DIR/server.log"
for attempt in 1 2 3; do  # another process may take a port between picking it and binding it: pick again
    launch_server
    wait_until both_ready
    case $? in
        0) break ;;
        1) die "versions 1 and 2 not ready after $READY_TIMEOUT s (log: $ARTIFACTS_DIR/server.log)" ;;
    esac
    grep -q "already in use" "$ARTIFACTS_DIR/server.log" && [ "$attempt" -lt 3 ] || server_died "while loading versions 1 and 2"
    say "a port was taken meanwhile: starting again"
    : >"$ARTIFACTS_DIR/server.log"
done

PROBE='{"input_ids": [72, 101, 108, 108, 111], "max_tokens": 8, "temperature": 0, "exclude_input_in_output": true}'
generate() { http POST "/v2/models/$MODEL$1/generate" "$PROBE"; }
field() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1].split(" ", 1)[1])[sys.argv[2]])' "$1" "$2"; }
before="$(generate /versions/1)"
[ "${before%% *}" = 200 ] || die "version 1 did not answer before the candidate's check: $before"

# --- the release check against the candidate (requests without a version go to the newest: 2) ---------------
CHECK_ARGS=(--model "$MODEL" --url "127.0.0.1:$GRPC_PORT" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics"
            --artifacts "$ARTIFACTS_DIR/release_check" --duration "${DURATION:-15}")
[ "$FAIL_CANDIDATE" = 1 ] && CHECK_ARGS+=(--slo e2e_ms=1)
say "release check of the candidate (version 2)$([ "$FAIL_CANDIDATE" = 1 ] && echo ', forced to fail: SLO e2e_ms=1')"
TARGET_QPS="${TARGET_QPS:-4}" PROMPT_LEN_MIN="${PROMPT_LEN_MIN:-16}" PROMPT_LEN_MAX="${PROMPT_LEN_MAX:-64}" \
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-32}" WARMUP_ITERS="${WARMUP_ITERS:-1}" WARMUP_ROUNDS="${WARMUP_ROUNDS:-1}" \
WARMUP_PROMPT_LEN="${WARMUP_PROMPT_LEN:-32}" WARMUP_MAX_TOKENS="${WARMUP_MAX_TOKENS:-16}" PYTHON="$PYTHON" \
    bash scripts/release_check.sh "${CHECK_ARGS[@]}" "${EXTRA[@]}"
check_rc=$?
[ "$check_rc" -eq 2 ] && die "the release check could not run against the candidate (exit 2)"
candidate_requests="$("$PYTHON" - "$METRICS_PORT" "$MODEL" <<'PY'
import re, sys, urllib.request
port, model = sys.argv[1:]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
pattern = rf'^nv_inference_request_success{{(?=[^}}]*model="{model}")(?=[^}}]*version="2")[^}}]*}} (\S+)'
print(int(sum(float(v) for v in re.findall(pattern, text, re.M))))
PY
)" || die "could not read the metrics endpoint"
[ "$candidate_requests" -gt 0 ] || die "the release check's requests did not reach version 2"

# --- pin the version that passed and prove it serves ---------------------------------------------------------
if [ "$check_rc" -eq 0 ]; then
    keep=2 drop=1 verdict="candidate passed the release check: promoted (version 2 pinned)"
else
    keep=1 drop=2 verdict="candidate FAILED the release check: rolled back (version 1 pinned)"
fi
say "$verdict"
serve_versions "$keep"
wait_until only_ready "$keep" "$drop"
case $? in
    3) server_died "while pinning version $keep" ;;
    1) echo "$verdict; version $keep did not become the only version served within $READY_TIMEOUT s" | tee "$SUMMARY"
       exit 1 ;;
esac
after="$(generate "")"
problem=""
if [ "${after%% *}" != 200 ]; then
    problem="a request without a version failed: $after"
elif [ "$(field "$after" model_version)" != "$keep" ]; then
    problem="a request without a version was answered by version $(field "$after" model_version), not $keep"
elif [ "$keep" = 1 ] && [ "$(field "$after" output_ids)" != "$(field "$before" output_ids)" ]; then
    problem="version 1 answers differently after the rollback: $(field "$after" output_ids) vs $(field "$before" output_ids)"
fi
{
    echo "rollback drill $(date -u +%Y-%m-%dT%H:%M:%SZ): model $MODEL, current $CURRENT, candidate $CANDIDATE"
    echo "release check of version 2: exit $check_rc, $candidate_requests requests served by version 2 ($ARTIFACTS_DIR/release_check/summary.txt)"
    echo "$verdict"
    if [ -z "$problem" ]; then
        echo "version $keep serves alone: model_version $keep answered, output_ids $(field "$after" output_ids)"
    else
        echo "PROBLEM: $problem"
    fi
} | tee "$SUMMARY"
[ -z "$problem" ]
