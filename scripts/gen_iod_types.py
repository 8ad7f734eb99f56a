#!/usr/bin/env python3
"""Regenerate ``incloud_kernel/deid/iod_types.json``: the PS3.3 Type of each attribute that has a combined action
in Table E.1-1 (X/Z, X/D, Z/D, X/Z/D, X/Z/U*), per IOD, and which IOD each SOP Class UID uses.

PS3.15 resolves a combined action from the attribute's Type in the instance's IOD ("X/Z: X unless Z is required
to maintain IOD conformance (Type 2)"...). The module tables of PS3.3 come from the ``dicom-standard`` package
(PyPI, MIT, by Innolitics): its wheel ships PS3.3/PS3.4 parsed to JSON (``sops.json``, ``ciods.json``,
``ciod_to_modules.json``, ``module_to_attributes.json``, ``ciod_to_fg_macros.json``, ``macro_to_attributes.json``).
We read those data files from the wheel (downloaded with pip, never installed, never imported: only its data).
Nothing here is typed by hand. The product reads only the generated JSON. Run:

    /opt/incloud/venv/bin/python scripts/gen_iod_types.py               # downloads the wheel (pip, no deps)
    /opt/incloud/venv/bin/python scripts/gen_iod_types.py --wheel W     # or reads a wheel you have
    /opt/incloud/venv/bin/python scripts/gen_iod_types.py --standard D  # or a folder of those JSON files
                                                                         # (e.g. a checkout's standard/)

Output, kept small: ``sop_classes`` (SOP Class UID -> IOD id), and per IOD ``top`` (tag -> Type of the attribute
at the top level of the dataset: the strictest Type over the IOD's modules) and ``nested`` (tag -> the strictest
Type over every sequence item of the IOD's modules and functional group macros that holds it). Types are
1, 2 or 3 (1C counts as 1 and 2C as 2: the condition holds when the attribute is there). Only tags with a
combined action in some column of ``e1_1.json`` are listed.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "incloud_kernel" / "deid" / "iod_types.json"
TABLE = ROOT / "incloud_kernel" / "deid" / "e1_1.json"
PACKAGE_VERSION = "0.1.0"  # dicom-standard 0.1.0 (2020-04-07): the standard as published on that date
FILES = ("sops.json", "ciods.json", "ciod_to_modules.json", "module_to_attributes.json", "ciod_to_fg_macros.json",
         "macro_to_attributes.json")
TYPE_RANK = {"1": 1, "1C": 1, "2": 2, "2C": 2, "3": 3}


def combined_tags() -> set[str]:
    """Tags (8 hex digits, upper case) with a combined action in any column of the shipped Table E.1-1."""
    table = json.loads(TABLE.read_text())
    return {t.upper() for rs in table["rule_sets"].values() for t, a in rs["tags"].items() if "/" in a}


def _load(args: argparse.Namespace) -> tuple[dict[str, list], str]:
    """The JSON files by name, and a description of where they came from."""
    if args.standard:
        folder = Path(args.standard)
        return {f: json.loads((folder / f).read_text()) for f in FILES}, f"{folder} (dicom-standard JSON)"
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else None
        if wheel is None:  # the ordinary client, no install, no dependencies
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                            f"dicom-standard=={args.version}"], check=True)
            wheel = next(Path(tmp).glob("dicom_standard-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            names = {Path(n).name: n for n in zf.namelist() if "/standard/" in n and n.endswith(".json")}
            data = {f: json.loads(zf.read(names[f])) for f in FILES}
        return data, f"{wheel.name} (dicom-standard, PS3.3/PS3.4 as JSON)"


def _tag(path_part: str) -> str:
    return path_part.upper()


def build(data: dict[str, list], wanted: set[str]) -> dict:
    """Per IOD: strictest Type at the top level and inside sequences, for the ``wanted`` tags only."""
    modules: dict[str, list[tuple[list[str], str]]] = {}
    for row in data["module_to_attributes.json"]:
        if row["type"] in TYPE_RANK:
            modules.setdefault(row["moduleId"], []).append((row["path"].split(":")[1:], row["type"]))
    macros: dict[str, list[tuple[list[str], str]]] = {}
    for row in data["macro_to_attributes.json"]:
        if row["type"] in TYPE_RANK:
            macros.setdefault(row["macroId"], []).append((row["path"].split(":")[1:], row["type"]))
    iods: dict[str, dict[str, dict[str, str]]] = {}

    def note(iod: str, where: str, tag: str, typ: str) -> None:
        if tag not in wanted:
            return
        slot = iods.setdefault(iod, {"top": {}, "nested": {}})[where]
        old = slot.get(tag)
        if old is None or TYPE_RANK[typ] < int(old):
            slot[tag] = str(TYPE_RANK[typ])

    for row in data["ciod_to_modules.json"]:
        iods.setdefault(row["ciodId"], {"top": {}, "nested": {}})
        for path, typ in modules.get(row["moduleId"], []):
            note(row["ciodId"], "top" if len(path) == 1 else "nested", _tag(path[-1]), typ)
    for row in data["ciod_to_fg_macros.json"]:  # functional groups: always inside (5200,9229)/(5200,9230) items
        for path, typ in macros.get(row["macroId"], []):
            note(row["ciodId"], "nested", _tag(path[-1]), typ)
    by_name = {c["name"].strip().lower(): c["id"] for c in data["ciods.json"]}
    sops = {}
    for sop in data["sops.json"]:
        iod = by_name.get(sop["ciod"].strip().lower()) or re.sub(r"[^a-z0-9]+", "-", sop["ciod"].lower()).strip("-")
        if iod in iods:
            sops[sop["id"]] = iod
    used = set(sops.values())
    return {"sop_classes": dict(sorted(sops.items())),
            "iods": {k: {w: dict(sorted(v[w].items())) for w in ("top", "nested")}
                     for k, v in sorted(iods.items()) if k in used}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=PACKAGE_VERSION, help="dicom-standard release to download")
    parser.add_argument("--wheel", help="use this dicom-standard wheel instead of downloading")
    parser.add_argument("--standard", help="use this folder of dicom-standard JSON files instead")
    args = parser.parse_args()
    data, where = _load(args)
    built = build(data, combined_tags())
    out = {"source": where, "edition": "as published on the package date (dicom-standard "
           f"{args.version}: 2020-04-07, i.e. 2020b)" if not args.standard else "see source",
           "generated_by": "scripts/gen_iod_types.py", **built}
    OUT.write_text(json.dumps(out, indent=0, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {len(built['sop_classes'])} SOP classes, {len(built['iods'])} IODs, "
          f"{len(combined_tags())} tags with combined actions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
