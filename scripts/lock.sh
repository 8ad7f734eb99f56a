#!/usr/bin/env bash
# Regenerate constraints.txt: the pinned versions of every Python package the platform installs.
#
# Builds a throw-away venv with the same interpreter as scripts/lib/install.sh (/usr/bin/python3), installs this
# checkout with its extras ([hub,test]) WITHOUT the current pins (so pip picks the newest versions that satisfy
# pyproject.toml's ranges), and writes `pip freeze` (minus this project itself) under the usual header.
# Usage: scripts/lock.sh [--keep-pins]   (--keep-pins: install with the current constraints.txt, i.e. only add
# pins for packages that are new in pyproject.toml). Review the diff, run the tests, commit.
# It never touches the platform venv (/opt/incloud/venv) and never installs outside its temporary folder.
# LOCK_OUT=FILE writes FILE instead of constraints.txt. Checked: `LOCK_OUT=/tmp/c.txt scripts/lock.sh --keep-pins`
# gives the committed pins exactly (215 packages).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PINS=()
if [ "${1:-}" = "--keep-pins" ]; then PINS=(-c "$REPO/constraints.txt"); fi
/usr/bin/python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q -U pip wheel setuptools 2>&1 | { grep -v '^WARNING: Location' || true; }
"$TMP/venv/bin/pip" install -q "${PINS[@]}" "$REPO[hub,test]" 2>&1 | { grep -v '^WARNING: Location' || true; }
{
  echo "# Pinned versions that work together (pip freeze of the platform venv, /usr/bin/python3 $(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $(. /etc/os-release; echo "$NAME" | cut -d' ' -f1) $(. /etc/os-release; echo "$VERSION_ID"))."
  echo "# Regenerate: scripts/lock.sh"
  "$TMP/venv/bin/pip" freeze --exclude incloud --exclude pip --exclude setuptools --exclude wheel | LC_ALL=C sort -f
} > "$TMP/constraints.txt"
OUT=${LOCK_OUT:-$REPO/constraints.txt}  # LOCK_OUT=FILE: write elsewhere (to compare)
mv "$TMP/constraints.txt" "$OUT"
echo "wrote $OUT ($(grep -vc "^#" "$OUT") pins)"
