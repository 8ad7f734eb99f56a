#!/usr/bin/env bash
# README command A: install INCloud and start it on embedded defaults (SQLite, local Dask, local spawner)
# with demo content, then print where to log in. Safe to run again: it reuses what exists.
#
# As root, nothing of INCloud runs as root: the site and the hub belong to the system user $INCLOUD_USER, and
# each hub user's workstation runs as that user's own system account (created at first login by the root
# launcher hub/launcher.py, the only command the service user may run through sudo). As another user, the hub
# and the workstations run as that user (a laptop: one person, no isolation between hub users).
#
#   INCLOUD_HOME   site folder (default /var/lib/incloud when run as root, else ~/.local/share/incloud)
#   INCLOUD_USER   the service user when run as root (default incloud)
#   INCLOUD_LAUNCHER  where the root workstation launcher goes (default /usr/local/sbin/incloud-workstation)
#   INCLOUD_DEMO=0 skip the demo project, users and synthetic scans
set -euo pipefail
source "$(dirname "$0")/lib/install.sh"
source "$(dirname "$0")/lib/hub.sh"

ensure_apt curl procps dcmtk orthanc orthanc-dicomweb
ensure_venv
ensure_node_tools
ensure_labextension

INCLOUD="$INCLOUD_VENV/bin/incloud"
PY="$INCLOUD_VENV/bin/python"
export PATH="$INCLOUD_VENV/bin:$PATH"
LAUNCHER=${INCLOUD_LAUNCHER:-/usr/local/sbin/incloud-workstation}
if [ "$(id -u)" = 0 ]; then
  ensure_apt sudo util-linux
  export INCLOUD_HOME=${INCLOUD_HOME:-/var/lib/incloud}
  INCLOUD_USER=${INCLOUD_USER:-incloud}
  HOME_DIR=$INCLOUD_HOME
  hub_service_user "$INCLOUD_USER" "$HOME_DIR"   # also takes back a site an older start.sh left to root
  hub_launcher_install "$INCLOUD_USER" "$LAUNCHER" incloud-users /home "$INCLOUD_VENV" \
    "/etc/sudoers.d/$INCLOUD_USER-workstation"
  run_exec() { as_service "$INCLOUD_USER" "$HOME_DIR" "$@"; }
  ISOLATION="the hub runs as $INCLOUD_USER; each user's workstation as that user's own system account"
else
  run_exec() { exec "$@"; }
  ISOLATION="none: the hub and every workstation run as $(id -un)"
fi
run() { ( run_exec "$@" ); }
run "$INCLOUD" init
HOME_DIR=$(run "$INCLOUD" config show --json | "$PY" -c \
  'import json,sys; print(next(r["value"] for r in json.load(sys.stdin) if r["name"]=="home"))')
run mkdir -p "$HOME_DIR"
SITE_FILE="$HOME_DIR/incloud.toml"
DEMO_USERS=(admin researcher reviewer clinician)
new_password() { "$PY" -c "import secrets; print(secrets.token_urlsafe($1))"; }

# Embedded demo site: one shared demo password for the demo users and the admin's own password (printed once,
# when it is set), kept in the site file, mode 0600, owned by the service user.
ADMIN_PASSWORD=""
if [ ! -f "$SITE_FILE" ]; then
  ADMIN_PASSWORD=$(new_password 33)
  ( umask 077; cat > "$SITE_FILE" <<EOF
# Written by scripts/start.sh for the embedded demo site. See docs/config.md.
[site]
name = "INCloud demo site"

[hub]
mode = "embedded"
authenticator = "shared"
shared_password = "$(new_password 9)"
admin_password = "$ADMIN_PASSWORD"
admin_users = ["admin"]

[hub.group_members]
admin = ["admin"]
researcher = ["researcher"]
qc_reviewer = ["reviewer"]
clinician = ["clinician"]
EOF
  )
elif ! grep -q '^admin_password = ' "$SITE_FILE"; then  # a site from before admins had their own password
  ADMIN_PASSWORD=$(new_password 33)
  sed -i "s/^\(shared_password = .*\)$/\1\nadmin_password = \"$ADMIN_PASSWORD\"/" "$SITE_FILE"
fi
if [ "$(id -u)" = 0 ]; then
  grep -q '^launcher = ' "$SITE_FILE" || sed -i "s|^mode = \"embedded\"$|&\nlauncher = \"$LAUNCHER\"|" "$SITE_FILE"
  chown "$INCLOUD_USER:" "$SITE_FILE"
fi
chmod 0600 "$SITE_FILE"

if [ "${INCLOUD_DEMO:-1}" = 1 ]; then
  if ! run "$INCLOUD" projects list --json | grep -q '"DEMO"'; then
    log "creating the demo project with synthetic, de-identified and refaced scans (a few minutes)"
    run "$INCLOUD" projects create DEMO --name "Demo cohort (synthetic)"
    run "$INCLOUD" grant researcher DEMO member
    run "$INCLOUD" grant reviewer DEMO collaborator
    run "$INCLOUD" grant clinician DEMO collaborator
    run "$INCLOUD" projects admins add admin
    run rm -rf "$HOME_DIR/demo-dicom"
    run "$INCLOUD" synth cohort "$HOME_DIR/demo-dicom" --participants 3 --seed 7 --small
    for study in "$HOME_DIR"/demo-dicom/*/; do
      run "$INCLOUD" ingest "$study" --project DEMO
    done
  fi
fi

LOG="$HOME_DIR/hub/hub.log"
run mkdir -p "$HOME_DIR/hub"
run touch "$LOG"
chmod 0600 "$LOG"
URL=$(run "$INCLOUD" hub config --json | "$INCLOUD_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["hub.bind_url"])')
if curl -sf "$URL/hub/api/" >/dev/null 2>&1; then
  log "the hub is already running at $URL"
else
  log "starting the hub (log: $LOG)"
  ( trap '' HUP; run_exec "$INCLOUD" hub start ) >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$HOME_DIR/hub/hub.pid"
  for _ in $(seq 1 120); do curl -sf "$URL/hub/api/" >/dev/null 2>&1 && break; sleep 0.5; done
  if ! curl -sf "$URL/hub/api/" >/dev/null 2>&1; then
    grep -E '^\[(E|C) |Error' "$LOG" | grep -v ConfigProxy | tail -5 >&2 || true
    kill "$(cat "$HOME_DIR/hub/hub.pid")" 2>/dev/null || true
    die "the hub did not start (is another hub or proxy using its ports?); see $LOG"
  fi
fi

# The demo's QC indices, once (the first start; a later start finds that run and starts nothing): driven in the
# background, so the login URL is not delayed; the QC review dashboard fills in as series are done.
QC_LINE=""
if [ "${INCLOUD_DEMO:-1}" = 1 ]; then
  if qc_out=$(run "$INCLOUD" pipeline run qc DEMO --detach --once 2>&1); then
    QC_LINE="
  QC:        the demo's quality indices are computed in the background at the first start
             (incloud pipeline status); then, as reviewer, open Review QC on the home page"
  else
    log "could not start the demo's QC run: ${qc_out##*$'\n'}"
  fi
fi

# Then the rest of the demo, also in the background and as the service user (incloud_kernel/demo.py): it waits
# for that QC run, runs the features pipeline into the feature library, trains a CADS model on a synthetic
# reference cohort and builds the clinician's first report. Each step done is skipped at a later start.
DEMO_LINES=""
if [ "${INCLOUD_DEMO:-1}" = 1 ]; then
  DEMO_LOG="$HOME_DIR/hub/demo-populate.log"
  run touch "$DEMO_LOG"
  chmod 0600 "$DEMO_LOG"
  ( trap '' HUP; run_exec "$INCLOUD" demo populate ) >> "$DEMO_LOG" 2>&1 < /dev/null &
  DEMO_LINES="
  What to open first (the demo fills in over some minutes at the first start; progress: $DEMO_LOG):
    as reviewer:    Review QC, the quality indices of DEMO's scans
    as researcher:  the Archive tile's \"Open the archive browser\", then Feature library (DEMO's features)
    as clinician:   CADS reports, the report of a DEMO participant (once the log says \"cads: report\")"
fi

password=$(sed -n 's/^shared_password = "\(.*\)"$/\1/p' "$SITE_FILE")
cat <<EOF

INCloud is running.
  Open:      $URL/hub/login   then the home page shows your modules; start with the Archive tile's
             "Open the archive browser" (as researcher), and INCloud/examples/01-getting-started.ipynb in
             your workstation
  Users:     ${DEMO_USERS[*]}   (admin is the site and hub admin)
  Password:  ${password:-see $SITE_FILE}   (the demo's shared password, for every user but admin)
  Admin:     ${ADMIN_PASSWORD:-(printed when it was set; it is in $SITE_FILE)}
  Isolation: $ISOLATION
  Site:      $HOME_DIR   (incloud config show; incloud archive ls)
  In a notebook:  import incloud_kernel; client = incloud_kernel.connect(); client.series(project="DEMO")
  Stop:      kill \$(cat $HOME_DIR/hub/hub.pid)${QC_LINE}${DEMO_LINES}
EOF
