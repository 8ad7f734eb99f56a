"""The leak checker: every identifying value of the sources, searched for in every element of the outputs.

Identifying values of a source are: every Person Name (whole and each component), dates and times of birth,
every value the profile actually in force removes or replaces (IDs, addresses, free text, instance UIDs... as
Table E.1-1 and the options say), and private text values. The options in force are read from each output's
De-identification Method Code Sequence. Outputs are searched at every level (sequences, private elements,
file meta) and as raw bytes. A report names the output file, the element path and the *source attribute*
a value came from, never the value itself.
"""
from __future__ import annotations

import gzip
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pydicom
from pydicom import Dataset
from pydicom.datadict import keyword_for_tag

from incloud_kernel.deid.options import OPTIONS
from incloud_kernel.deid.profile import DUMMIES, plan_for
from incloud_kernel.deid.runner import enumerate_jobs

NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "SV", "UV", "AT", "OF", "OD", "OL", "OV"})
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
STRUCTURAL_VRS = frozenset({"CS", "AS"})  # coded values, not identity (PN/ID/date rules still apply)
MIN_LEN = 3  # shorter values are not searched (too many chance matches)
RAW_LEN = 8  # values at least this long are searched in the raw file bytes
_TOKEN = re.compile(r"[A-Za-z0-9]+")
CODE_TO_OPTION = {o.code: name for name, o in OPTIONS.items()}
IGNORED = {str(v).lower() for v in DUMMIES.values() if v not in (None, "")}


@dataclass(frozen=True)
class Candidate:
    """A value found in a source, with where it came from (the attribute, never shown with its value)."""

    tag: int
    vr: str
    value: str
    private: bool
    in_birth: bool


@dataclass
class Leak:
    output: str
    where: str  # element path in the output, e.g. "(0040,A730)[0].(0040,A160)" or "raw bytes"
    source_attribute: str  # which source attribute the value came from

    def __str__(self) -> str:
        return f"{self.output}: {self.where} holds the value of source {self.source_attribute}"


@dataclass
class VerifyReport:
    outputs: int = 0
    sources: int = 0
    identities: int = 0
    leaks: list[Leak] = field(default_factory=list)


def _read(path: Path, member: str | None = None) -> Dataset | None:
    """The whole dataset (elements after the pixel data too), or None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if member is not None:
                import zipfile

                with zipfile.ZipFile(path) as zf:
                    data = zf.read(member)
            else:
                data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            return pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - unreadable sources hold nothing we can check
        return None


def _walk(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, object, bool]]:
    """(path, element, inside-birth-context) for every element at every depth, file meta first."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and not prefix:
        for elem in meta:
            yield f"{elem.tag}", elem, False
    for elem in ds:
        path = f"{prefix}{elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _walk(item, f"{path}[{i}].")
        else:
            yield path, elem, False


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value).decode("latin-1")]
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)
                                            and not hasattr(value, "components")):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def source_candidates(ds: Dataset) -> list[Candidate]:
    out = []
    for _, elem, _ in _walk(ds):
        tag = int(elem.tag)
        if tag in PIXEL_TAGS:
            continue  # pixels are not header values (and as "text" they would only add noise to kept words)
        if tag >> 16 == 0x0002 and tag != 0x00020003:
            continue  # file meta other than the instance UID is no identity
        kw = keyword_for_tag(tag) or ""
        for s in _strings(elem.value):
            s = s.strip().strip("\x00").strip()
            if s:
                out.append(Candidate(tag, elem.VR, s, bool((tag >> 16) & 1), "Birth" in kw))
    return out


def _norm(text: str) -> str:
    """Lower-case words joined by one space: the form in which values are compared (word-bounded)."""
    return " ".join(_TOKEN.findall(text.lower()))


@dataclass
class Identities:
    """``words``: normalised value -> source attribute (searched word-bounded in every element);
    ``raw``: original lower-case bytes -> source attribute (searched in raw file bytes, long values only)."""

    words: dict[str, str]
    raw: dict[bytes, str]

    def __len__(self) -> int:
        return len(self.words)


def identities_for(cands: list[Candidate], options: tuple[str, ...]) -> Identities:
    """normalised value -> source attribute name, for the values the profile in force must not let through.

    Values that the profile keeps somewhere in the sources (e.g. a manufacturer's name that is also part of an
    institution's name), words of our own dummy values, and short numbers are not identities.
    """
    plan = plan_for(options)
    kept: set[str] = set()
    found: dict[str, str] = {}
    raw: dict[bytes, str] = {}
    for c in cands:
        action = plan.tags.get(c.tag)
        name = keyword_for_tag(c.tag) or f"({c.tag >> 16:04X},{c.tag & 0xFFFF:04X})"
        identifying = (
            c.vr == "PN" or c.in_birth
            or (action in ("X", "Z", "D", "U") and c.vr not in NUMERIC_VRS and c.vr not in STRUCTURAL_VRS
                and c.vr not in ("OB", "OW", "UN", "SQ"))
        )
        if c.vr == "UI" and action is None:
            identifying = False  # class UIDs and other UIDs not in the table are kept or mapped by design
        values = [c.value]
        if c.vr == "PN":
            values += [p for p in re.split(r"[\^=\s,]+", c.value) if len(p) >= 4]
        for v in values:
            key = _norm(v) if c.vr != "UI" else v.lower()
            if not key:
                continue
            if identifying:
                found.setdefault(key, name)
                raw.setdefault(v.lower().encode("latin-1", "ignore"), name)
            elif action in (None, "K", "C") and not c.private:
                kept.add(key)
                kept.update(key.split())
    dummy_words = {w for d in IGNORED for w in _TOKEN.findall(d)}
    kept_text = "|" + "|".join(f" {k} " for k in kept) + "|"  # a kept value that contains the identity
    words = {v: n for v, n in found.items()
             if len(v.replace(" ", "")) >= MIN_LEN and f" {v} " not in kept_text and not any(v in w for w in dummy_words)
             and not (v.replace(" ", "").isdigit() and len(v) < 6)}
    # Raw bytes: long values with letters only (digit strings occur by chance inside numeric text like DS).
    raw = {b: n for b, n in raw.items() if len(b) >= RAW_LEN and _norm(b.decode("latin-1")) in words
           and re.search(rb"[a-z]", b)}
    return Identities(words, raw)


def _options_of(ds: Dataset) -> tuple[str, ...]:
    codes = [str(i.get("CodeValue", "")) for i in ds.get("DeidentificationMethodCodeSequence", [])]
    return tuple(CODE_TO_OPTION[c] for c in codes if c in CODE_TO_OPTION)


def _matcher(identities: Identities) -> re.Pattern | None:
    if not identities.words:
        return None
    alternatives = "|".join(re.escape(v) for v in sorted(identities.words, key=len, reverse=True))
    return re.compile(rf"(?<![a-z0-9.])(?:{alternatives})(?![a-z0-9])")


#: What we insert ourselves (fixed texts and codes): not searched.
OWN_TAGS = frozenset({0x00120063, 0x00120064, 0x00020012, 0x00020013})


def check_output(path: Path, ds: Dataset, identities: Identities, label: str,
                 matcher: re.Pattern | None = None) -> list[Leak]:
    """Leaks of ``identities`` in one output: whole words in any element at any depth, then raw bytes."""
    leaks: list[Leak] = []
    matcher = matcher if matcher is not None else _matcher(identities)
    if matcher is None:
        return leaks
    for where, elem, _ in _walk(ds):
        if elem.VR in NUMERIC_VRS or elem.tag == 0x7FE00010 or any(f"{t:08X}" in where.replace(",", "")
                                                                     for t in OWN_TAGS):
            continue
        for s in _strings(elem.value):
            low = s.lower() if elem.VR == "UI" else _norm(s)
            m = matcher.search(low) if low else None
            if m is not None:
                leaks.append(Leak(label, where, identities.words[m.group(0)]))
                break
    raw = path.read_bytes().lower()
    pixel = ds.get("PixelData")
    if pixel is not None and len(pixel) > 64:  # pixel bytes are passed through, not text: not searched
        raw = raw.replace(bytes(pixel).lower(), b"")
    for value, n in identities.raw.items():
        if value in raw:
            leaks.append(Leak(label, "raw bytes", n))
    return leaks


def verify(outputs: Iterable[str | Path], sources: Iterable[str | Path]) -> VerifyReport:
    """Search every output file for every identifying value of every source file (see the module docstring).

    pydicom's warnings (which quote header values) are silenced while it runs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("pydicom").level
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        try:
            return _verify(outputs, sources)
        finally:
            logging.getLogger("pydicom").setLevel(level)


def _verify(outputs: Iterable[str | Path], sources: Iterable[str | Path]) -> VerifyReport:
    report = VerifyReport()
    cands: list[Candidate] = []
    for job in enumerate_jobs(list(sources)):
        ds = _read(Path(job.path), job.member)
        if ds is not None and "DirectoryRecordSequence" not in ds:
            report.sources += 1
            cands.extend(source_candidates(ds))
    by_options: dict[tuple[str, ...], dict[str, str]] = {}
    for job in enumerate_jobs(list(outputs)):
        path = Path(job.path)
        ds = _read(path, job.member)
        if ds is None:
            continue
        report.outputs += 1
        options = _options_of(ds)
        if options not in by_options:
            ids = identities_for(cands, options)
            by_options[options] = (ids, _matcher(ids))
        ids, matcher = by_options[options]
        report.identities = max(report.identities, len(ids))
        report.leaks.extend(check_output(path, ds, ids, job.label, matcher))
    return report
