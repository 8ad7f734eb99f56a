#!/usr/bin/env bash
# README command A: install INCloud and start it on embedded defaults (SQLite, local Dask, local spawner)
# with demo content, then print where to log in. Safe to run again: it reuses what exists.
#
#   INCLOUD_HOME   site folder (default /var/lib/incloud when run as root, else ~/.local/share/incloud)
#   INCLOUD_DEMO=0 skip the demo project, users and synthetic scans
set -euo pipefail
source "$(dirname "$0")/lib/install.sh"

ensure_apt curl procps dcmtk orthanc orthanc-dicomweb
ensure_venv
ensure_node_tools

if [ "$(id -u)" = 0 ]; then export INCLOUD_HOME=${INCLOUD_HOME:-/var/lib/incloud}; fi
INCLOUD="$INCLOUD_VENV/bin/incloud"
export PATH="$INCLOUD_VENV/bin:$PATH"
"$INCLOUD" init
HOME_DIR=$("$INCLOUD" config show --json | "$INCLOUD_VENV/bin/python" -c \
  'import json,sys; print(next(r["value"] for r in json.load(sys.stdin) if r["name"]=="home"))')
mkdir -p "$HOME_DIR"
SITE_FILE="$HOME_DIR/incloud.toml"
DEMO_USERS=(admin researcher reviewer clinician)

# Embedded demo site: one shared demo password (printed below), kept in the site file, mode 0600.
if [ ! -f "$SITE_FILE" ]; then
  password=$("$INCLOUD_VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(9))')
  umask 077
  cat > "$SITE_FILE" <<EOF
# Written by scripts/start.sh for the embedded demo site. See docs/config.md.
[site]
name = "INCloud demo site"

[hub]
mode = "embedded"
authenticator = "shared"
shared_password = "$password"
admin_users = ["admin"]

[hub.group_members]
admin = ["admin"]
researcher = ["researcher"]
qc_reviewer = ["reviewer"]
clinician = ["clinician"]
EOF
  umask 022
fi

if [ "${INCLOUD_DEMO:-1}" = 1 ]; then
  if ! "$INCLOUD" projects list --json | grep -q '"DEMO"'; then
    log "creating the demo project with synthetic, de-identified and refaced scans (a few minutes)"
    "$INCLOUD" projects create DEMO --name "Demo cohort (synthetic)"
    "$INCLOUD" grant researcher DEMO member
    "$INCLOUD" grant reviewer DEMO collaborator
    "$INCLOUD" grant clinician DEMO collaborator
    "$INCLOUD" projects admins add admin
    rm -rf "$HOME_DIR/demo-dicom"
    "$INCLOUD" synth cohort "$HOME_DIR/demo-dicom" --participants 3 --seed 7 --small
    for study in "$HOME_DIR"/demo-dicom/*/; do
      "$INCLOUD" ingest "$study" --project DEMO
    done
  fi
fi

LOG="$HOME_DIR/hub/hub.log"
mkdir -p "$HOME_DIR/hub"
URL=$("$INCLOUD" hub config --json | "$INCLOUD_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["hub.bind_url"])')
if curl -sf "$URL/hub/api/" >/dev/null 2>&1; then
  log "the hub is already running at $URL"
else
  log "starting the hub (log: $LOG)"
  nohup "$INCLOUD" hub start > "$LOG" 2>&1 &
  echo $! > "$HOME_DIR/hub/hub.pid"
  for _ in $(seq 1 120); do curl -sf "$URL/hub/api/" >/dev/null 2>&1 && break; sleep 0.5; done
  if ! curl -sf "$URL/hub/api/" >/dev/null 2>&1; then
    grep -E '^\[(E|C) |Error' "$LOG" | grep -v ConfigProxy | tail -5 >&2 || true
    kill "$(cat "$HOME_DIR/hub/hub.pid")" 2>/dev/null || true
    die "the hub did not start (is another hub or proxy using its ports?); see $LOG"
  fi
fi

password=$(sed -n 's/^shared_password = "\(.*\)"$/\1/p' "$SITE_FILE")
cat <<EOF

INCloud is running.
  Open:      $URL/hub/login
  Users:     ${DEMO_USERS[*]}   (admin is the site and hub admin)
  Password:  ${password:-see $SITE_FILE}   (the demo's shared password, in $SITE_FILE)
  Site:      $HOME_DIR   (incloud config show; incloud archive ls)
  In a notebook:  import incloud_kernel; client = incloud_kernel.connect(); client.series(project="DEMO")
  Stop:      kill \$(cat $HOME_DIR/hub/hub.pid)
EOF
