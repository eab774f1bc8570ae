#!/usr/bin/env bash
# Makes the Dockerfile's base image, python:3.11-slim-bookworm, locally, for builders that reach no
# image registry (CI here): Debian bookworm from debootstrap with Debian's python3 (3.11) and a venv
# at /usr/local, so `python3` and `python3 -m pip` resolve in /usr/local/bin as in the official
# image. The machine's extra CA certificates (/usr/local/share/ca-certificates) go in too, so pip
# reaches PyPI through a TLS-inspecting proxy.
#
# The root file system is cached as a tarball keyed by this script's and the certificates' hash
# ($IMAGE_CACHE, default /var/cache/transfer-pipeline); the image is imported from it only when the
# container storage lacks it. Needs root, debootstrap and podman. Usage: docker/make-base.sh [TAG]
set -euo pipefail
TAG=${1:-docker.io/library/python:3.11-slim-bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${IMAGE_CACHE:-/var/cache/transfer-pipeline}
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

key=$( (cat "$0"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true) | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "base-key"}}' "$TAG" 2>/dev/null)" = "$key" ]; then
    echo "base image $TAG is current (key $key)"
    exit 0
fi
tarball=$CACHE/base-$SUITE-$key.tar
if [ ! -s "$tarball" ]; then
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
    echo "debootstrap $SUITE into $rootfs ..."
    debootstrap --variant=minbase --include=ca-certificates,netbase,tzdata,python3,python3-venv \
        "$SUITE" "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates > /dev/null 2>&1
    fi
    # pip's own CA bundle does not know the machine's CAs; the system bundle does.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
    chroot "$rootfs" python3 -m venv /usr/local
    chroot "$rootfs" /usr/local/bin/python3 -m pip --version
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    find "$rootfs/usr" -name __pycache__ -prune -exec rm -rf {} +
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
    find "$CACHE" -maxdepth 1 -name "base-$SUITE-*.tar" ! -name "$(basename "$tarball")" -delete
fi
podman import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL base-key=$key" \
    --change 'CMD ["python3"]' \
    "$tarball" "$TAG" > /dev/null
echo "base image $TAG imported from $tarball"
