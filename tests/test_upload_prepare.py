"""Issue 19 item 2: the uploader's local preparation: a series the refacer refuses is blocked, explained and
never written to the outbox, while the study's other series are de-identified; and the before/after renders of
a sagittal head series show the head (``deface.qc.canonical`` kept the input's axis order after reorienting it,
which scrambled every render of a sagittal or coronal stack)."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from ingest_data import PATIENT, make_small_study
from upload_data import UPLOADER  # noqa: F401 - puts the uploader on sys.path

from incloud_uploader import prepare, scan  # noqa: E402

OPTIONS = ("retain_long_modified_dates", "retain_patient_characteristics", "retain_device_identity",
           "retain_safe_private", "clean_descriptors")


def test_a_series_the_refacer_refuses_is_blocked_and_kept_local(tmp_path: Path) -> None:
    make_small_study(tmp_path / "src")  # a 16x16x8 "t1_mprage": no head the refacer can register
    found = scan.scan(tmp_path / "src")
    assert [s.kind for s in found.series] == ["T1w", None, None]
    ticket = prepare.Ticket("t", "UPLTEST00001", -400, OPTIONS, "P")
    done = prepare.prepare_study(found.series, ticket, os.urandom(32), tmp_path / "outbox")
    t1, bold, dwi = done
    assert t1.blocked and t1.blocked.startswith("the face cannot be removed safely") and t1.files == []
    assert not (tmp_path / "outbox" / t1.key).exists() and not (tmp_path / "outbox" / ".work").exists()
    assert len(bold.files) == 32 and len(dwi.files) == 32 and not bold.blocked
    for f in bold.files[:3]:
        ds = pydicom.dcmread(f)
        assert ds.PatientName == "UPLTEST00001" and ds.PatientID == "UPLTEST00001"
        assert PATIENT["PatientID"] not in f.read_bytes().decode("latin-1")


def test_qc_renders_follow_a_sagittal_stack_into_ras_order() -> None:
    from incloud_kernel.deface.qc import canonical

    data = np.zeros((40, 50, 30), dtype=np.int16)  # (column i, row j, slice k) of a sagittal stack
    data[:, :, 5] = 1
    affine = np.array([[0, 0, 2, -30], [-1, 0, 0, 20], [0, -1, 0, 25], [0, 0, 0, 1]], dtype=float)
    out = canonical(nib.Nifti1Image(data, affine))
    assert out.shape == (30, 40, 50)  # slices along left-right first
    assert out[5].all() and not out[4].any()
