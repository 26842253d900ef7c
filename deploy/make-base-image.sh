#!/usr/bin/env bash
# Builds a local Debian bookworm base image with debootstrap and imports it into Docker.
#
# For machines that reach Debian's mirror and PyPI but no image registry (so `python:3.11-slim`
# cannot be pulled). Bookworm's python3 is 3.11, like the official slim image. The image carries this
# host's CA bundle (and the extra CAs in /usr/local/share/ca-certificates, so a later
# update-ca-certificates keeps them) and this host's pip settings (see image_pip_conf.py), so pip
# inside `docker build --network host` reaches PyPI the way pip on the host does.
#
# Usage (as root): deploy/make-base-image.sh [IMAGE]      default IMAGE: seq2seq-base:bookworm
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild an existing image.
# Then: docker build --network host --build-arg BASE_IMAGE=seq2seq-base:bookworm ...
set -euo pipefail

IMAGE=${1:-seq2seq-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ${FORCE:-0} != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "make-base-image: $IMAGE exists (FORCE=1 rebuilds it)" >&2
    exit 0
fi

workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/seq2seq-base.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
rootfs=$workdir/rootfs

debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR"

# What the host trusts (an egress proxy's CA, say), the image trusts.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
python3 "$here/image_pip_conf.py" "$rootfs" >&2

# Smaller image: no package lists or downloaded .debs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "make-base-image: imported $IMAGE ($(docker run --rm --network host "$IMAGE" python3 --version))" >&2
