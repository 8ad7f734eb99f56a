"""Bad input, property-based: random DICOM headers through the batch runner (``deid/runner.py``) as it is.

hypothesis builds instances with random public and private elements of every VR (values of random length, odd
lengths, empty values), sequences nested up to four deep, explicit/implicit/big-endian encodings, character
sets (Latin-1, UTF-8, Cyrillic, Greek, Japanese ISO 2022, GB18030, and an unknown one), VRs that disagree with
the dictionary, and truncated files; then byte-level mutations. Identities are planted where the profile must
remove them (names, IDs, addresses, comments, private elements, nested items, file meta).

Properties: the runner never raises and never reports "failed"; every input is written or quarantined; a
well-formed input is written; no output file, audit record or reason holds a planted value (raw bytes in the
source character set and UTF-8, and every decoded element). Runs with a fixed number of derandomized examples
so CI sees the same inputs every time.
"""
from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.datadict import DicomDictionary
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from incloud_kernel.deid import DeidContext
from incloud_kernel.deid.options import SITE_DEFAULT
from incloud_kernel.deid.runner import Job, run_batch
from incloud_kernel.deid.table import load_table
from test_deid import KEY

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Planted identities (ASCII; each charset adds a non-ASCII one below). None is a dummy or a common word.
PLANTED = ["Quixplantor", "Zebplantus", "QXPL4NTID7", "Marbleplant", "Plantbridge", "OTHPL4NT99", "Acplantnum"]
#: charset -> (a word of that script used as a planted surname, the Python codec pydicom uses for it)
CHARSETS = {
    "ISO_IR 100": ("Quïxplantör", "latin_1"),
    "ISO_IR 192": ("Квиксплант", "utf_8"),
    "ISO_IR 144": ("Квиксплант", "iso8859_5"),
    "ISO_IR 126": ("Κυιξπλαντ", "iso8859_7"),
    "\\ISO 2022 IR 87": ("山田植物", "iso2022_jp"),
    "GB18030": ("王植物明", "gb18030"),
}
OPTION_SETS = [(), SITE_DEFAULT, SITE_DEFAULT + ("clean_descriptors", "clean_structured_content")]

TABLE = load_table().rule_sets["basic_profile"].tags
#: Public attributes the random part may use: single VR, not retired, not in the table (so kept: never planted
#: there), not file meta / pixel module / character set / SOP identification (those decide what a file *is*).
NOT_RANDOM_GROUPS = (0, 2, 4, 0x28, 0x7FE0)  # command, file meta, directory, pixel module, pixel data
PUBLIC = sorted(
    tag for tag, (vr, _vm, _name, retired, kw) in DicomDictionary.items()
    if kw and not retired and len(vr) == 2 and vr != "SQ" and tag not in TABLE and (tag >> 16) not in NOT_RANDOM_GROUPS
    and tag not in (0x00080005, 0x00080016, 0x00080018, 0x00200013) and not (tag >> 16) & 1
)
PUBLIC_SQ = sorted(tag for tag, (vr, _vm, _n, retired, kw) in DicomDictionary.items()
                   if kw and not retired and vr == "SQ" and tag not in TABLE and (tag >> 16) not in NOT_RANDOM_GROUPS)
ALL_VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
           "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"]
TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 -.,", max_size=40)


def value_for(vr: str, draw, text_extra: str = "") -> object:
    """A value that is valid for ``vr`` (random length, possibly empty)."""
    if vr in ("OB", "UN"):
        return draw(st.binary(max_size=33))
    if vr in ("OW", "OD", "OF", "OL", "OV"):
        unit = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}[vr]
        return draw(st.binary(max_size=24).map(lambda b: b[: len(b) - len(b) % unit]))
    if vr in ("US", "UL", "UV"):
        return draw(st.integers(0, {"US": 0xFFFF, "UL": 0xFFFFFFFF, "UV": 2**64 - 1}[vr]))
    if vr in ("SS", "SL", "SV"):
        bits = {"SS": 15, "SL": 31, "SV": 63}[vr]
        return draw(st.integers(-(2**bits), 2**bits - 1))
    if vr in ("FL", "FD"):
        return draw(st.floats(width=32 if vr == "FL" else 64, allow_nan=False))
    if vr == "AT":
        return draw(st.integers(0, 0xFFFFFFFF))
    if vr == "DA":
        return draw(st.dates().map(lambda d: d.strftime("%Y%m%d")) | st.just(""))
    if vr == "TM":
        return draw(st.times().map(lambda t: t.strftime("%H%M%S")))
    if vr == "DT":
        return draw(st.datetimes().map(lambda t: t.strftime("%Y%m%d%H%M%S")))
    if vr == "AS":
        return draw(st.from_regex(r"\A[0-9]{3}[DWMY]\Z"))
    if vr == "IS":
        return str(draw(st.integers(-99999, 999999)))
    if vr == "DS":
        return draw(st.sampled_from(["0", "1.5", "-3.25", "1e3", "42"]))
    if vr == "UI":
        return draw(st.lists(st.integers(1, 99999), min_size=2, max_size=8).map(lambda p: ".".join(map(str, p))))
    if vr in ("CS", "AE"):
        return draw(st.from_regex(r"\A[A-Z0-9_ ]{0,16}\Z"))
    if vr == "UR":
        return "http://example.org/" + draw(st.from_regex(r"\A[a-z]{0,10}\Z"))
    if vr == "PN":
        return draw(st.from_regex(r"\A[A-Za-z]{1,10}\^[A-Za-z]{0,10}\Z"))
    limit = {"SH": 16, "LO": 64}.get(vr, 200)
    return (draw(TEXT) + text_extra)[:limit]


@dataclass
class Case:
    """One generated input: its bytes, whether it is well-formed, the planted values and their encodings."""

    data: bytes
    well_formed: bool
    planted: list[str]
    encoding: str


@st.composite
def items(draw, depth: int, charset_word: str) -> Dataset:
    """A dataset (top level or sequence item) of random elements, with identities planted where the table (or the
    PN safety net) removes them, and nested sequences."""
    ds = Dataset()
    for tag in draw(st.lists(st.sampled_from(PUBLIC), max_size=6 if depth else 12, unique=True)):
        vr = DicomDictionary[tag][0]
        ds.add(DataElement(tag, vr, value_for(vr, draw)))
    # Private blocks: random creators (never an allow-listed one), random VRs, planted text.
    for n, group in enumerate(draw(st.lists(st.sampled_from([0x0009, 0x0011, 0x0029, 0x0043, 0x2001]), max_size=2))):
        block = ds.private_block(group, f"FUZZ CREATOR {depth}{n}", create=True)
        for offset, vr in enumerate(draw(st.lists(st.sampled_from(ALL_VRS), max_size=4))):
            value = value_for(vr, draw)
            if vr in ("LO", "LT", "SH", "ST", "UT", "UC", "PN"):
                value = (PLANTED[offset % len(PLANTED)] + " " + str(value))[: 16 if vr == "SH" else 64]
            elif vr in ("OB", "UN"):
                value = PLANTED[0].encode() + bytes(value)
            block.add_new(0x10 + offset, vr, value)
    # Identities where the profile must act: PN anywhere (D), IDs and other IDs (table), at any depth.
    ds.add(DataElement(0x0040A123, "PN", f"{PLANTED[1]}^{charset_word}"))  # Person Name
    if draw(st.booleans()):
        ds.add(DataElement(0x00101000, "LO", f"{PLANTED[5]}\\{PLANTED[2]}"))  # Other Patient IDs (X)
    if depth < 4:
        for tag in draw(st.lists(st.sampled_from(PUBLIC_SQ), max_size=2 if depth else 3, unique=True)):
            children = draw(st.lists(items(depth + 1, charset_word), max_size=2))
            ds.add(DataElement(tag, "SQ", Sequence(children)))
    return ds


@st.composite
def cases(draw) -> Case:
    charset = draw(st.sampled_from(sorted(CHARSETS)))
    word, codec = CHARSETS[charset]
    ds = draw(items(0, word))
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    name_vr = draw(st.sampled_from(["PN", "PN", "LO", "UN", "OB"]))  # a VR the dictionary disagrees with
    name = f"{PLANTED[0]}^{word}"
    ds.add(DataElement(0x00100010, name_vr, name.encode(codec) if name_vr in ("UN", "OB") else name))
    ds.PatientID = PLANTED[2]
    ds.OtherPatientIDs = PLANTED[5]
    ds.PatientAddress = f"12 {PLANTED[4]} Road"
    ds.ReferringPhysicianName = f"{PLANTED[3]}^{word}"
    ds.InstitutionName = f"{PLANTED[4]} Clinic {word}"
    ds.AccessionNumber = PLANTED[6]
    ds.PatientBirthDate = "19610423"
    ds.ImageComments = f"seen {PLANTED[0]} {word}"  # a descriptor: cut by Clean Descriptors, else removed
    ds.SOPClassUID = draw(st.sampled_from(["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2",
                                           "1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.8.498.99"]))
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.5." + str(draw(st.integers(1, 10**9)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.6", "1.2.826.0.1.3680043.8.498.7"
    ds.Modality = "MR"
    if draw(st.booleans()):
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 12, 11
        ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
        ds.PixelData = bytes(8)
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "PLANTAE01"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
                   little_endian=syntax != ExplicitVRBigEndian)
    data = buf.getvalue()
    well_formed = True
    if draw(st.integers(0, 4)) == 0:  # unknown character set, same length (the framing is unchanged)
        data = data.replace(b"ISO_IR 100", b"ISO_IR 999").replace(b"ISO_IR 192", b"ISO_IR 999")
    cut = draw(st.integers(0, 5))
    if cut == 0:  # truncated anywhere after the preamble
        data = data[: draw(st.integers(0, len(data) - 1))]
        well_formed = False
    return Case(data, well_formed, PLANTED + [word, "PLANTAE01"], codec)


def _scan(path: Path, case: Case) -> list[str]:
    """Planted values found in an output file: raw bytes (source codec, UTF-8) and every decoded element."""
    raw = path.read_bytes()
    low = raw.lower()
    found = [v for v in case.planted
             if v.lower().encode(case.encoding, "ignore") in low or v.lower().encode("utf-8") in low
             or v.encode(case.encoding, "ignore") in raw]
    # pydicom's reading settings are process-wide and other tests change them: the scanner sets its own, so a
    # corrupt value (a wrong-length FD, say) is read as UN bytes and still searched, never raised on
    config = pydicom.config
    saved = config.convert_wrong_length_to_UN, config.settings.reading_validation_mode
    try:
        config.convert_wrong_length_to_UN, config.settings.reading_validation_mode = True, config.WARN
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            texts = [str(e.value) for e in [*ds.file_meta, *ds.iterall()] if e.VR != "SQ" and e.tag != 0x7FE00010]
    finally:
        config.convert_wrong_length_to_UN, config.settings.reading_validation_mode = saved
    joined = "\n".join(texts).lower()
    found += [v for v in case.planted if v.lower() in joined]
    return found


def _run(batch: list[Case], options: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        jobs = []
        for i, case in enumerate(batch):
            (root / "src" / f"{i}.dcm").write_bytes(case.data)
            jobs.append(Job(str(root / "src" / f"{i}.dcm")))
        results = []
        summary = run_batch(jobs, DeidContext(key=KEY, options=options, allow_burned_in=True), root / "out",
                            root / "q", n_jobs=1, on_result=results.append)
        assert summary.failed == 0 and summary.total == len(batch)
        by_path = {r.job.path: r for r in results}
        for i, case in enumerate(batch):
            r = by_path[str(root / "src" / f"{i}.dcm")]
            assert r.status in ("done", "quarantined"), r.reason
            if case.well_formed:
                assert r.status == "done", r.reason  # never quarantined for a valid header
            message = json.dumps({"reason": r.reason, "record": r.record}).lower()
            assert not [v for v in case.planted if v.lower() in message]
            if r.status == "done":
                assert _scan(root / "out" / r.output, case) == [], (r.output, options)
        records = list((root / "q").rglob("record.json"))
        assert len(records) == sum(r.status == "quarantined" for r in results)  # one shared record per held input
        for record in records:
            text = record.read_text().lower()
            assert not [v for case in batch for v in case.planted if v.lower() in text]


@FUZZ
@given(batch=st.lists(cases(), min_size=1, max_size=3), options=st.sampled_from(OPTION_SETS))
def test_random_headers_are_written_without_planted_values_or_quarantined(batch, options):
    _run(batch, options)


@st.composite
def mutated(draw) -> Case:
    """A generated file with a few random bytes overwritten after the file meta (lengths, VRs, values)."""
    case = draw(cases())
    data = bytearray(case.data)
    if len(data) > 300:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(300, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    return Case(bytes(data), False, [], case.encoding)


@FUZZ
@given(batch=st.lists(mutated(), min_size=1, max_size=3), options=st.sampled_from(OPTION_SETS))
def test_corrupted_bytes_are_written_or_quarantined_never_fail(batch, options):
    """Corrupt framing can move any bytes into any element, so no leak property here: only that nothing is
    lost (written or quarantined, with a reason) and nothing escapes as an exception."""
    _run(batch, options)


# --- what the fuzzing found, kept as plain regression tests ------------------------------------------------

def _planted_file(syntax: str, tail: bytes) -> Case:
    from test_deid import NAME, planted

    ds = planted()
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Case(buf.getvalue() + tail, True, [NAME.split("^")[0]], "latin_1")


def test_a_file_meta_element_inside_the_dataset_is_dropped_and_the_output_reads_back():
    """A corrupt length upstream can leave a (0002,xxxx) element in the dataset; written back, readers take it
    for file meta (it was quarantined as error:ValueError, or written unreadable)."""
    _run([_planted_file(ImplicitVRLittleEndian, b"\x02\x00\x00\x00\x04\x00\x00\x00\x10\x00\x00\x00")], SITE_DEFAULT)


def test_an_element_with_an_unknown_vr_is_quarantined_not_written_unreadable():
    case = _planted_file(ExplicitVRLittleEndian, b"\x18\x00\x99\x99CO\x02\x00ab")
    case.well_formed = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.dcm"
        path.write_bytes(case.data)
        results = []
        run_batch([Job(str(path))], DeidContext(key=KEY), Path(tmp) / "out", Path(tmp) / "q", on_result=results.append)
    assert [(r.status, r.reason) for r in results] == [("quarantined", "unknown-vr")]


def test_a_binary_element_with_a_length_its_vr_cannot_hold_is_quarantined():
    """Found by the corrupted-bytes property: in an implicit-VR file a corrupt tag turned Patient ID into
    (0024,0020), an FL attribute, with 10 bytes; it was kept as stored and the output could not be read back."""
    case = _planted_file(ImplicitVRLittleEndian, b"\x24\x00\x20\x00\x0a\x00\x00\x00QXPL4NTID7")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "a.dcm"
        src.write_bytes(case.data)
        results = []
        run_batch([Job(str(src))], DeidContext(key=KEY, options=()), Path(tmp) / "out", Path(tmp) / "q",
                  n_jobs=1, on_result=results.append)
    assert [(r.status, r.reason) for r in results] == [("quarantined", "bad-length")]
