#!/usr/bin/env bash
# Assemble a runnable Triton (python backend) from the nvidia-pytriton wheel.
#
# Usage: scripts/setup_triton.sh [PYTHON]
#   PYTHON       interpreter whose site-packages holds nvidia-pytriton
#                (default: $VENV_PYTHON, else <repo>/.venv/bin/python)
#   TRITON_HOME  where to build everything (default: <sys.prefix of PYTHON>/triton, i.e. .venv/triton)
#
# Creates, idempotently (unchanged files are not rewritten):
#   $TRITON_HOME/backends/python/   libtriton_python.so, triton_python_backend_utils.py and the
#                                   triton_python_backend_stub for PYTHON's major.minor (copies, not symlinks)
#   $TRITON_HOME/stub_python/       a tiny venv-like prefix for the stub's embedded interpreter (see below)
#   $TRITON_HOME/bin/tritonserver   wrapper that puts stub_python/bin first on PATH and execs the real binary
#
# Why stub_python: the stub embeds the *system* libpython3.X and initialises it with
# PyConfig_InitIsolatedConfig, so PYTHONPATH is ignored and the virtualenv is invisible. Its interpreter
# finds its prefix by looking up "python3" on PATH; finding stub_python/bin/python3 next to a pyvenv.cfg
# (home = the system python) makes it use the system stdlib (matching its libpython) plus
# stub_python's site-packages, whose .pth file adds every PYTHONPATH entry with site.addsitedir (so .pth
# files there, e.g. editable installs, work too) and switches LC_CTYPE to C.UTF-8 (the isolated
# interpreter otherwise starts with an ASCII locale, which breaks torch.compile/inductor).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-${VENV_PYTHON:-$REPO_ROOT/.venv/bin/python}}"

die() { echo "setup_triton.sh: error: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (run 'make setup' first?)"

# find_spec locates the package without importing it (importing pytriton is slow and pulls numpy).
info="$("$PY" - <<'PY'
import importlib.util, sys
spec = importlib.util.find_spec("pytriton")
loc = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else "-"
print(f"{sys.version_info.major}.{sys.version_info.minor}", sys.prefix, loc)
PY
)" || die "could not run '$PY'"
read -r PYVER PREFIX PYTRITON_DIR <<<"$info"

[ "$PYTRITON_DIR" != "-" ] || die "nvidia-pytriton is not installed for $PY (pip install nvidia-pytriton==0.7.0)"
TS="$PYTRITON_DIR/tritonserver"
REAL_BIN="$TS/bin/tritonserver"
LIBS="$(cd "$PYTRITON_DIR/.." && pwd)/nvidia_pytriton.libs"
[ -x "$REAL_BIN" ] || die "no tritonserver binary at $REAL_BIN (is nvidia-pytriton==0.7.0 installed?)"
[ -d "$LIBS" ] || die "no $LIBS (broken nvidia-pytriton install?)"
SRC_BACKEND="$TS/backends/python"
for f in libtriton_python.so triton_python_backend_utils.py; do
    [ -f "$SRC_BACKEND/$f" ] || die "missing $SRC_BACKEND/$f in the nvidia-pytriton wheel"
done
STUB="$TS/python_backend_stubs/$PYVER/triton_python_backend_stub"
if [ ! -f "$STUB" ]; then
    avail="$(ls "$TS/python_backend_stubs" 2>/dev/null | tr '\n' ' ')"
    die "no python backend stub for Python $PYVER in $TS/python_backend_stubs (available: ${avail:-none})"
fi

# The stub links the system libpython$PYVER; its stdlib must be there too.
if command -v ldd >/dev/null 2>&1; then
    missing="$(LD_LIBRARY_PATH="$LIBS" ldd "$STUB" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')"
    [ -z "$missing" ] || die "the python backend stub cannot find: $missing(apt-get install libpython$PYVER)"
fi
SYS_PREFIX=""
for p in /usr /usr/local; do
    if [ -f "$p/lib/python$PYVER/os.py" ]; then SYS_PREFIX="$p"; break; fi
done
[ -n "$SYS_PREFIX" ] || die "no system Python $PYVER standard library (/usr/lib/python$PYVER); apt-get install libpython$PYVER-stdlib"

TRITON_HOME="${TRITON_HOME:-$PREFIX/triton}"
DEST="$TRITON_HOME/backends/python"
STUBENV="$TRITON_HOME/stub_python"
STUBSITE="$STUBENV/lib/python$PYVER/site-packages"
mkdir -p "$DEST" "$STUBENV/bin" "$STUBSITE" "$TRITON_HOME/bin"

changed=0
install_file() {  # src dest mode
    local src="$1" dst="$2" mode="$3"
    if [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$src" "$dst"; then
        return 0
    fi
    rm -f "$dst"
    cp -f "$src" "$dst.tmp.$$"
    chmod "$mode" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    changed=1
}
install_text() {  # dest mode  (content on stdin)
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    install_file "$tmp" "$1" "$2"
    rm -f "$tmp"
}

install_file "$SRC_BACKEND/libtriton_python.so" "$DEST/libtriton_python.so" 0755
install_file "$SRC_BACKEND/triton_python_backend_utils.py" "$DEST/triton_python_backend_utils.py" 0644
install_file "$STUB" "$DEST/triton_python_backend_stub" 0755

# stub_python: the prefix the stub's interpreter resolves through PATH (see the header).
SYS_PY="$SYS_PREFIX/bin/python$PYVER"
for name in python3 "python$PYVER"; do
    if [ -x "$SYS_PY" ]; then
        if [ "$(readlink "$STUBENV/bin/$name" 2>/dev/null)" != "$SYS_PY" ]; then
            rm -f "$STUBENV/bin/$name"; ln -s "$SYS_PY" "$STUBENV/bin/$name"; changed=1
        fi
    else  # only libpython is installed: the file just has to exist for the path lookup
        install_text "$STUBENV/bin/$name" 0755 \
            < <(printf '#!/bin/sh\necho "placeholder used by the triton python stub; not an interpreter" >&2\nexit 1\n')
    fi
done
install_text "$STUBENV/pyvenv.cfg" 0644 \
    < <(printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "$SYS_PREFIX/bin" "$PYVER")
# A .pth line starting with "import" is executed by site at interpreter start-up, before model.py is imported.
install_text "$STUBSITE/_triton_stub_env.py" 0644 <<'PYMOD'
"""Start-up hook for the Triton python backend stub (generated by scripts/setup_triton.sh).

The stub embeds the system libpython in isolated mode: PYTHONPATH is ignored and the locale is ASCII.
This module (imported through _triton_stub_env.pth) restores both.
"""
import locale
import os
import site
import sys

for _p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _p and os.path.isdir(_p) and _p not in sys.path:
        site.addsitedir(_p)  # appends _p and processes the .pth files in it
try:  # torch.compile/inductor read UTF-8 templates with the default encoding
    locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
except locale.Error:
    pass
PYMOD
install_text "$STUBSITE/_triton_stub_env.pth" 0644 <<<"import _triton_stub_env"

install_text "$TRITON_HOME/bin/tritonserver" 0755 <<WRAP
#!/bin/sh
# Generated by scripts/setup_triton.sh: run the nvidia-pytriton tritonserver so that the python backend
# stub's interpreter resolves to $STUBENV (system stdlib + PYTHONPATH entries).
PATH="$STUBENV/bin\${PATH:+:\$PATH}"
LD_LIBRARY_PATH="$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH LD_LIBRARY_PATH
exec "$REAL_BIN" "\$@"
WRAP

if [ "$changed" = 1 ]; then
    echo "setup_triton.sh: assembled Triton python backend (stub for Python $PYVER) in $TRITON_HOME"
else
    echo "setup_triton.sh: Triton python backend already up to date in $TRITON_HOME"
fi
