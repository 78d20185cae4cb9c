#!/usr/bin/env bash
# Start tritonserver (from the nvidia-pytriton wheel) on this repo's model repository.
#
# Usage: scripts/serve.sh [extra tritonserver args...]
#   MODEL_REPOSITORY (default model_repository), HTTP_PORT (8000), GRPC_PORT (8001), METRICS_PORT (8002)
#   VENV_PYTHON / TRITON_BACKEND_DIR: see scripts/triton_env.sh
#
# The script ends with `exec`, so tritonserver replaces this shell: SIGTERM/SIGINT sent to this PID reach
# tritonserver directly, which then unloads the models and exits 0.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/triton_env.sh
source "$REPO_ROOT/scripts/triton_env.sh"

MODEL_REPOSITORY="${MODEL_REPOSITORY:-$REPO_ROOT/model_repository}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"

if [ ! -d "$MODEL_REPOSITORY" ]; then
    echo "serve.sh: error: model repository '$MODEL_REPOSITORY' does not exist" >&2
    exit 1
fi

# Refuse to start when a port is already taken (tritonserver's own message is easy to miss in its log).
# A bind test with SO_REUSEADDR: fails only if something is bound/listening, not for TIME_WAIT leftovers.
taken="$("${VENV_PYTHON:-$REPO_ROOT/.venv/bin/python}" - "$HTTP_PORT:http" "$GRPC_PORT:grpc" "$METRICS_PORT:metrics" <<'PY'
import socket, sys
for arg in sys.argv[1:]:
    port, name = arg.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", int(port)))
    except OSError as e:
        print(f"{name} port {port} is already in use ({e.strerror})")
    finally:
        s.close()
PY
)"
if [ -n "$taken" ]; then
    echo "serve.sh: error: $taken" | sed '2,$s/^/serve.sh: error: /' >&2
    echo "serve.sh: set HTTP_PORT / GRPC_PORT / METRICS_PORT to free ports" >&2
    exit 1
fi

exec "$TRITONSERVER" \
    --model-repository "$MODEL_REPOSITORY" \
    --backend-directory "$BACKEND_DIR" \
    --http-port "$HTTP_PORT" \
    --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" \
    --allow-metrics true \
    "$@"
