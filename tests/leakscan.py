"""Test helper: look for planted identities where data ENDS UP, not only in the de-identified DICOM cache.

``scan_tree`` reads every file under a folder (the archive, a site home, logs): NIfTI headers field by field
(descrip, aux_file, intent_name, db_name, extensions), then the whole content of every file, gunzipped when it is
gzip (``.nii.gz``) -- JSON sidecars, TSVs, DICOM in sourcedata, the SQLite database file and its journal, logs.
``scan_database`` reads every text column of every table through SQLAlchemy (for PostgreSQL, whose files are
not under the site). Matching is case-insensitive on the bytes (ASCII and UTF-8) of each needle.

Needles come from ``identity_needles``: the planted values themselves and their name/word parts of at least
``min_token`` characters (DICOM PN components split on ``^``), plus any extra strings (original UIDs).
A hit names the file, where in it, and the needle -- tests print hits, which hold only the planted test values.
"""
from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

#: NIfTI-1/2 header fields that hold free text (dcm2niix writes descrip and may write aux_file).
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


@dataclass(frozen=True)
class Leak:
    path: str
    where: str
    needle: str


def identity_needles(values: Iterable[Any], *, extra: Iterable[str] = (), min_token: int = 4) -> list[str]:
    """Every planted value and its parts (split on ``^``, spaces, commas, ``=``) of at least ``min_token``
    characters, lower-cased and de-duplicated; ``extra`` strings (UIDs) are kept whole."""
    out: set[str] = set()
    for value in values:
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            text = str(item).strip()
            if len(text) >= min_token:
                out.add(text.lower())
            for token in re.split(r"[\^\s,=/\\]+", text):
                if len(token) >= min_token:
                    out.add(token.lower())
    out.update(str(e).lower() for e in extra if str(e))
    return sorted(out)


def _find(data: bytes, needles: list[str]) -> list[str]:
    low = data.lower()
    return [n for n in needles if n.encode() in low]


def _content(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return data
    return data


def _nifti_fields(path: Path, needles: list[str]) -> list[Leak]:
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception:  # noqa: BLE001 - not a readable NIfTI: the byte scan still covers the file
        return []
    leaks: list[Leak] = []
    header = image.header
    for field in NIFTI_TEXT_FIELDS:
        if field not in header:
            continue
        value = header[field]
        raw = value.tobytes() if hasattr(value, "tobytes") else bytes(str(value), "utf-8")
        leaks += [Leak(str(path), f"nifti header {field}", n) for n in _find(raw, needles)]
    for ext in getattr(header, "extensions", []) or []:
        content = ext.get_content()
        raw = content if isinstance(content, bytes) else str(content).encode("utf-8", "replace")
        leaks += [Leak(str(path), f"nifti extension {ext.get_code()}", n) for n in _find(raw, needles)]
    return leaks


def scan_tree(root: Path, needles: list[str], *, exclude: Iterable[Path] = ()) -> list[Leak]:
    """Every needle found in any file under ``root`` (folders in ``exclude`` are passed over)."""
    skip = [p.resolve() for p in exclude]
    leaks: list[Leak] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skip):
            continue
        if path.name.endswith((".nii", ".nii.gz")):
            leaks += _nifti_fields(path, needles)
        try:
            data = _content(path)
        except OSError:
            continue
        leaks += [Leak(str(path), "content", n) for n in _find(data, needles)]
    return leaks


def scan_database(engine: Any, needles: list[str]) -> list[Leak]:
    """Every needle found in any column of any row of the site database (through SQLAlchemy)."""
    from sqlalchemy import MetaData, select

    meta = MetaData()
    meta.reflect(bind=engine)
    leaks: list[Leak] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                text = "\t".join("" if v is None else str(v) for v in row).encode("utf-8", "replace")
                leaks += [Leak(f"database table {table.name}", "row", n) for n in _find(text, needles)]
    return leaks


def summary(leaks: list[Leak], root: Path | None = None) -> str:
    """One line per kind of place (file name with UIDs and labels folded, where in it) with the needles found."""
    kinds: dict[tuple[str, str], set[str]] = {}
    for leak in leaks:
        path = leak.path
        if root is not None and path.startswith(str(root)):
            path = path[len(str(root)):].lstrip("/")
        path = re.sub(r"[0-9]+(\.[0-9]+){2,}", "<uid>", path)
        path = re.sub(r"(sub|ses)-[A-Za-z0-9]+", r"\1-*", path)
        path = re.sub(r"/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f-]{36}", "/<orthanc file>", path)
        kinds.setdefault((path, leak.where), set()).add(leak.needle)
    return "\n".join(f"{p} [{w}]: {', '.join(sorted(n))}" for (p, w), n in sorted(kinds.items()))
