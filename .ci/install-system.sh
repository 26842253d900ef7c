#!/usr/bin/env bash
# Installs what the slow deploy tests (pytest -m slow tests/deploy) need and starts a Docker engine.
#
# Idempotent: packages already installed are not touched and a running engine is reused, so a second
# run takes about a second. Must run as root on Debian bookworm.
#
# The engine is Debian's dockerd, started without systemd: vfs storage (works on any filesystem,
# no overlay mounts needed), no bridge and no iptables, so containers only get `--network host`.
set -euo pipefail

PACKAGES=(docker.io debootstrap nginx docker-compose)
# kubectl renders deploy/k8s for tests/deploy/test_k8s.py: Debian's kubernetes-client, unless a kubectl
# is installed already (another package's /usr/bin/kubectl would conflict with it).
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)
DOCKER_DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_PIDFILE=/var/run/docker.pid
POLICY_RC_D=/usr/sbin/policy-rc.d
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}

log() { printf 'install-system: %s\n' "$*" >&2; }

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    log "installing ${missing[*]}"
    # Package scripts must not start nginx (port 80) or docker through init scripts; we start dockerd below.
    if [[ ! -e $POLICY_RC_D ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
        chmod +x "$POLICY_RC_D"
        trap 'rm -f "$POLICY_RC_D"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    # An engine that is starting has written its pid file but does not answer yet: wait for it.
    if ! { [[ -s $DOCKERD_PIDFILE ]] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; }; then
        log "starting dockerd (data in $DOCKER_DATA_ROOT, log in $DOCKERD_LOG)"
        mkdir -p "$DOCKER_DATA_ROOT"
        setsid nohup dockerd --storage-driver=vfs --bridge=none --iptables=false \
            --data-root "$DOCKER_DATA_ROOT" --pidfile "$DOCKERD_PIDFILE" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + DOCKERD_WAIT_S))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "dockerd did not answer within ${DOCKERD_WAIT_S}s; last log lines:"
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
    log "dockerd is up"
}

install_packages
start_dockerd
