"""A synthetic T1w+BOLD+DWI study (``incloud_kernel.synth.make_study``) through ``incloud serve dicom`` and the
worker with refacing on: archived as valid BIDS, de-identified (leak checker finds nothing), T1w refaced."""
from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_ingest_chain import check_bids
from test_ingest_orthanc import archived, edge, orthanc_instances, start_worker, stop, wait_for  # noqa: F401


def test_synthetic_study_arrives_refaced_deidentified_and_valid(edge, site, tmp_path: Path) -> None:  # noqa: F811
    try:
        from incloud_kernel.synth import make_study

        make_study(tmp_path / "src", seed=7, small=True, participant_id="synth007", secondary_capture=False)
    except ImportError as exc:  # the generator is still being written (issue 3)
        pytest.skip(f"synthetic cohort generator incomplete: {exc.name}")
    files = sorted(p for p in (tmp_path / "src").rglob("*.dcm"))
    edge.env["INCLOUD_INGEST_REFACE"] = "true"
    assert edge.store(*files, aet="SCANNER1").returncode == 0
    worker = start_worker(edge)
    try:
        wait_for(lambda: orthanc_instances(edge) == 0 and len(archived(site)) >= 3, 300)
    finally:
        stop(worker)
    suffixes = {r[0] for r in archived(site)}
    assert {"T1w", "bold", "dwi"} <= suffixes
    check_bids(site.archive_root)
    from incloud_kernel.deid.verify import verify

    report = verify([site.config.spool / "ingest" / "deid-cache"], [tmp_path / "src"])
    assert report.leaks == [] and report.outputs > 0
    # Refaced: the archived T1w differs from a plain conversion of the same de-identified instances.
    from incloud_kernel.ingest.convert import convert_series

    t1_uid = next(r[1] for r in archived(site) if r[0] == "T1w")
    plain = convert_series(site.config.spool / "ingest" / "deid-cache" / t1_uid, tmp_path / "plain")
    refaced = nib.load(str(next(site.archive_root.rglob("*_T1w.nii.gz"))))
    before, after = np.asarray(nib.load(str(plain.nifti)).dataobj), np.asarray(refaced.dataobj)
    assert before.shape == after.shape and not np.array_equal(before, after)
