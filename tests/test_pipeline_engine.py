"""The pipeline engine on a real Dask LocalCluster over archived series: provenance, computing once, versions
beside each other, a failing subject that does not stop the batch, the QC filter, cancel, a killed worker."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from archive_data import ADMIN, populate
from incloud_kernel.archive import records
from incloud_kernel.archive.models import DataFile, Derivative, PipelineTask, Provenance, Series
from incloud_kernel.archive.storage import sha256_file
from incloud_kernel.db import transaction
from incloud_kernel.pipeline import executor, runs

pytestmark = pytest.mark.timeout(300)
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def engine_site(site, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """A populated site whose config knows the toy pipelines; workers find tests/ on PYTHONPATH."""
    from incloud_kernel import config
    from pipeline_toy import REFS

    monkeypatch.setenv("INCLOUD_COMPUTE_PIPELINES", json.dumps(REFS))
    monkeypatch.setenv("INCLOUD_COMPUTE_RETRY_BACKOFF", "0.2")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("INCLOUD_COMPUTE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("INCLOUD_TEST_PAUSE_DIR", str(tmp_path / "pause"))
    (tmp_path / "pause").mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    site.config = config.get_config(reload=True)
    populate(site)
    return site


def run(site, name: str, project: str = "STUDY1", **kwargs):  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        run_id = runs.create_run(db, ADMIN, name, project).id
    return run_id, executor.drive(site, run_id, **kwargs)


def tasks_of(site, run_id: int) -> list[PipelineTask]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return list(db.scalars(select(PipelineTask).where(PipelineTask.run_id == run_id).order_by(PipelineTask.id)))


def derivative_counts(site) -> dict[tuple[str, str, int], int]:  # type: ignore[no-untyped-def]
    """(pipeline version, stage, series) -> how many derivatives record it."""
    with transaction(site.engine) as db:
        rows = db.execute(select(Provenance.pipeline_version, Provenance.stage, Derivative.inputs)
                          .join(Derivative, Derivative.id == Provenance.derivative_id)).all()
    counts: dict[tuple[str, str, int], int] = {}
    for version, stage, inputs in rows:
        counts[(version, stage, inputs[0])] = counts.get((version, stage, inputs[0]), 0) + 1
    return counts


def t1w_ids(site, project: str = "STUDY1") -> list[int]:  # type: ignore[no-untyped-def]
    from incloud_kernel.archive.models import Project

    with transaction(site.engine) as db:
        pid = db.scalar(select(Project.id).where(Project.code == project))
        return list(db.scalars(select(Series.id).where(Series.project_id == pid, Series.suffix == "T1w")
                               .order_by(Series.id)))


def assert_exactly_once(site, stages=("brainvol",), version="1") -> None:  # type: ignore[no-untyped-def]
    """Every T1w of STUDY1 has one derivative per stage; every derivative file on disk is recorded, once."""
    counts = derivative_counts(site)
    assert {k: v for k, v in counts.items() if k[0] == version} == {
        (version, stage, sid): 1 for sid in t1w_ids(site) for stage in stages}
    root = site.archive_root
    on_disk = {str(p.relative_to(root)) for p in (root / "derivatives").rglob("*") if p.is_file()
               and p.name != "dataset_description.json"}
    with transaction(site.engine) as db:
        recorded = set(db.scalars(select(DataFile.relpath).where(DataFile.kind == "derivative")))
    assert on_disk == recorded


def test_a_run_computes_each_input_once_with_its_provenance(engine_site) -> None:  # type: ignore[no-untyped-def]
    site = engine_site
    run_id, state = run(site, "toy")
    assert state == "done"
    tasks = tasks_of(site, run_id)
    # brainvol and summary for each of STUDY1's three T1w series; the BOLD series and OTHER1 are not taken
    assert sorted((t.stage, t.series_id) for t in tasks) == sorted(
        (stage, sid) for sid in t1w_ids(site) for stage in ("brainvol", "summary"))
    assert all(t.state == "done" and not t.reused and t.attempts == 1 for t in tasks)
    assert_exactly_once(site, ("brainvol", "summary"))
    with transaction(site.engine) as db:
        prov = db.scalars(select(Provenance).where(Provenance.stage == "brainvol")).first()
        raw = {f.relpath: f.sha256 for f in db.scalars(select(DataFile).where(DataFile.kind == "raw"))}
        files = list(db.scalars(select(DataFile).where(DataFile.derivative_id == prov.derivative_id)))
        summary = db.scalars(select(Provenance).where(Provenance.stage == "summary")).first()
    assert (prov.pipeline, prov.pipeline_version, prov.stage_version) == ("toy", "1", "1")
    assert prov.parameters == {"fail_on": "", "pause": 0.0, "threshold": 1.0}
    assert prov.inputs and all(raw[i["relpath"]] == i["sha256"] for i in prov.inputs)
    assert prov.libraries["nibabel"] not in ("", "absent") and prov.libraries["python"]
    assert prov.host and prov.runtime_seconds >= 0
    # the summary stage's provenance lists the brainvol output it read, with its checksum
    assert any(i["relpath"].startswith("derivatives/toy-1/") for i in summary.inputs)
    (out,) = files
    assert out.relpath.startswith("derivatives/toy-1/sub-") and out.relpath.endswith("_desc-brainvol_T1w.json")
    assert sha256_file(site.archive_root / out.relpath) == out.sha256
    assert json.loads((site.archive_root / out.relpath).read_text())["brain_volume_ml"] > 0
    from incloud_kernel.archive import integrity

    assert integrity.verify(site, ADMIN).consistent  # every derivative file recorded, hashed, nothing extra
    description = json.loads((site.archive_root / "derivatives/toy-1/dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "incloud-toy" and description["GeneratedBy"][0]["Version"] == "1"


def test_a_rerun_computes_nothing_and_a_new_version_computes_beside_the_old(engine_site) -> None:  # type: ignore
    site = engine_site
    run(site, "toy")
    before = {p: (site.archive_root / p).read_bytes() for p in _derivative_files(site)}
    run_id, state = run(site, "toy")
    assert state == "done"
    assert all(t.state == "done" and t.reused for t in tasks_of(site, run_id))
    assert_exactly_once(site, ("brainvol", "summary"))
    run_id, state = run(site, "toy2")
    assert state == "done" and not any(t.reused for t in tasks_of(site, run_id))
    assert_exactly_once(site, ("brainvol", "summary"), version="2")
    assert_exactly_once(site, ("brainvol", "summary"), version="1")
    after = {p: (site.archive_root / p).read_bytes() for p in _derivative_files(site)}
    assert {p: b for p, b in after.items() if p.startswith("derivatives/toy-1/")} == before
    assert any(p.startswith("derivatives/toy-2/") for p in after)


def _derivative_files(site) -> list[str]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return sorted(db.scalars(select(DataFile.relpath).where(DataFile.kind == "derivative")))


def test_a_failing_subject_does_not_stop_the_batch_and_its_error_is_kept(engine_site) -> None:  # type: ignore
    site = engine_site
    run_id, state = run(site, "failing")
    assert state == "failed"  # the run as a whole; every other input is done
    with transaction(site.engine) as db:
        report = runs.progress(db, ADMIN, run_id)
    by_subject = report["subjects"]
    assert by_subject["P02"]["done"] == 2 and by_subject["P02"]["failed"] == 0
    assert by_subject["P01"]["failed"] == 4 and by_subject["P01"]["done"] == 0
    failed = [t for t in report["tasks"] if t["state"] == "failed"]
    brainvol = [t for t in failed if t["stage"] == "brainvol"]
    assert len(brainvol) == 2
    for t in brainvol:  # retried with back-off, the last error kept per input
        assert t["attempts"] == 2 and t["error"] == "RuntimeError: planned failure of this toy stage"
        assert t["outputs"] == []
    assert all(t["error"] == "an upstream stage of this input failed" for t in failed if t["stage"] == "summary")
    done = [t for t in report["tasks"] if t["state"] == "done"]
    assert all(t["outputs"] and t["error"] is None for t in done)  # outputs side by side with the failures
    assert report["stages"]["brainvol"] == {"waiting": 0, "running": 0, "done": 1, "failed": 2, "cancelled": 0}


def test_processing_takes_what_the_qc_gate_accepts_and_follows_a_reviewers_decision(engine_site) -> None:  # type: ignore
    """The gate decides what a processing run takes (pass and caveat by default, or the owners' choice), and a
    reviewer's new decision changes the next run; the QC pipeline itself takes every series."""
    from incloud_kernel.qc import gate

    site = engine_site
    ids = t1w_ids(site)
    with transaction(site.engine) as db:
        empty = runs.create_run(db, ADMIN, "toyqc", "STUDY1")
        assert empty.tasks == []  # everything is pending QC
    assert executor.drive(site, empty.id) == "done"  # nothing to compute: no cluster is started
    with transaction(site.engine) as db:
        gate.review(db, ADMIN, ids[0], "pass")
        gate.review(db, ADMIN, ids[1], "fail", comment="motion")
        gate.review(db, ADMIN, ids[2], "caveat", reason="mild ringing")
    with transaction(site.engine) as db:
        run_row = runs.create_run(db, ADMIN, "toyqc", "STUDY1")
        assert sorted(t.series_id for t in run_row.tasks) == [ids[0], ids[2]]
        qc = runs.create_run(db, ADMIN, "qc", "STUDY1")  # the QC pipeline takes every series, BOLD too
        assert len({t.series_id for t in qc.tasks}) == 4
    with transaction(site.engine) as db:  # a second look passes the failed one; the owners take clean passes only
        gate.review(db, ADMIN, ids[1], "pass", comment="motion was in the localiser")
        gate.set_policy(db, ADMIN, "STUDY1", ["pass"])
    with transaction(site.engine) as db:
        assert sorted(t.series_id for t in runs.create_run(db, ADMIN, "toyqc", "STUDY1").tasks) == [ids[0], ids[1]]


def _wait_for_marker(folder: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        markers = sorted(folder.iterdir())
        if markers:
            return markers[0]
        time.sleep(0.05)
    raise TimeoutError("no stage started")


def test_cancel_stops_the_run_and_nothing_is_left_waiting(engine_site, tmp_path) -> None:  # type: ignore
    site = engine_site
    monkey_workers = os.environ.get("INCLOUD_COMPUTE_WORKERS")
    os.environ["INCLOUD_COMPUTE_WORKERS"] = "1"  # one task at a time: the others are waiting when we cancel
    try:
        from incloud_kernel import config

        site.config = config.get_config(reload=True)
        with transaction(site.engine) as db:
            run_id = runs.create_run(db, ADMIN, "slow", "STUDY1").id
        result: dict[str, str] = {}
        driver = threading.Thread(target=lambda: result.update(state=executor.drive(site, run_id)))
        driver.start()
        _wait_for_marker(tmp_path / "pause")
        with transaction(site.engine) as db:
            assert runs.cancel(db, ADMIN, run_id).state == "cancelling"
        driver.join(120)
    finally:
        if monkey_workers is None:
            os.environ.pop("INCLOUD_COMPUTE_WORKERS", None)
        else:
            os.environ["INCLOUD_COMPUTE_WORKERS"] = monkey_workers
    assert result["state"] == "cancelled"
    states = [t.state for t in tasks_of(site, run_id)]
    assert "waiting" not in states and "running" not in states
    assert states.count("cancelled") >= 2


def test_a_killed_worker_mid_task_and_the_run_still_makes_each_derivative_once(engine_site, tmp_path) -> None:  # type: ignore
    site = engine_site
    with transaction(site.engine) as db:
        run_id = runs.create_run(db, ADMIN, "slow", "STUDY1").id
    result: dict[str, str] = {}
    driver = threading.Thread(target=lambda: result.update(state=executor.drive(site, run_id)))
    driver.start()
    marker = _wait_for_marker(tmp_path / "pause")
    worker_pid = int(marker.name.split(".")[1])
    assert worker_pid != os.getpid()
    os.kill(worker_pid, signal.SIGKILL)  # the Dask worker process computing this task, mid-task
    driver.join(180)
    assert result["state"] == "done"
    tasks = tasks_of(site, run_id)
    assert all(t.state == "done" for t in tasks)
    killed = next(t for t in tasks if t.series_id == int(marker.name.split(".")[0]))
    assert killed.attempts >= 2  # it ran again after the kill
    assert_exactly_once(site)
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(Provenance)) == len(t1w_ids(site))


def test_one_driver_per_run(engine_site) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.errors import ValidationError

    site = engine_site
    with transaction(site.engine) as db:
        run_id = runs.create_run(db, ADMIN, "toy", "STUDY1").id
    with transaction(site.engine) as db:
        runs.begin(db, run_id, "host-a:1", heartbeat_interval=60)
    with transaction(site.engine) as db, pytest.raises(ValidationError, match="live driver"):
        runs.begin(db, run_id, "host-b:2", heartbeat_interval=60)
    with transaction(site.engine) as db:  # silent for three heartbeats: interrupted, so it may be resumed
        assert runs.begin(db, run_id, "host-b:2", heartbeat_interval=0.0001).driver == "host-b:2"


def test_the_qc_pipeline_runs_incloud_kernel_qc_on_every_series(engine_site) -> None:  # type: ignore
    """The registered "qc" pipeline end to end (needs ``incloud_kernel.qc``, the QC-indices part of issue 14):
    every T1w and BOLD series ends with its indices as finite numbers, or with the QC code's own one-line
    refusal (these are tiny noise images) -- never an error of the engine's call."""
    import math

    from incloud_kernel.archive.models import QCIndex
    from incloud_kernel.qc import gate

    site = engine_site
    run_id, state = run(site, "qc")
    assert state in ("done", "failed")
    with transaction(site.engine) as db:
        report = runs.progress(db, ADMIN, run_id)
    assert report["total"] == 4 and report["counts"]["waiting"] == report["counts"]["running"] == 0
    assert report["counts"]["done"] >= 2, report["counts"]  # the gate checks below must have something to check
    for task in report["tasks"]:
        if task["state"] == "failed":
            assert task["error"].split(":")[0] in ("QCInputError", "ValidationError"), task["error"]
            continue
        (indices,) = [p for p in task["outputs"] if p.endswith("_desc-qc_T1w.json") or p.endswith("_desc-qc_bold.json")]
        values = json.loads((site.archive_root / indices).read_text())
        assert values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values())
        if indices.endswith("_bold.json"):  # the per-volume FD/DVARS table is kept beside the indices
            assert any(p.endswith(".tsv") for p in task["outputs"]), task["outputs"]
        with transaction(site.engine) as db:  # the indices reached the QC gate, whose thresholds decided
            stored = {i.name: i.value for i in db.scalars(select(QCIndex).where(
                QCIndex.series_id == task["series"], QCIndex.pipeline_version == "qc-1"))}
            series = db.get(Series, task["series"])
            assert stored and stored == pytest.approx(values)
            expected, _ = gate.automatic(series.suffix, stored, gate.rules())
            assert series.qc_status == expected
