"""The registered "features" pipeline end to end through the engine on an archived session (issue 15).

One synthetic participant (``incloud_kernel.synth``: the same head rendered as a 3 mm T1w, a 4 mm BOLD run and
a 4 mm DWI series, stored through ``archive.records`` as ingest stores them) goes through
``incloud_kernel.pipeline`` on a real Dask LocalCluster: the T1 stage first, then BOLD and DWI reading its
outputs (the engine's ``session_after``). Checked: the BIDS derivatives, their provenance, the long-format rows,
the rows in the feature library with the scan's attributes, and that a later QC decision reaches the library.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from archive_data import ADMIN
from incloud_kernel.archive import records
from incloud_kernel.archive.models import DataFile, Derivative, PipelineTask, Provenance, Series
from incloud_kernel.archive.projects import create_project
from incloud_kernel.db import transaction
from incloud_kernel.features.rows import COLUMNS
from incloud_kernel.pipeline import executor, runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from qc_inputs import synth_bold, synth_dwi, synth_t1  # noqa: E402  (the same participant per seed)

pytestmark = [pytest.mark.timeout(1200), pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)]
SEED = 5


@pytest.fixture(scope="module")
def session_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The files of one session: {suffix: {extension: bytes}} (T1w 3 mm, BOLD 4 mm 40 volumes, DWI 4 mm
    12 directions), all of the same synthetic head."""
    out = tmp_path_factory.mktemp("e2e-inputs")
    t1 = synth_t1(out, seed=SEED, voxel_mm=3.0)
    bold, truth, _sigma = synth_bold(out, seed=SEED, volumes=40)
    dwi = synth_dwi(out, seed=SEED, directions=12)
    bold_sidecar = {"RepetitionTime": truth["tr_s"], "SliceTiming": truth["slice_timing_s"], "TaskName": "rest"}
    return {
        "T1w": {"nii.gz": t1.read_bytes(), "json": json.dumps({"RepetitionTime": 2.3}).encode()},
        "bold": {"nii.gz": bold.read_bytes(), "json": json.dumps(bold_sidecar).encode()},
        "dwi": {"nii.gz": dwi.read_bytes(), "bval": dwi.with_name(dwi.name.replace(".nii.gz", ".bval")).read_bytes(),
                "bvec": dwi.with_name(dwi.name.replace(".nii.gz", ".bvec")).read_bytes(),
                "json": json.dumps({"PhaseEncodingDirection": "j-"}).encode()},
    }


@pytest.fixture
def archived(site, monkeypatch, session_files):  # type: ignore[no-untyped-def]
    """The session archived in project FEAT (P01, ses-1), every series passed by a reviewer (the features
    pipeline takes only series the QC gate lets through). Returns {suffix: series id}."""
    from incloud_kernel import config
    from incloud_kernel.qc import gate

    monkeypatch.setenv("INCLOUD_COMPUTE_WORKERS", "2")
    monkeypatch.setenv("INCLOUD_COMPUTE_THREADS_PER_WORKER", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "1")
    site.config = config.get_config(reload=True)
    with records.transaction(site) as db:
        create_project(db, ADMIN, "FEAT", "Features end to end")
        person = records.add_participant(db, ADMIN, "FEAT", "P01", sex="F", birth_year=1980, diagnosis=["F20"])
        ses = records.add_session(db, ADMIN, person, "1", age_at_scan=31.5, scanner="Prisma")
        made = {"T1w": records.add_series(db, ADMIN, ses, "anat", "T1w"),
                "bold": records.add_series(db, ADMIN, ses, "func", "bold", {"task": "rest"},
                                           params={"RepetitionTime": 2.0}),
                "dwi": records.add_series(db, ADMIN, ses, "dwi", "dwi")}
        ids = {k: v.id for k, v in made.items()}
    for suffix, files in session_files.items():
        records.add_files(site, ADMIN, ids[suffix], files)
    with records.transaction(site) as db:
        for sid in ids.values():
            gate.review(db, ADMIN, sid, "pass")
    assert not site.config.library_root.exists(), "a QC decision must not create the library"
    return ids


def _tasks(site, run_id: int) -> dict[str, PipelineTask]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        tasks = {t.stage: t for t in db.scalars(select(PipelineTask).where(PipelineTask.run_id == run_id))}
        for t in tasks.values():
            db.expunge(t)
    return tasks


def _outputs(site, task: PipelineTask) -> tuple[Provenance, dict[str, Path]]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        prov = db.get(Provenance, task.provenance_id)
        files = {f.relpath: site.archive_root / f.relpath
                 for f in db.scalars(select(DataFile).where(DataFile.derivative_id == prov.derivative_id))}
        db.expunge(prov)
    return prov, files


def _one(files: dict[str, Path], tail: str) -> Path:
    found = [p for name, p in files.items() if name.endswith(tail)]
    assert len(found) == 1, f"{tail}: {sorted(files)}"
    return found[0]


def test_features_pipeline_runs_an_archived_session_into_derivatives_rows_and_library(site, archived):  # type: ignore
    from incloud_kernel.library import features
    from incloud_kernel.qc import gate

    with transaction(site.engine) as db:
        run_id = runs.create_run(db, ADMIN, "features", "FEAT").id
    state = executor.drive(site, run_id)
    tasks = _tasks(site, run_id)
    assert {k: (t.state, t.error) for k, t in tasks.items()} == {
        "t1features": (runs.DONE, None), "boldfeatures": (runs.DONE, None), "dwifeatures": (runs.DONE, None)}
    assert state == runs.DONE
    t1, bold, dwi = tasks["t1features"], tasks["boldfeatures"], tasks["dwifeatures"]
    assert bold.started_at >= t1.finished_at and dwi.started_at >= t1.finished_at  # session_after

    # -- BIDS derivatives, under derivatives/features-1/sub-P01/ses-1/<datatype>/
    t1_prov, t1_files = _outputs(site, t1)
    bold_prov, bold_files = _outputs(site, bold)
    dwi_prov, dwi_files = _outputs(site, dwi)
    base = "derivatives/features-1/sub-P01/ses-1/"
    for tail in ("anat/sub-P01_ses-1_desc-brain_mask.nii.gz", "anat/sub-P01_ses-1_label-GM_probseg.nii.gz",
                 "anat/sub-P01_ses-1_from-T1w_to-MNI152_mode-image_xfm.h5",
                 "anat/sub-P01_ses-1_desc-registration_T1w.png", "anat/sub-P01_ses-1_desc-features_T1w.tsv"):
        assert base + tail in t1_files
    for tail in ("func/sub-P01_ses-1_task-rest_space-MNI152NLin2009aSym_desc-alff_boldmap.nii.gz",
                 "func/sub-P01_ses-1_task-rest_desc-features_bold.tsv"):
        assert base + tail in bold_files, sorted(bold_files)
    for tail in ("dwi/sub-P01_ses-1_model-tensor_param-FA_dwimap.nii.gz",
                 "dwi/sub-P01_ses-1_space-MNI152NLin2009aSym_model-tensor_param-MD_dwimap.nii.gz",
                 "dwi/sub-P01_ses-1_desc-preproc_dwi.bvec", "dwi/sub-P01_ses-1_desc-features_dwi.tsv",
                 "dwi/sub-P01_ses-1_desc-tracts_dwi.png", "dwi/sub-P01_ses-1_desc-registration_dwi.png",
                 "dwi/sub-P01_ses-1_desc-motion_dwi.png"):
        assert base + tail in dwi_files, sorted(dwi_files)
    assert all(p.is_file() for files in (t1_files, bold_files, dwi_files) for p in files.values())
    description = json.loads((site.archive_root / "derivatives/features-1/dataset_description.json").read_text())
    assert description["Name"] and description.get("DatasetType") == "derivative"

    # -- provenance: the stage, its parameters and libraries, and BOLD/DWI read the T1 stage's outputs
    with transaction(site.engine) as db:
        from incloud_kernel.pipeline.pipeline import get

        pipe = get("features")
        for prov, stage in ((t1_prov, "t1features"), (bold_prov, "boldfeatures"), (dwi_prov, "dwifeatures")):
            assert (prov.pipeline, prov.pipeline_version, prov.stage) == ("features", "1", stage)
            assert prov.parameters == json.loads(json.dumps(pipe.stage(stage).parameters))
            assert prov.runtime_seconds > 0
        assert "dipy" in dwi_prov.libraries and "nilearn" in bold_prov.libraries
        xfm = next(name for name in t1_files if name.endswith("_xfm.h5"))
        for prov in (bold_prov, dwi_prov):
            assert xfm in [i["relpath"] for i in prov.inputs]  # the session's T1w transform is an input
        assert db.get(Derivative, dwi_prov.derivative_id) is not None

    # -- long-format rows: one table per series, through the T1w route
    tables = {k: pd.read_csv(_one(files, f"desc-features_{k}.tsv"), sep="\t", dtype={"session": str})
              for k, files in (("T1w", t1_files), ("bold", bold_files), ("dwi", dwi_files))}
    for suffix, table in tables.items():
        assert tuple(table.columns) == COLUMNS
        assert set(table.participant) == {"P01"} and set(table.session) == {"1"}
        assert set(table.series) == {archived[suffix]}
        assert set(table.pipeline) == {"features"}, "every stage went through the session's T1w"
        assert np.isfinite(table.value).all()
    assert {"gm_volume", "thickness", "icv"} <= set(tables["T1w"].feature)
    assert {"alff", "falff", "reho", "connectivity"} <= set(tables["bold"].feature)
    dwi_rows = tables["dwi"]
    assert set(dwi_rows.feature) == {"fa", "md"} and set(dwi_rows.atlas) == {"jhu-wm"}
    assert dwi_rows[dwi_rows.feature == "fa"].value.between(0, 1).all() and len(dwi_rows) >= 40

    # -- the same rows in the feature library, with the scan's attributes
    with transaction(site.engine) as db:
        count, frame = features(site, db, ADMIN, project="FEAT", feature="fa", atlas="jhu-wm", qc="pass", sex="F",
                                diagnosis="F20", age=(30, 35))
        assert set(frame.series) == {archived["dwi"]}
        assert set(frame.participant) == {"P01"} and set(frame.scanner) == {"Prisma"}
        published = frame.set_index("region").value.sort_index()
        expected = dwi_rows[dwi_rows.feature == "fa"].set_index("region").value.sort_index()
        pd.testing.assert_series_equal(published, expected, check_names=False, rtol=1e-9)
        _count, everything = features(site, db, ADMIN, project="FEAT", limit=None)
        assert set(everything.series) == set(archived.values())
        assert set(everything.pipeline) == {"features"}

    # -- a QC decision after publishing reaches the library's scan row
    with records.transaction(site) as db:
        gate.review(db, ADMIN, archived["dwi"], "fail", comment="signal dropout")
    with transaction(site.engine) as db:
        _c, passed = features(site, db, ADMIN, project="FEAT", qc="pass", limit=None)
        _c, failed = features(site, db, ADMIN, project="FEAT", qc="fail", limit=None)
    assert archived["dwi"] not in set(passed.series)
    assert set(failed.series) == {archived["dwi"]}
