#!/usr/bin/env bash
# Build the workstation image with podman from a debootstrap base (recipes: no Docker engine, no registry).
#   images/build.sh [TAG]      default tag localhost/incloud-workstation:latest
# Uses its own podman storage under $INCLOUD_IMAGE_WORK (default /var/tmp/incloud-image) with the vfs driver,
# runc and lowered ulimits (crun fails on this machine's hybrid cgroups). Needs root, network to Debian and PyPI.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-localhost/incloud-workstation:latest}
WORK=${INCLOUD_IMAGE_WORK:-/var/tmp/incloud-image}
mkdir -p "$WORK"
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
P=(podman --root "$WORK/root" --runroot "$WORK/runroot" --storage-driver vfs)
if ! "${P[@]}" image exists localhost/debian:bookworm; then
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" >/dev/null
  tar -C "$WORK/rootfs" -c . | "${P[@]}" import - localhost/debian:bookworm >/dev/null
  rm -rf "$WORK/rootfs"
fi
# Sites behind a TLS-inspecting proxy trust its CA in the host bundle: lend that bundle to pip in the build.
CA=(); [ -f /etc/ssl/certs/ca-certificates.crt ] && \
  CA=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
"${P[@]}" build --isolation chroot "${CA[@]}" -f "$REPO/images/Containerfile" -t "$TAG" "$REPO"
"${P[@]}" run --rm "$TAG" python -c "import incloud_kernel; print('incloud_kernel', incloud_kernel.__version__)"
