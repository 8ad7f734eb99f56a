#!/usr/bin/env bash
# README command B: install everything the tests need, start the private services, run the whole suite on
# SQLite and PostgreSQL, stop what was started. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/lib/install.sh"
source "$(dirname "$0")/lib/postgres.sh"

# Debian packages for the real components the tests drive.
ensure_apt postgresql dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-postgresql \
           slurm-wlm munge chromium chromium-driver openssh-client openssh-server sudo curl procps \
           podman runc debootstrap uidmap
ensure_venv
ensure_combat_reference_venv
ensure_node_tools
ensure_labextension

WORK=$(mktemp -d /tmp/incloud-test.XXXXXX)
chmod 755 "$WORK"
cleanup() { stop_private_postgres; rm -rf "$WORK"; }
trap cleanup EXIT
start_private_postgres "$WORK/pg"

export TCP_NODELAY=1
export INCLOUD_TEST_WORK="$WORK"
cd "$REPO"
log "running pytest (SQLite and PostgreSQL)"
set +e
"$INCLOUD_VENV/bin/python" -m pytest "$@"
status=$?
set -e
exit $status
