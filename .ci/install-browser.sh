#!/usr/bin/env bash
# Installs Debian's Chromium for the slow browser tests (pytest -m slow tests/web).
#
# Idempotent: when the package is already installed nothing is downloaded and the script
# returns in well under a second. Must run as root on Debian (bookworm or newer).
# Playwright (a Python package in the `dev` extra) drives this browser through
# executable_path=/usr/bin/chromium; `playwright install` is never needed.
set -euo pipefail

PACKAGES=(chromium)
BROWSER=${SEQ2SEQ_CHROMIUM:-/usr/bin/chromium}

log() { printf 'install-browser: %s\n' "$*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    if ((EUID != 0)); then
        log "must run as root to install ${missing[*]}"
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x $BROWSER ]]; then
    log "$BROWSER is missing after the install"
    exit 1
fi
log "$("$BROWSER" --version 2>/dev/null || echo "$BROWSER")"
