"""A synthetic T1w+BOLD+DWI study with its burned-in secondary capture (``incloud_kernel.synth.make_study``)
through ``incloud serve dicom`` and the worker with refacing on: archived as valid BIDS, de-identified (the leak
checker finds nothing), T1w refaced as DICOM before conversion (no faced copy in the cache), the secondary capture quarantined
alone.

Run on SQLite only (the slowest test of the suite: refacing and three conversions); the database layer of the
chain is covered on SQLite and PostgreSQL by test_records_transactions, test_ingest_chain and test_ingest_orthanc.
The study is as small as the criterion allows: 2 mm T1w, 4 BOLD volumes, 6 DWI directions.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from incloud_kernel.quarantine import Quarantine
from test_ingest_chain import check_bids
from test_ingest_orthanc import archived, edge, orthanc_instances, start_worker, stop, wait_for  # noqa: F401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_synthetic_study_arrives_refaced_deidentified_and_valid(edge, site, tmp_path: Path) -> None:  # noqa: F811
    from incloud_kernel.synth import make_study

    make_study(tmp_path / "src", seed=7, small=True, participant_id="synth007", secondary_capture=True,
               bold_volumes=4, dwi_directions=6)
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
    # The burned-in secondary capture was held back by de-identification: quarantined alone, with its reason.
    (held,) = Quarantine(site.config.quarantine).entries()
    assert held.step == "deidentify" and held.reason.startswith("burned-in-annotation") and len(held.files) == 1
    from incloud_kernel.deid.verify import verify

    cache = site.config.spool / "ingest" / "deid-cache"
    report = verify([cache], [tmp_path / "src"])
    assert report.leaks == [] and report.outputs > 0
    # Refaced as DICOM before conversion: the cache keeps only refaced instances, and the archived T1w is
    # their conversion, which differs from a plain conversion of the received (faced) instances.
    from incloud_kernel.ingest.convert import convert_series

    t1_uid = next(r[1] for r in archived(site) if r[0] == "T1w")
    assert json.loads((cache / t1_uid / "archived.json").read_text())["cache_kept"] is True
    cached = convert_series(cache / t1_uid, tmp_path / "cached")
    import pydicom

    t1_src = next(p.parent for p in files
                  if "t1" in str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription).lower())
    plain = convert_series(t1_src, tmp_path / "plain")
    refaced = np.asarray(nib.load(str(next(site.archive_root.rglob("*_T1w.nii.gz")))).dataobj)
    before = np.asarray(nib.load(str(plain.nifti)).dataobj)
    assert before.shape == refaced.shape and not np.array_equal(before, refaced)
    assert np.array_equal(np.asarray(nib.load(str(cached.nifti)).dataobj), refaced)
