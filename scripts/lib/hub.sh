# The embedded hub's system set-up, for scripts/start.sh and the tests (sourced; root only): the service user the
# hub and every site command run as, and the root launcher that starts each hub user's workstation as that user's
# own system account (hub/launcher.py), reachable by the service user through one sudoers rule.
# Idempotent. Never prints a password or token.
#
#   hub_service_user USER HOME                  system user USER (no login shell) owning HOME, mode 0700
#   hub_launcher_install USER WRAPPER GROUP HOME_BASE VENV SUDOERS
#                                               root-owned WRAPPER + sudoers rule "USER may run WRAPPER as root"
#   as_service USER HOME CMD...                 run CMD as USER (same pid: exec), HOME as its home, from /

_hub_log() { printf '[incloud] %s\n' "$*" >&2; }

hub_service_user() {
  local user=${1:?hub_service_user USER HOME} home=${2:?hub_service_user USER HOME}
  if ! getent passwd "$user" >/dev/null; then
    useradd --system --user-group --home-dir "$home" --no-create-home --shell /usr/sbin/nologin "$user" \
      || { _hub_log "error: cannot create system user $user"; return 1; }
  fi
  mkdir -p "$home"
  # Only what is not the service user's yet (a site an older start.sh or a root command left behind).
  find "$home" \( ! -user "$user" -o ! -group "$user" \) -exec chown -h "$user:$user" {} +
  chmod 0700 "$home"
}

hub_launcher_install() {
  local user=$1 wrapper=$2 group=$3 home_base=$4 venv=$5 sudoers=$6
  command -v sudo >/dev/null 2>&1 || { _hub_log "error: sudo is not installed"; return 1; }
  getent group "$group" >/dev/null || groupadd --system "$group" || return 1
  mkdir -p "$home_base"
  chmod 0755 "$home_base"
  "$venv/bin/python" -m hub.launcher install "$wrapper" "$group" "$home_base" "$venv" "$user" "$sudoers" \
    || { _hub_log "error: cannot install the workstation launcher"; return 1; }
  visudo -cqf "$sudoers" || { rm -f "$sudoers"; _hub_log "error: invalid sudoers rule $sudoers"; return 1; }
}

as_service() {
  local user=$1 home=$2; shift 2
  cd / && exec setpriv --reuid="$user" --regid="$user" --init-groups \
    env HOME="$home" USER="$user" LOGNAME="$user" "$@"
}
