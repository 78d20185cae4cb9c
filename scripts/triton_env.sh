# shellcheck shell=bash
# Source this file (do not execute it) to get the environment for running tritonserver (nvidia-pytriton wheel):
#
#   source scripts/triton_env.sh && "$TRITONSERVER" --model-repository ... --backend-directory "$BACKEND_DIR"
#
# Inputs (optional):
#   TRITONSERVER + BACKEND_DIR  both set (e.g. the NGC image's /opt/tritonserver/bin/tritonserver and
#                 /opt/tritonserver/backends): used as they are, no wheel lookup; PYTHONPATH gets <repo> only
#   VENV_PYTHON   interpreter whose site-packages holds nvidia-pytriton (default <repo>/.venv/bin/python)
#   TRITON_HOME   what scripts/setup_triton.sh built (default <sys.prefix of VENV_PYTHON>/triton)
# Exports:
#   TRITONSERVER     $TRITON_HOME/bin/tritonserver: a wrapper that execs the real binary (same PID, so signals
#                    reach tritonserver) with the stub's interpreter pointed at $TRITON_HOME/stub_python
#   TRITONSERVER_BIN the real binary inside the wheel
#   BACKEND_DIR      --backend-directory value ($TRITON_HOME/backends, holds python/ with the stub)
#   LD_LIBRARY_PATH  prefixed with <site-packages>/nvidia_pytriton.libs
#   PYTHONPATH       <repo>:<site-packages>[:old PYTHONPATH]. The python backend stub embeds the *system*
#                    libpython in isolated mode and never sees the virtualenv; stub_python's .pth adds each
#                    PYTHONPATH entry with site.addsitedir, so this is how model.py finds torch, numpy and gptserve.
#   TRITON_REPO_ROOT, TRITON_PYTHON_VERSION
# Returns non-zero (without exiting the calling shell) if something is missing.

_triton_env_given() {  # TRITONSERVER and BACKEND_DIR from the environment (a Triton image)
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ ! -x "$TRITONSERVER" ] || [ ! -d "$BACKEND_DIR" ]; then
        echo "triton_env.sh: TRITONSERVER='$TRITONSERVER' is not executable or BACKEND_DIR='$BACKEND_DIR' is not a directory" >&2
        return 1
    fi
    case ":${PYTHONPATH:-}:" in
        *":$repo:"*) ;;
        *) PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    TRITON_REPO_ROOT="$repo"
    export TRITONSERVER BACKEND_DIR PYTHONPATH TRITON_REPO_ROOT
}

_triton_env() {
    local repo py info pyver prefix purelib ptdir sp libs home pp
    if [ -n "${TRITONSERVER:-}" ] && [ -n "${BACKEND_DIR:-}" ]; then
        _triton_env_given
        return
    fi
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    py="${VENV_PYTHON:-$repo/.venv/bin/python}"
    if ! command -v "$py" >/dev/null 2>&1; then
        echo "triton_env.sh: python '$py' not found; run 'make setup' (or set VENV_PYTHON)" >&2
        return 1
    fi
    info="$("$py" - <<'PY'
import importlib.util, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
loc = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else "-"
print(f"{sys.version_info.major}.{sys.version_info.minor}", sys.prefix, sysconfig.get_paths()["purelib"], loc)
PY
)" || { echo "triton_env.sh: could not run '$py'" >&2; return 1; }
    read -r pyver prefix purelib ptdir <<<"$info"
    if [ "$ptdir" = "-" ]; then
        echo "triton_env.sh: nvidia-pytriton is not installed for $py; run 'make setup'" >&2
        return 1
    fi
    sp="$(cd "$ptdir/.." && pwd)"          # site-packages holding pytriton (may differ from purelib: pip --target)
    libs="$sp/nvidia_pytriton.libs"
    home="${TRITON_HOME:-$prefix/triton}"
    if [ ! -x "$home/bin/tritonserver" ] || [ ! -x "$home/backends/python/triton_python_backend_stub" ]; then
        echo "triton_env.sh: Triton python backend not assembled in $home; run scripts/setup_triton.sh (or 'make setup')" >&2
        return 1
    fi
    pp="$repo:$sp"
    [ "$purelib" != "$sp" ] && pp="$pp:$purelib"
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$libs:"*) ;;
        *) LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    case ":${PYTHONPATH:-}:" in
        *":$pp:"*) ;;
        *) PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    TRITONSERVER="$home/bin/tritonserver"
    TRITONSERVER_BIN="$ptdir/tritonserver/bin/tritonserver"
    BACKEND_DIR="$home/backends"
    TRITON_REPO_ROOT="$repo"
    TRITON_PYTHON_VERSION="$pyver"
    export TRITONSERVER TRITONSERVER_BIN BACKEND_DIR LD_LIBRARY_PATH PYTHONPATH TRITON_REPO_ROOT TRITON_PYTHON_VERSION
}
if _triton_env; then
    unset -f _triton_env _triton_env_given
else
    unset -f _triton_env _triton_env_given
    return 1 2>/dev/null || exit 1
fi
