"""De-identification at disk speed: functional groups in bulk, pixel data copied file to file, same output.

The reference is the general path that de-identified everything before (pydicom parses the whole file, the
profile walks every item of every sequence, pydicom's writer where needed). Inputs are the enhanced multi-frame
files that ship with nibabel (Philips MR, 176 frames, 22 MiB) and pydicom (enhanced CT), one of them with
identities planted inside the per-frame functional groups.
"""
from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import nibabel
import pydicom
import pydicom.filereader
import pydicom.uid
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence

from incloud_kernel.deid import DeidContext, rawseq
from incloud_kernel.deid.deidentify import deidentify_with_record
from incloud_kernel.deid.errors import DeidError
from incloud_kernel.deid.options import OPTIONS, SITE_DEFAULT
from incloud_kernel.deid.runner import Job, _read, enumerate_jobs, run_batch
from incloud_kernel.deid.writer import encode_chunks, encode_file
from incloud_kernel.dicom.part10 import FileRange
from test_deid import KEY, NAME, PID, REFERRER

PHILIPS_GZ = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
OPTION_SETS = [(), tuple(SITE_DEFAULT), tuple(OPTIONS)]
PER_FRAME = 0x52009230


def _ctx(options: tuple[str, ...]) -> DeidContext:
    return DeidContext(key=KEY, options=options, allow_burned_in=True)


@pytest.fixture(scope="module")
def philips(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("enhanced") / "philips.dcm"
    path.write_bytes(gzip.decompress(PHILIPS_GZ.read_bytes()))
    return path


@pytest.fixture(scope="module")
def planted_enhanced(philips: Path, tmp_path_factory) -> Path:
    """The Philips file with identities, references and dates inside the per-frame groups (public and private)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(philips)
    ds.PatientName, ds.PatientID, ds.ReferringPhysicianName = NAME, PID, REFERRER  # the patient's own values
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = Dataset()
        source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        source.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{k % 7}"  # repeats across frames
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source])
        derivation.DerivationDescription = f"made by {REFERRER}"
        item.DerivationImageSequence = Sequence([derivation])
        content = item.FrameContentSequence[0]
        content.FrameComments = f"frame of {NAME}"
        if k % 3 == 0:  # a text the identity guard must cut, in a macro the plan otherwise keeps as stored
            item.PlanePositionSequence[0].add_new(0x00209056, "SH", NAME.split("^")[0])
        block = item.private_block(0x0011, "INCLOUD TEST", create=True)
        block.add_new(0x01, "LO", PID)
        block.add_new(0x02, "PN", NAME)
    path = tmp_path_factory.mktemp("planted") / "planted.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def planted_implicit(planted_enhanced: Path, tmp_path_factory) -> Path:
    """The planted file in implicit VR little endian: headers without VRs, sequences known by undefined length."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(planted_enhanced)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    path = tmp_path_factory.mktemp("implicit") / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return path


def _decoded(data: bytes) -> list[tuple[str, str, str]]:
    back = pydicom.dcmread(io.BytesIO(data))
    return sorted((str(e.tag), e.VR, repr(e.value)) for e in [*back.file_meta, *back.iterall()])


def _general(path: Path, options: tuple[str, ...]) -> tuple[bytes, dict]:
    """The reference, the path every file took before: ``dcmread`` parses the functional groups into items (so
    nothing is raw for the bulk path) and the profile walks every item; pixel data read into memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        assert not isinstance(ds._dict[PER_FRAME], pydicom.dataelem.RawDataElement)  # noqa: SLF001
        new, record = deidentify_with_record(ds, _ctx(options))
    return encode_file(new), record.changes


def _bulk(path: Path, options: tuple[str, ...]) -> tuple[bytes, dict, pydicom.FileDataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(Job(str(path)))
        new, record = deidentify_with_record(ds, _ctx(options), shared=True)
    return encode_file(new, str(path)), record.changes, new


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "site-default", "all"])
@pytest.mark.parametrize("which", ["philips", "planted", "planted-implicit", "enhanced-ct"])
def test_bulk_output_is_element_identical_to_the_general_walk(which, options, philips, planted_enhanced,
                                                              planted_implicit):
    path = {"philips": philips, "planted": planted_enhanced, "planted-implicit": planted_implicit,
            "enhanced-ct": Path(get_testdata_file("liver_1frame.dcm"))}[which]
    reference, ref_changes = _general(path, options)
    data, changes, _ = _bulk(path, options)
    assert _decoded(data) == _decoded(reference)
    assert changes == ref_changes


@pytest.mark.parametrize("options", OPTION_SETS, ids=["basic", "site-default", "all"])
def test_identities_planted_in_per_frame_groups_do_not_survive_the_bulk_path(options, planted_enhanced):
    data, _, new = _bulk(planted_enhanced, options)
    for value in (NAME, PID, REFERRER, "Zebulon", "Quixotic", "Marbleworth", "1.2.826.0.1.3680043.8.498.77"):
        assert value.encode() not in data
    refs = {e.value for e in new.iterall() if e.keyword == "ReferencedSOPInstanceUID"} - {""}
    # kept references (the profile may also empty or drop them by the IOD's Type) are mapped, consistently
    assert all(r.startswith("2.25.") for r in refs) and len(refs) <= 7 + 1


def test_per_frame_groups_are_not_parsed_item_by_item(philips, monkeypatch):
    """176 frames x 9 macros + a private sequence each: the old path parsed ~2,100 items with pydicom; the bulk
    path parses each distinct macro item once and never the private sequences the profile removes."""
    parsed = []
    original = pydicom.filereader.read_sequence_item

    def counting(*args, **kwargs):
        item = original(*args, **kwargs)
        if item is not None:
            parsed.append(1)
        return item

    monkeypatch.setattr(pydicom.filereader, "read_sequence_item", counting)
    _, _, new = _bulk(philips, tuple(SITE_DEFAULT))
    during = len(parsed)
    assert len(new.PerFrameFunctionalGroupsSequence) == 176
    # distinct macro items here: frame content and plane position (176 each), frame VOI LUT (142), 7 repeated
    assert during < 4 * 176, during  # the old path: ~2,100


@pytest.mark.parametrize("options", OPTION_SETS[:2], ids=["basic", "site-default"])
def test_macro_items_the_plan_decides_are_never_parsed(philips, options, monkeypatch):
    """Plane position and frame VOI LUT items (kept as stored) and frame content items (dates decided on their raw
    bytes) differ in every frame: the plan per macro shape decides them without pydicom parsing any of them.
    (Not under Clean Descriptors: its scrubber collects identity tokens from every item, parsed, at any depth.)"""
    parsed: list[Dataset] = []
    original = pydicom.filereader.read_sequence_item

    def counting(*args, **kwargs):
        item = original(*args, **kwargs)
        if item is not None:
            parsed.append(item)
        return item

    monkeypatch.setattr(pydicom.filereader, "read_sequence_item", counting)
    _, _, new = _bulk(philips, options)
    during = list(parsed)  # before the output is looked at (reading it back parses it)
    assert len(new.PerFrameFunctionalGroupsSequence) == 176
    per_frame_macros = {0x00200032, 0x00281050, 0x00209057}  # Image Position, Window Center, In-Stack Position
    assert not [item for item in during if per_frame_macros & set(item.keys())]
    assert len(during) < 40, len(during)  # the shared groups' references and code items: a few dozen at most


def test_large_pixel_data_is_copied_file_to_file_never_read(philips):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(Job(str(philips)))
    assert ds._dict[0x7FE00010].value is None  # deferred: not read into memory  # noqa: SLF001
    new, _ = deidentify_with_record(ds, _ctx(tuple(SITE_DEFAULT)), shared=True)
    ranges = [c for c in encode_chunks(new, str(philips)) if isinstance(c, FileRange)]
    assert len(ranges) == 1 and ranges[0].length == 256 * 256 * 176 * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = pydicom.dcmread(philips)
    assert ranges[0].read() == source.PixelData


def test_runner_writes_the_enhanced_file_with_its_pixels(philips, tmp_path):
    results = []
    summary = run_batch(enumerate_jobs([philips]), _ctx(tuple(SITE_DEFAULT)), tmp_path / "out", tmp_path / "q",
                        on_result=results.append)
    assert summary.done == 1
    out = pydicom.dcmread(tmp_path / "out" / results[0].output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = pydicom.dcmread(philips)
    assert out.PixelData == source.PixelData
    assert out.NumberOfFrames == 176 and len(out.PerFrameFunctionalGroupsSequence) == 176


def test_broken_functional_groups_go_to_the_general_path_or_quarantine(philips, tmp_path):
    """A per-frame item whose element header is not a VR, and a file cut inside the per-frame groups: the bulk
    path steps aside; the first gives the general path's output, the second is quarantined as truncated."""
    data = philips.read_bytes()
    start = data.index(b"\x00\x52\x30\x92")  # (5200,9230) header
    item = data.index(b"\x20\x00\x56\x90SH", start)  # Stack ID inside the first frame's Frame Content
    odd = bytearray(data)
    odd[item + 4:item + 6] = b"XX"  # not a VR: pydicom reads it as an unknown one, rawseq refuses it
    broken = tmp_path / "odd.dcm"
    broken.write_bytes(bytes(odd))
    with pytest.raises(rawseq.MalformedSequence):
        rawseq.element_end(bytes(odd), item, False)
    outcomes = []
    for path_taken in (_general, _bulk):  # both de-identify it the same way, or both refuse it the same way
        try:
            outcomes.append(path_taken(broken, tuple(SITE_DEFAULT))[0])
        except DeidError as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == outcomes[1]  # bytes (pydicom cannot convert an unknown VR), or the same reason

    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:start + 100_000])
    results = []
    run_batch(enumerate_jobs([cut]), _ctx(()), tmp_path / "out", tmp_path / "q", on_result=results.append)
    assert results[0].status == "quarantined" and results[0].reason.startswith(("truncated", "unreadable")), \
        results[0].reason


def test_header_walk_never_crashes_on_mangled_sequences(philips):
    """Random byte flips and cuts in real per-frame groups: the walk either gives spans that stay inside the
    value, in order, or refuses with MalformedSequence (which sends the file to pydicom); nothing else."""
    import random

    data = philips.read_bytes()
    start = data.index(b"\x00\x52\x30\x92") + 12
    value = data[start:start + 40_000]  # the first frames' items
    rng = random.Random(11)
    outcomes = {"walked": 0, "refused": 0}
    for _ in range(400):
        mangled = bytearray(value)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        mangled = bytes(mangled[:rng.randint(len(mangled) // 2, len(mangled))])
        try:
            items = rawseq.item_elements(mangled, False)
        except rawseq.MalformedSequence:
            outcomes["refused"] += 1
            continue
        outcomes["walked"] += 1
        last = 0
        for spans in items:
            for tag, a, begin, length, end, _ in spans:
                assert last <= a < begin <= end <= len(mangled)
                last = end
    assert outcomes["walked"] and outcomes["refused"]


def test_reused_item_walks_agree_with_walking_every_item(philips):
    """An item that stores a walked item's header bytes is not walked again (``rawseq._Walks``): on the real
    per-frame groups most items are reused and the elements are exactly those of walking each item; on copies
    with header and value bytes flipped (a length, a tag, a VR, a value) the two walks still agree or both refuse."""
    import random

    data = philips.read_bytes()
    start = data.index(b"\x00\x52\x30\x92") + 12
    fresh = rawseq.sequence_items(data[start:], False, closed=True, reuse=False)
    walks = rawseq._Walks(data[start:], False)  # noqa: SLF001 - counted here: most frames must be reused
    reused = 0
    for spans in fresh[0]:
        pos = spans[0][1] - 8  # the item header precedes its first element
        known = walks.match(pos)
        if known is None:
            walks.learn(pos, spans[-1][4] + 8, spans)
        else:
            reused += 1
            assert known[0] == spans
    assert reused > 150 and rawseq.sequence_items(data[start:], False, closed=True) == fresh
    value = data[start:start + fresh[0][40][-1][4] + 8]  # the first 41 frames' items, up to an item's end
    rng = random.Random(5)
    walked = 0
    for _ in range(300):
        mangled = bytearray(value)
        for _ in range(rng.randint(1, 3)):
            mangled[rng.randrange(8_000, len(mangled))] = rng.randrange(256)  # the first item stays as stored
        outcomes = []
        for reuse in (False, True):
            try:
                outcomes.append(rawseq.sequence_items(bytes(mangled), False, reuse=reuse))
            except rawseq.MalformedSequence:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1]
        walked += outcomes[0] != "refused"
    assert 30 < walked < 300  # flips in values keep the walk, flips in headers mostly break it


def test_raw_sequence_is_parsed_only_when_looked_into(philips):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(Job(str(philips)))
        reference = pydicom.dcmread(philips).PerFrameFunctionalGroupsSequence
    raw = ds.get_item(PER_FRAME, keep_deferred=True)
    assert isinstance(raw, pydicom.dataelem.RawDataElement)  # kept raw by the reader, not parsed
    seq = rawseq.RawSequence(raw.value, False, ["iso8859"], True)
    assert not seq.parsed
    assert len(seq) == 176 and seq.parsed
    assert seq[5].PlanePositionSequence[0].ImagePositionPatient == \
        reference[5].PlanePositionSequence[0].ImagePositionPatient


def test_quick_macro_walk_agrees_with_the_header_walk_or_steps_aside(philips):
    """``flat_item`` (the walk of one macro item) gives the elements ``item_elements`` gives on every real macro of
    the first frames, and on mangled copies either the same bounds-respecting elements or None, never a crash."""
    import random

    data = philips.read_bytes()
    start = data.index(b"\x00\x52\x30\x92") + 12
    frames = rawseq.sequence_items(data[start:], False, closed=True)[0][:20]
    macros = [data[start + s[2]:start + s[4] - 8] for spans in frames for s in spans
              if data[start + s[1] + 4:start + s[1] + 6] == b"SQ" and not (s[0] >> 16) & 1]
    assert len(macros) > 20
    for value in macros:
        quick = rawseq.flat_item(value)
        assert quick is not None
        assert [(t, a, b, e) for t, _, a, b, e in quick] == [(t, a, b, e) for t, a, b, _, e, _ in
                                                             rawseq.item_elements(value, False)[0]]
    rng = random.Random(7)
    for _ in range(2000):
        mangled = bytearray(rng.choice(macros))
        for _ in range(rng.randint(1, 3)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        mangled = bytes(mangled[:rng.randint(len(mangled) - 8, len(mangled))])
        quick = rawseq.flat_item(mangled)
        if quick is not None:
            last = 8
            for _, _, a, b, e in quick:
                assert last <= a < b <= e <= len(mangled)
                last = e
