"""The leak checker: every identifying value of the sources, searched for in every element of the outputs.

Identifying values of a source are: every Person Name (whole and each component), dates and times of birth,
and every value the *basic profile* removes or replaces (IDs, addresses, free text, instance UIDs... as Table
E.1-1 says), except descriptors (descriptions, comments: Clean Descriptors' column), which are searched *for*
the other identities but are not identities in themselves.
Nothing is excused because the profile keeps the same word somewhere else (a surname in Sequence Name, which
the table does not list, is a leak). The only excuse: a value found in the very attribute it came from, when an
option in force retains that attribute (e.g. Station Name under Retain Device Identity); it is reported as
*retained by option*, apart from the leaks. The options in force are read from each output's De-identification
Method Code Sequence. Outputs are searched at every level (sequences, private elements, file meta) and as raw
bytes. A report names the output file, the element path and the *source attribute* a value came from, never
the value itself.
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
from pydicom.datadict import dictionary_VR, keyword_for_tag

from incloud_kernel.deid.options import OPTIONS
from incloud_kernel.deid.profile import CODE_TAGS, DESCRIPTOR_TAGS, DUMMIES, plan_for
from incloud_kernel.deid.runner import enumerate_jobs

NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "SV", "UV", "AT", "OF", "OD", "OL", "OV"})
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
STRUCTURAL_VRS = frozenset({"CS", "AS"})  # coded values, not identity (PN/ID/date rules still apply)
MIN_LEN = 3  # shorter values are not searched (too many chance matches)
RAW_LEN = 8  # values at least this long are searched in the raw file bytes
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_PN_SPLIT = re.compile(r"[^0-9A-Za-z\u00C0-\uFFFF]+")  # name components: split at anything not a letter/digit
CODE_TO_OPTION = {o.code: name for name, o in OPTIONS.items()}
DESCRIPTORS = DESCRIPTOR_TAGS  # searched for identities, not identities themselves (see profile)
#: Coded and product values the profile keeps by design: code items (value, scheme, meaning...), the coding
#: scheme's own description, the scanner's make and model. A match there is a *coincidence* only when the output
#: holds exactly a value the same attribute had in the sources (a test file's "PATIENT" plan intent vs a name
#: component "Patient"); anything else there is a leak. CS elements count as coded too.
CODED_TAGS = CODE_TAGS | frozenset({0x00080070, 0x00081090, 0x00080115, 0x00080116})
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
    retained_by: str = ""  # the option that retains this attribute, when the value is in that same attribute

    def __str__(self) -> str:
        text = f"{self.output}: {self.where} holds the value of source {self.source_attribute}"
        return f"{text}, retained by option {self.retained_by}" if self.retained_by else text


@dataclass
class VerifyReport:
    outputs: int = 0
    sources: int = 0
    identities: int = 0
    leaks: list[Leak] = field(default_factory=list)
    #: Identifying values found where an option in force says to keep them (not leaks; listed, never hidden).
    retained: list[Leak] = field(default_factory=list)
    #: Identifying values equal to a coded value the same attribute had in the sources (see ``CODED_TAGS``).
    coincidences: list[Leak] = field(default_factory=list)


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
        vr = elem.VR
        if vr in ("OB", "UN") and kw and not (tag >> 16) & 1:  # a public attribute stored with a wrong VR
            vr = dictionary_VR(tag) if len(dictionary_VR(tag)) == 2 else vr
        for s in _strings(elem.value):
            s = s.strip().strip("\x00").strip()
            if s:
                out.append(Candidate(tag, vr, s, bool((tag >> 16) & 1), "Birth" in kw))
    return out


def _norm(text: str) -> str:
    """Lower-case words joined by one space: the form in which values are compared (word-bounded)."""
    return " ".join(_TOKEN.findall(text.lower()))


@dataclass
class Identities:
    """``words``: normalised value -> source attribute (searched word-bounded in every element);
    ``raw``: original lower-case bytes -> source attribute (searched in raw file bytes, long values only);
    ``retained``: tag -> (option that retains it, normalised values of that attribute in the sources);
    ``coded``: coded tag -> normalised values of that attribute in the sources."""

    words: dict[str, str]
    raw: dict[bytes, str]
    retained: dict[int, tuple[str, set[str]]] = field(default_factory=dict)
    coded: dict[int, set[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.words)


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def identities_for(cands: list[Candidate], options: tuple[str, ...]) -> Identities:
    """The values the profile in force must not let through, with the source attribute of each.

    Identifying (see the module docstring): PN values and their components, birth dates, and every value the
    basic profile removes or replaces, except descriptors (``DESCRIPTORS``: searched, not searched for). Values
    an option retains stay identities; ``check_output`` excuses them only in the same attribute. Words of our
    own dummy values and numbers under 6 digits are not searched (they would only give chance matches).
    """
    basic = plan_for(())
    plan = plan_for(options)
    found: dict[str, str] = {}
    raw: dict[bytes, str] = {}
    retained: dict[int, tuple[str, set[str]]] = {}
    coded: dict[int, set[str]] = {}
    for c in cands:
        if c.vr == "CS" or c.tag in CODED_TAGS:
            coded.setdefault(c.tag, set()).add(_norm(c.value))
        action = basic.tags.get(c.tag)
        name = _name(c.tag)
        identifying = (
            c.vr == "PN" or c.in_birth
            or (action not in (None, "K") and c.tag not in DESCRIPTORS and c.vr not in NUMERIC_VRS
                and c.vr not in STRUCTURAL_VRS and c.vr not in ("OB", "OW", "UN", "SQ"))
        )
        if not identifying or (c.vr == "UI" and action is None):
            continue  # class UIDs and other UIDs not in the table are kept or mapped by design
        values = [c.value]
        if c.vr == "PN":
            values += [p for p in _PN_SPLIT.split(c.value) if len(p) >= 4]  # "Smith-Jones" -> Smith, Jones
        for v in values:
            key = _norm(v) if c.vr != "UI" else v.lower()
            if not key:
                continue
            found.setdefault(key, name)
            raw.setdefault(v.lower().encode("latin-1", "ignore"), name)
        if c.tag in plan.retained:
            key = _norm(c.value) if c.vr != "UI" else c.value.lower()
            retained.setdefault(c.tag, (plan.retained[c.tag], set()))[1].add(key)
    dummy_words = {w for d in IGNORED for w in _TOKEN.findall(d)}
    words = {v: n for v, n in found.items()
             if len(v.replace(" ", "")) >= MIN_LEN and not any(v in w for w in dummy_words)
             and not (v.replace(" ", "").isdigit() and len(v) < 6)}
    # Raw bytes: long values with letters only (digit strings occur by chance inside numeric text like DS).
    raw = {b: n for b, n in raw.items() if len(b) >= RAW_LEN and _norm(b.decode("latin-1")) in words
           and re.search(rb"[a-z]", b)}
    return Identities(words, raw, retained, coded)


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


def _coded_source(value: str, sources: set[str]) -> bool:
    """True if a coded ``value`` is one the same attribute had in the sources, or such a value with whole words
    cut out (the identity guard cuts the patient's name from a Code Meaning; what is left came from the source's
    own code, not from an identity)."""
    if value in sources:
        return True
    words = _TOKEN.findall(value)
    for source in sources:
        it = iter(_TOKEN.findall(source))
        if words and all(w in it for w in words):  # an ordered sub-sequence of the source's words
            return True
    return False


def check_output(path: Path, ds: Dataset, identities: Identities, label: str,
                 matcher: re.Pattern | None = None, retained: list[Leak] | None = None,
                 coincidences: list[Leak] | None = None) -> list[Leak]:
    """Leaks of ``identities`` in one output: whole words in any element at any depth, then raw bytes.

    A value found in the attribute it came from, when an option in force retains that attribute, is not a leak:
    it goes to ``retained`` (if given) with the option's name. A coded value equal to one the same attribute
    had in the sources goes to ``coincidences``. Neither element's bytes are searched again as raw bytes.
    """
    leaks: list[Leak] = []
    matcher = matcher if matcher is not None else _matcher(identities)
    if matcher is None:
        return leaks
    excused: list[bytes] = []
    for where, elem, _ in _walk(ds):
        if elem.VR in NUMERIC_VRS or elem.tag == 0x7FE00010 or any(f"{t:08X}" in where.replace(",", "")
                                                                     for t in OWN_TAGS):
            continue
        for s in _strings(elem.value):
            low = s.lower() if elem.VR == "UI" else _norm(s)
            m = matcher.search(low) if low else None
            if m is None:
                continue
            kept = identities.retained.get(int(elem.tag))
            if kept is not None and low in kept[1]:
                if retained is not None:  # named after its own attribute: that is where the value came from
                    retained.append(Leak(label, where, _name(int(elem.tag)), retained_by=kept[0]))
                excused.append(s.lower().encode("latin-1", "ignore"))
                continue
            if (elem.VR == "CS" or int(elem.tag) in CODED_TAGS) and \
                    _coded_source(low, identities.coded.get(int(elem.tag), set())):
                if coincidences is not None:
                    coincidences.append(Leak(label, where, identities.words[m.group(0)]))
                excused.append(s.lower().encode("latin-1", "ignore"))
                continue
            leaks.append(Leak(label, where, identities.words[m.group(0)]))
            break
    raw = path.read_bytes().lower()
    pixel = ds.get("PixelData")
    if pixel is not None and len(pixel) > 64:  # pixel bytes are passed through, not text: not searched
        raw = raw.replace(bytes(pixel).lower(), b"")
    for value in excused:  # the retained element's own bytes
        raw = raw.replace(value, b"", 1)
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
        report.leaks.extend(check_output(path, ds, ids, job.label, matcher, report.retained,
                                         report.coincidences))
    return report
