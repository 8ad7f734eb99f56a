"""Benchmark: the pipeline engine's scheduling overhead per task and its throughput, LocalCluster against
SLURMCluster, both with 2 workers of 1 thread.

A throw-away site (SQLite in a temp folder, or a fresh database on ``--url``'s PostgreSQL server) archives
``--series`` tiny T1w series; a one-stage pipeline whose stage does nothing but write ``{"n": 1}`` is run over
them, so every second measured is the engine's: Dask submission and transfer, the task's database reads,
input checksum checks, the provenance key, the derivative's atomic write and its one commit, the driver's
bookkeeping. Reported per backend: time from ``drive`` to the end (cluster start included and excluded),
throughput in tasks/s and overhead per task in ms, against a bare-Dask baseline (``client.submit`` of a no-op
function, same cluster). ``--backend slurm`` starts its own one-host Slurm (scripts/lib/slurm.sh, needs root)
unless ``SLURM_CONF`` names a running one. Never touches a site's own database or archive.

    python bench/bench_pipeline.py --series 40                     # LocalCluster, SQLite
    python bench/bench_pipeline.py --series 40 --backend both      # and SLURMCluster (root, slurm-wlm installed)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import click

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from incloud_kernel.pipeline import JsonStage, Pipeline, StageInput  # noqa: E402


class NoOp(JsonStage):
    """Writes one tiny JSON: the stage costs nothing, so the engine's own cost is what is timed."""

    name = "noop"
    version = "1"
    datatypes = ("anat",)

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        return {"n": 1}


NOOP = Pipeline("benchnoop", "1", [NoOp()], requires_qc=False, description="engine benchmark")


def _noop(i: int) -> int:
    return i


def _site(tmp: Path, url: str | None, series: int) -> Any:
    """A fresh site with ``series`` one-file T1w series in project BENCH."""
    from isolatedhub import nifti_bytes

    from incloud_kernel import config
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.archive.projects import create_project
    from incloud_kernel.site import Site

    os.environ["INCLOUD_HOME"] = str(tmp / "home")
    if url:
        from sqlalchemy import create_engine, text

        name = f"bench_{os.getpid()}_{int(time.time())}"
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        os.environ["INCLOUD_DATABASE_URL"] = url.rsplit("/", 1)[0] + f"/{name}"
    else:
        os.environ["INCLOUD_DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite'}"
    os.environ["INCLOUD_COMPUTE_PIPELINES"] = json.dumps({"benchnoop": "bench_pipeline:NOOP"})
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])
    site = Site.open(config.get_config(reload=True), migrate=True)
    site.ensure_roots()
    admin = Actor.console("bench")
    image = nifti_bytes((8, 8, 8))
    with records.transaction(site) as db:
        create_project(db, admin, "BENCH", "Engine benchmark")
        ids = []
        for i in range(series):
            records.add_participant(db, admin, "BENCH", f"B{i:04d}")
            ses = records.add_session(db, admin, f"B{i:04d}", "1")
            ids.append(records.add_series(db, admin, ses, "anat", "T1w").id)
    for sid in ids:
        records.add_files(site, admin, sid, {"nii.gz": image})
    return site


def _measure(site: Any, backend: str, n: int) -> dict[str, Any]:
    from distributed import Client

    from incloud_kernel import config
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import executor, runs
    from incloud_kernel.archive.permissions import Actor

    os.environ["INCLOUD_COMPUTE_BACKEND"] = backend
    os.environ["INCLOUD_COMPUTE_WORKERS"] = "2"
    os.environ["INCLOUD_COMPUTE_SCHEDULER_HOST"] = "127.0.0.1"
    site.config = config.get_config(reload=True)
    started = time.monotonic()
    with executor.cluster_for(site.config.compute, None, str(site.config.home)) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=300)
        ready = time.monotonic()
        t0 = time.monotonic()
        client.gather([client.submit(_noop, i, pure=False) for i in range(n)])
        bare = time.monotonic() - t0
        with transaction(site.engine) as db:
            run_id = runs.create_run(db, Actor.console("bench"), "benchnoop", "BENCH").id
        t0 = time.monotonic()
        state = executor.drive(site, run_id, client=client)
        engine = time.monotonic() - t0
    return {"backend": backend, "tasks": n, "state": state, "cluster_start_s": round(ready - started, 2),
            "engine_s": round(engine, 2), "tasks_per_s": round(n / engine, 1),
            "overhead_ms_per_task": round(1000 * engine / n, 1), "bare_dask_ms_per_task": round(1000 * bare / n, 2)}


@click.command()
@click.option("--series", default=40, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--backend", type=click.Choice(["local", "slurm", "both"]), default="local", show_default=True)
@click.option("--url", default=None, help="A PostgreSQL server URL to create the bench database on (else SQLite).")
def main(series: int, backend: str, url: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="incloud-bench-pipeline-", dir="/tmp"))
    os.chmod(tmp, 0o755)  # Slurm jobs run in it
    slurm_dir = None
    try:
        if backend != "local" and not os.environ.get("SLURM_CONF"):
            from hubstack import slurm

            slurm_dir = tmp / "slurm"
            slurm("start", slurm_dir)
            os.environ["SLURM_CONF"] = str(slurm_dir / "slurm.conf")
        site = _site(tmp, url, series)
        results = []
        for name in (["slurm", "local"] if backend == "both" else [backend]):
            results.append(_measure(site, name, series))
            with site.engine.begin() as conn:  # the next backend computes again, not reuses
                from sqlalchemy import text

                for table in ("pipeline_task", "provenance", "pipeline_run", "data_file WHERE kind = 'derivative'",
                              "derivative"):
                    conn.execute(text(f"DELETE FROM {table}"))
            shutil.rmtree(site.archive_root / "derivatives", ignore_errors=True)
        for r in results:
            click.echo(json.dumps(r))
    finally:
        if slurm_dir is not None:
            from hubstack import slurm

            slurm("stop", slurm_dir)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
