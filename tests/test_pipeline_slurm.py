"""The pipeline engine on the real Slurm of the test command (munge, slurmctld, slurmd): dask-jobqueue's
SLURMCluster with two worker jobs computes the run, and a worker's Slurm job cancelled mid-task (scancel) does
not cost a derivative or make one twice."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import missing, require_tool
from incloud_kernel.db import transaction
from incloud_kernel.pipeline import executor, runs
from archive_data import ADMIN
from test_pipeline_engine import _wait_for_marker, assert_exactly_once, engine_site, run, tasks_of  # noqa: F401

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def slurm_conf() -> Iterator[str]:
    """A one-host Slurm started with scripts/lib/slurm.sh (the same code scripts/start.sh uses)."""
    from services.hubstack import slurm

    if os.geteuid() != 0:
        missing("the Slurm pipeline test needs root (munge, slurmd)")
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scancel", "squeue"):
        require_tool(tool)
    # Slurm daemons must traverse this folder: not under pytest's private 0700 tmp.
    work = Path(tempfile.mkdtemp(prefix="incloud-pipeline-slurm-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    os.chmod(work, 0o755)
    try:
        slurm("start", work / "slurm")
        yield str(work / "slurm" / "slurm.conf")
    finally:
        try:
            slurm("stop", work / "slurm")
        finally:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def slurm_site(engine_site, slurm_conf, monkeypatch):  # type: ignore[no-untyped-def]
    from incloud_kernel import config

    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("INCLOUD_COMPUTE_BACKEND", "slurm")
    monkeypatch.setenv("INCLOUD_COMPUTE_SCHEDULER_HOST", "127.0.0.1")
    monkeypatch.setenv("INCLOUD_COMPUTE_SLURM_MEMORY", "500MB")
    engine_site.config = config.get_config(reload=True)
    import dask_jobqueue  # noqa: F401 - installs a SIGINT handler when imported: only the main thread may
    return engine_site


def _jobs(conf: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=10,
                         env={**os.environ, "SLURM_CONF": conf})
    return out.stdout.split("\n")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_run_on_slurm_workers(slurm_site, slurm_conf) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[str]] = []

    def watch(counts: dict[str, int]) -> None:
        if counts["running"]:
            seen.append([j for j in _jobs(slurm_conf) if "incloud-run-" in j])

    run_id, state = run(slurm_site, "toy", on_progress=watch)
    assert state == "done"
    assert all(t.state == "done" for t in tasks_of(slurm_site, run_id))
    assert any(len(jobs) == 2 and all("RUNNING" in j for j in jobs) for jobs in seen), seen  # two worker jobs
    assert {t.host for t in tasks_of(slurm_site, run_id)} and all(t.host for t in tasks_of(slurm_site, run_id))
    assert_exactly_once(slurm_site, ("brainvol", "summary"))
    left = [j for j in _jobs(slurm_conf) if "incloud-run-" in j and j.split()[-1] in ("RUNNING", "PENDING")]
    assert not left  # the cluster cancelled its worker jobs (they may still be COMPLETING)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_cancelled_slurm_job_mid_task_and_each_derivative_once(slurm_site, slurm_conf, tmp_path) -> None:  # type: ignore
    with transaction(slurm_site.engine) as db:
        run_id = runs.create_run(db, ADMIN, "slow", "STUDY1").id
    result: dict[str, str] = {}
    driver = threading.Thread(target=lambda: result.update(state=executor.drive(slurm_site, run_id)))
    driver.start()
    marker = _wait_for_marker(tmp_path / "pause", timeout=300)  # worker jobs start slowly on a loaded host
    job_id = marker.name.split(".")[2]
    assert job_id.isdigit(), "the stage did not run inside a Slurm job"
    subprocess.run(["scancel", job_id], check=True, timeout=10, env={**os.environ, "SLURM_CONF": slurm_conf})
    driver.join(300)
    assert result["state"] == "done"
    tasks = tasks_of(slurm_site, run_id)
    assert all(t.state == "done" for t in tasks)
    killed = next(t for t in tasks if t.series_id == int(marker.name.split(".")[0]))
    assert killed.attempts >= 2
    assert_exactly_once(slurm_site)
