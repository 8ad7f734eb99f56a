"""``incloud pipeline list|run|status|cancel|resume`` as an operator runs them, through the installed executable:
progress per stage and subject, errors per input, one-line refusals, cancel, and a driver (with its Dask
scheduler) killed mid-run that ``resume`` finishes with every derivative made once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from incloud_kernel.archive.models import PipelineRun, PipelineTask
from incloud_kernel.db import transaction
from test_pipeline_engine import _wait_for_marker, assert_exactly_once, engine_site  # noqa: F401

pytestmark = pytest.mark.timeout(300)
INCLOUD = os.path.join(os.path.dirname(sys.executable), "incloud")


def incloud(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], capture_output=True, text=True, timeout=timeout)


def _task_states(site, run_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return list(db.scalars(select(PipelineTask.state).where(PipelineTask.run_id == run_id)))


def _wait(check, timeout: float = 120, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_run_and_status_per_stage_and_subject(engine_site) -> None:  # type: ignore[no-untyped-def]
    listed = incloud("pipeline", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("qc\t1\tqc 1\tevery series") for line in listed.stdout.splitlines())
    assert any(line.startswith("toy\t1\tbrainvol 1, summary 1") for line in listed.stdout.splitlines())
    out = incloud("pipeline", "run", "failing", "STUDY1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    run_id = out.stdout.split()[1].lstrip("#")
    assert out.stdout.strip() == f"run #{run_id} failed: 2 done, 4 failed"
    status = incloud("pipeline", "status", run_id, "--tasks")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "  stage brainvol: 1 done, 2 failed" in lines and "  sub-P01: 4 failed" in lines
    assert "  sub-P02: 2 done" in lines
    failed = [line for line in lines if "\tsub-P01\t" in line and "brainvol" in line]
    assert len(failed) == 2 and all("RuntimeError: planned failure of this toy stage" in line for line in failed)
    done = [line for line in lines if "\tsub-P02\t" in line and "\tdone\t" in line]
    assert done and all("derivatives/failing-1/sub-P02/ses-1/anat/" in line for line in done)
    report = json.loads(incloud("pipeline", "status", run_id, "--json").stdout)
    assert report["counts"] == {"waiting": 0, "running": 0, "done": 2, "failed": 4, "cancelled": 0}
    listing = incloud("pipeline", "status")
    assert listing.stdout.startswith(f"#{run_id}\tSTUDY1\tfailing 1\tfailed")  # pipeline name of the object
    made = incloud("pipeline", "provenance", run_id)  # the two derivatives made, each with how
    assert made.returncode == 0, made.stderr
    records = json.loads(incloud("pipeline", "provenance", run_id, "--json").stdout)
    assert len(records) == 2 and {r["subject"] for r in records} == {"P02"}
    for r in records:
        assert f"series #{r['series']}\tsub-P02" in made.stdout
        assert all(f"  input {i['relpath']}  sha256 {i['sha256']}" in made.stdout for i in r["inputs"])
        assert all(f"  output {o}" in made.stdout for o in r["outputs"]) and r["outputs"]
    assert "  libraries: " in made.stdout and "nibabel " in made.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_requests_are_one_line_errors(engine_site) -> None:  # type: ignore[no-untyped-def]
    for args, code, text in ((("run", "nosuch", "STUDY1"), 4, "unknown pipeline 'nosuch'"),
                             (("run", "toy", "NOPE"), 4, "project NOPE not found"),
                             (("status", "999"), 4, "run #999 not found"),
                             (("provenance", "999"), 4, "run #999 not found"),
                             (("cancel", "999"), 4, "run #999 not found")):
        out = incloud("pipeline", *args)
        assert out.returncode == code and out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"]
        assert text in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cancel_a_detached_run(engine_site, tmp_path) -> None:  # type: ignore[no-untyped-def]
    os.environ["INCLOUD_COMPUTE_WORKERS"] = "1"
    try:
        out = incloud("pipeline", "run", "slow", "STUDY1", "--detach", "--json")
    finally:
        os.environ.pop("INCLOUD_COMPUTE_WORKERS")
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run"]
    _wait_for_marker(tmp_path / "pause", timeout=120)
    cancelled = incloud("pipeline", "cancel", str(run_id))
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"run #{run_id}: cancelling"
    _wait(lambda: json.loads(incloud("pipeline", "status", str(run_id), "--json").stdout)["state"] == "cancelled",
          what="the run to end cancelled")
    states = _task_states(engine_site, run_id)
    assert "waiting" not in states and "running" not in states and "cancelled" in states


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_killed_driver_and_scheduler_resume_without_duplicates(engine_site, tmp_path) -> None:  # type: ignore
    site = engine_site
    driver = subprocess.Popen([INCLOUD, "pipeline", "run", "slow", "STUDY1", "--quiet"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        run_id = _wait(lambda: _run_id(site), what="the run row")
        _wait(lambda: "done" in _task_states(site, run_id), what="a first finished input")
        _wait_for_marker(tmp_path / "pause")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, its Dask scheduler and its workers: one session
        driver.wait(30)
    states = _task_states(site, run_id)
    assert "done" in states and set(states) - {"done"}, states  # killed mid-run
    status = _wait(lambda: (s := json.loads(incloud("pipeline", "status", str(run_id), "--json").stdout))
                   ["interrupted"] and s, timeout=30, what="the run to show as interrupted")
    assert status["state"] == "running"
    resumed = incloud("pipeline", "resume", str(run_id), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == f"run #{run_id} done: 3 done"
    assert_exactly_once(site)


def _run_id(site) -> int | None:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return db.scalar(select(PipelineRun.id).order_by(PipelineRun.id.desc()))
