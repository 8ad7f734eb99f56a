#!/usr/bin/env bash
# Build the workstation image with podman from a debootstrap base (recipes: no Docker engine, no registry).
#   images/build.sh [TAG]      default tag localhost/incloud-workstation:latest
# Own podman storage under $INCLOUD_IMAGE_WORK (default /var/tmp/incloud-image); storage driver
# $INCLOUD_IMAGE_DRIVER (default overlay when the kernel has it, else vfs); runc and lowered ulimits (crun fails
# on this machine's hybrid cgroups). Needs root and, once per machine, network to Debian for the base.
# The venv: $INCLOUD_IMAGE_VENV (default /opt/incloud/venv when it runs on Debian's /usr/bin/python3, the same
# Python as the image's) is copied in, so nothing is downloaded or compiled; set INCLOUD_IMAGE_VENV= (empty) to
# install from PyPI with constraints.txt instead.
# Cached: the image carries a label with the sha256 of its inputs (the Containerfile, the copied
# sources, the venv's package list); a tag whose label matches is not built again (INCLOUD_IMAGE_REBUILD=1 forces a build).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-localhost/incloud-workstation:latest}
WORK=${INCLOUD_IMAGE_WORK:-/var/tmp/incloud-image}
DRIVER=${INCLOUD_IMAGE_DRIVER:-$(grep -qw overlay /proc/filesystems && echo overlay || echo vfs)}
VENV=${INCLOUD_IMAGE_VENV-/opt/incloud/venv}
BASE=localhost/debian:bookworm-python
mkdir -p "$WORK"
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
P=(podman --root "$WORK/root-$DRIVER" --runroot "$WORK/runroot-$DRIVER" --storage-driver "$DRIVER")
step() { printf '[incloud] %s (%ss)\n' "$*" "$SECONDS" >&2; }
if ! "${P[@]}" image exists "$BASE"; then
  step "debootstrap minbase bookworm with python3"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" >/dev/null
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | "${P[@]}" import - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
fi
ARGS=()
if [ -n "$VENV" ] && [ -x "$VENV/bin/python" ] && grep -q '^home = /usr/bin$' "$VENV/pyvenv.cfg" 2>/dev/null \
   && [ "$(readlink -f "$VENV/bin/python")" = "$(readlink -f /usr/bin/python3)" ]; then
  step "copying the venv $VENV into the image"
  ARGS+=(-v "$VENV:/host-venv:ro" --build-arg HOST_VENV=/host-venv)
else
  step "installing the venv from PyPI (no usable host venv)"
  # Sites behind a TLS-inspecting proxy trust its CA in the host bundle: lend that bundle to pip in the build.
  [ -f /etc/ssl/certs/ca-certificates.crt ] && \
    ARGS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
inputs_hash() {  # what the image is made of: a change in any of these makes a new image
  { cd "$REPO" && find images/Containerfile pyproject.toml constraints.txt README.md \
      incloud_kernel hub -type f ! -name '*.pyc' ! -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort \
      | xargs sha256sum
    echo "venv=$VENV"; [ -n "$VENV" ] && ls "$VENV"/lib/python3*/site-packages 2>/dev/null; true
  } | sha256sum | cut -c1-64
}
INPUTS=$(inputs_hash)
LABEL=$("${P[@]}" image inspect --format '{{index .Labels "org.incloud.inputs"}}' "$TAG" 2>/dev/null || true)
if [ "${INCLOUD_IMAGE_REBUILD:-0}" != 1 ] && [ "$LABEL" = "$INPUTS" ]; then
  step "$TAG is up to date (inputs $INPUTS)"
else
  step "podman build ($DRIVER)"
  "${P[@]}" build --isolation chroot --layers=false "${ARGS[@]}" --label "org.incloud.inputs=$INPUTS" \
    -f "$REPO/images/Containerfile" -t "$TAG" "$REPO" >&2
fi
step "checking the image"
"${P[@]}" run --rm --network none "$TAG" python -c "import incloud_kernel; print('incloud_kernel', incloud_kernel.__version__)"
# Earlier builds of the same tag leave dangling images: drop them so the storage does not grow per build.
"${P[@]}" image prune -f >/dev/null 2>&1 || true
step "done"
