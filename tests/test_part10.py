"""One Part 10 writer (``incloud_kernel.dicom.part10``) for synth and deid: same bytes as before, as pydicom reads.

The SHA-256 values pin the bytes ``synth`` wrote before the writer was shared (checked then on 3,640 files of two
generated cohorts, single-frame and enhanced, plain and compressed): a change to the shared writer that moves
one byte of synth output fails here.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from incloud_kernel.deid import DeidContext
from incloud_kernel.deid.runner import enumerate_jobs, run_batch
from incloud_kernel.deid.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from incloud_kernel.dicom import part10
from incloud_kernel.synth import writer
from incloud_kernel.synth.headers import ENHANCED_MR_STORAGE, MR_IMAGE_STORAGE

UID = "1.2.826.0.1.3680043.8.498.4242"
#: SHA-256 of IM00001..IM00003 of the series and of the enhanced file below, as the pre-shared writer wrote them.
PINNED = {
    "1.2.840.10008.1.2.1": [
        "c005bdc887a1647bea971950277103fb603da9785bd86dbc6bc98d41bfcf5afb",
        "77f91817419e7560f607e3dd2ab8aaa5a1e55a7465dc77a950e2a5ba6f58c9ca",
        "9667ad0f851a9fc892d2aca912468b8743a2d02cf113d1cd9f15fbac6db7b00c",
        "b0e263741f21e27e642dd06fd066e8aba1170f35a03e8ac4ab39cadf47b1fcdb",
    ],
    "1.2.840.10008.1.2.4.90": [
        "50450111f3a7d51d7ac906f316c9a47b8963b04fcb2d83ad4354a385c5d96d43",
        "cc164a4eead38c477185a62b203e18ad01ffe7ddc975884ceb3a86cb5e8c9cc2",
        "1834880923a4069d4e04079261ce8bf55c42902cdece1bbaa63d6fc272966953",
        "6654502413babebda82690b21250309f7b0eef5ef8cc6c07ce2448a015f49d2f",
    ],
    "1.2.840.10008.1.2.4.80": [
        "7eb2c4062eeeabaf561c87bc652ff3fb610b6f662445185d6aee8dd3d1b57275",
        "dca4a5f7e044905202a65ecfcba6a9907b31363e66c6014ff9c84c57ba77008d",
        "e9e0dcdbf3e3ed8070cb831446d25e3007c1517fa16d69588a5d64b9d684ce19",
        "e9d7b6219192e886d4c74d8cbd427fb77016fb3acdc5a3f8edd817510850c847",
    ],
}


def _base() -> Dataset:
    base = Dataset()
    base.PatientName = "Synthetic^Subject"
    base.PatientID = "SYNTH-001"
    base.StudyInstanceUID = UID + ".1"
    base.SeriesInstanceUID = UID + ".2"
    base.Modality = "MR"
    base.SeriesDescription = "T1w"
    return base


def _frames() -> np.ndarray:
    return (np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32) * 37) % 4000


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("syntax", [writer.EXPLICIT_LE, writer.JPEG2000_LOSSLESS, writer.JPEGLS_LOSSLESS])
def test_synth_series_bytes_are_unchanged_by_the_shared_writer(syntax, tmp_path):
    frames = _frames()
    instances = [writer.Instance(f, {"ImagePositionPatient": [0.0, 0.0, float(k)], "SliceLocation": f"{k:.1f}"})
                 for k, f in enumerate(frames)]
    paths = writer.write_series(tmp_path / "s", _base(), instances, sop_class_uid=MR_IMAGE_STORAGE,
                                instance_uids=[f"{UID}.3.{k}" for k in range(3)], transfer_syntax=syntax,
                                reference=(MR_IMAGE_STORAGE, UID + ".9"))
    per_frame = []
    for k in range(3):
        item = Dataset()
        item.InStackPositionNumber = k + 1
        per_frame.append(item)
    shared = Dataset()
    shared.SliceThickness = "1"
    enhanced = writer.write_multiframe(tmp_path / "e" / "IM00001.dcm", _base(), frames,
                                       sop_class_uid=ENHANCED_MR_STORAGE, instance_uid=UID + ".5",
                                       shared_groups=shared, per_frame_groups=per_frame, transfer_syntax=syntax)
    digests = [_sha(p) for p in paths] + [_sha(enhanced)]
    assert digests == PINNED[syntax]
    for path in [*paths, enhanced]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert path.read_bytes()[:len(_meta(ds))] == _meta(ds)


def _meta(ds: pydicom.FileDataset) -> bytes:
    return part10.file_meta(ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID,
                            ds.file_meta.TransferSyntaxUID, ds.file_meta.ImplementationClassUID,
                            ds.file_meta.ImplementationVersionName)


def test_file_meta_is_what_pydicom_writes_for_the_same_values():
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UID + ".77"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = pydicom.FileDataset("", Dataset(), file_meta=meta, preamble=b"\x00" * 128)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    ours = part10.file_meta(MR_IMAGE_STORAGE, UID + ".77", ExplicitVRLittleEndian, IMPLEMENTATION_CLASS_UID,
                            IMPLEMENTATION_VERSION_NAME)
    assert buf.getvalue() == ours


def test_deid_output_starts_with_the_shared_file_meta(tmp_path):
    results = []
    run_batch(enumerate_jobs([get_testdata_file("MR_small.dcm")]), DeidContext(key=b"k" * 32), tmp_path / "o",
              tmp_path / "q", on_result=results.append)
    out = tmp_path / "o" / results[0].output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(out)
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert out.read_bytes().startswith(_meta(ds))


def test_write_file_joins_buffers_and_copies_file_ranges(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    pixels = np.arange(1000, dtype=np.uint16)
    target = tmp_path / "out.bin"
    part10.write_file(target, [b"head", memoryview(pixels).cast("B"), part10.FileRange(str(source), 100, 500_000),
                               bytearray(b"tail")])
    assert target.read_bytes() == b"head" + pixels.tobytes() + source.read_bytes()[100:500_100] + b"tail"
    with pytest.raises(OSError):
        part10.write_file(tmp_path / "short.bin", [part10.FileRange(str(source), 1_000_000, 100_000)])
