#!/usr/bin/env bash
# Publish the workstation image for Slurm jobs: its root file system as a read-only tree on shared storage.
#   images/publish.sh [TAG] [DIR]   default tag localhost/incloud-workstation:latest,
#                                   DIR $INCLOUD_IMAGE_PUBLISH (default $INCLOUD_IMAGE_WORK/published)
# Writes DIR/sha256-<image id>/rootfs (the image's files, root-owned, as podman mounts the image), copies
# images/incloud-run to DIR/incloud-run (what jobs run) and points DIR/current at the new tree last, so a job
# starting meanwhile sees the old tree or the new one, never half of one. An image already published is not
# copied again (the ID names the content). The tree it replaces stays for jobs still running on it; trees older
# than that are removed (INCLOUD_IMAGE_KEEP_OLD=1 keeps them all).
# Reads images/build.sh's podman storage; needs root. The ID is podman's image ID (sha256 of the image's
# config, which names every layer's content): jobs report it as INCLOUD_IMAGE_DIGEST.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=${1:-localhost/incloud-workstation:latest}
WORK=${INCLOUD_IMAGE_WORK:-/var/tmp/incloud-image}
DIR=${2:-${INCLOUD_IMAGE_PUBLISH:-$WORK/published}}
DRIVER=${INCLOUD_IMAGE_DRIVER:-$(grep -qw overlay /proc/filesystems && echo overlay || echo vfs)}
export CONTAINERS_CONF="$WORK/containers.conf"
P=(podman --root "$WORK/root-$DRIVER" --runroot "$WORK/runroot-$DRIVER" --storage-driver "$DRIVER")
ID=sha256-$("${P[@]}" image inspect --format '{{.Id}}' "$TAG")
mkdir -p "$DIR"
chmod 755 "$DIR"
if [ ! -d "$DIR/$ID/rootfs" ]; then
  printf '[incloud] publishing %s as %s/%s (%ss)\n' "$TAG" "$DIR" "$ID" "$SECONDS" >&2
  rm -rf "$DIR/$ID.part"
  mkdir -p "$DIR/$ID.part"
  MERGED=$("${P[@]}" image mount "$TAG")
  trap '"${P[@]}" image unmount "$TAG" >/dev/null 2>&1 || true' EXIT
  cp -a "$MERGED/." "$DIR/$ID.part/rootfs/"
  chmod 755 "$DIR/$ID.part" "$DIR/$ID.part/rootfs"
  mv "$DIR/$ID.part" "$DIR/$ID"
fi
install -m 755 "$REPO/images/incloud-run" "$DIR/incloud-run.new"
mv -f "$DIR/incloud-run.new" "$DIR/incloud-run"
PREVIOUS=$(readlink "$DIR/current" 2>/dev/null || true)
ln -sfn "$ID" "$DIR/current.new"
mv -T "$DIR/current.new" "$DIR/current"
if [ "${INCLOUD_IMAGE_KEEP_OLD:-0}" != 1 ]; then
  for old in "$DIR"/sha256-*; do
    name=$(basename "$old")
    [ "$name" = "$ID" ] || [ "$name" = "$PREVIOUS" ] || rm -rf "$old"
  done
fi
printf 'sha256:%s\n' "${ID#sha256-}"
