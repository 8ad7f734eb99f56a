"""Driving a run on Dask: a ``LocalCluster`` by default, a dask-jobqueue ``SLURMCluster`` when the site's
``compute.backend`` is ``slurm``; tasks submitted as their inputs become ready, failures retried with back-off.

The driver holds no state the database does not: it reads the run's tasks, submits each ready one
(``runs.execute_task`` on a worker), records what comes back, and beats a heartbeat so others can tell a live
run from an interrupted one. Killing it loses nothing that ``resume`` cannot finish. Must never pass a
database credential or token through the scheduler (workers read the site config from their environment,
which the LocalCluster or ``sbatch`` hands down), and never leave a cluster behind on exit.
"""
from __future__ import annotations

import heapq
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sqlalchemy import select

from incloud_kernel.archive.models import PipelineRun, PipelineTask, utcnow
from incloud_kernel.config import ComputeSection
from incloud_kernel.db import transaction
from incloud_kernel.pipeline import runs
from incloud_kernel.pipeline.pipeline import load
from incloud_kernel.pipeline.provenance import host

Progress = Callable[[dict[str, int]], None]


@contextmanager
def cluster_for(compute: ComputeSection, run_id: int | None = None, log_directory: str | None = None) -> Iterator[Any]:
    """The Dask cluster the site config names, closed (Slurm jobs cancelled) on exit; Slurm worker jobs write
    their output into ``log_directory`` (default: the driver's working folder, sbatch's default)."""
    if compute.backend == "slurm":
        # dask_jobqueue installs a SIGINT handler when first imported: a caller driving from a thread must have
        # imported it in the main thread before (the CLI and the API's background drivers drive in it).
        from dask_jobqueue import SLURMCluster

        options: dict[str, Any] = {"dashboard_address": ":0"}
        if compute.scheduler_host:
            options["host"] = compute.scheduler_host
        cluster = SLURMCluster(
            cores=compute.slurm_cores, processes=1, memory=compute.slurm_memory, queue=compute.slurm_queue,
            walltime=compute.slurm_walltime, python=compute.slurm_python or sys.executable,
            job_name=f"incloud-run-{run_id}" if run_id is not None else "incloud-pipeline",
            job_extra_directives=list(compute.slurm_job_extra), scheduler_options=options,
            worker_extra_args=[f"--nthreads={compute.threads_per_worker}"], death_timeout=60,
            log_directory=log_directory)
        cluster.scale(compute.workers)
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=compute.workers, threads_per_worker=compute.threads_per_worker,
                               processes=True, host="127.0.0.1", dashboard_address=":0")
    try:
        yield cluster
    finally:
        cluster.close()


class Driver:
    """Runs the waiting tasks of one run on a Dask client until none is left (or the run is cancelled)."""

    def __init__(self, site: Any, run_id: int, client: Any, on_progress: Progress | None = None) -> None:
        self.site = site
        self.run_id = run_id
        self.client = client
        self.compute = site.config.compute
        self.on_progress = on_progress
        self.futures: dict[Any, int] = {}
        self.retries: list[tuple[float, int]] = []  # (monotonic time due, task id)
        self.last_beat = 0.0

    # -- graph ---------------------------------------------------------------------------------------------------
    def _dependencies(self) -> dict[int, list[int]]:
        """Task id -> ids of the tasks it waits for (its upstream stages on the same series, and the
        ``session_after`` stages on the same session's series: ``runs.session_dependencies``)."""
        with transaction(self.site.engine) as db:
            run = db.get(PipelineRun, self.run_id)
            pipe = load(run.pipeline_ref)  # type: ignore[union-attr]
            tasks = list(db.scalars(select(PipelineTask).where(PipelineTask.run_id == self.run_id)))
            session = runs.session_dependencies(db, self.run_id, pipe)
        index = {(t.stage, t.series_id): t.id for t in tasks}
        return {t.id: [index[(dep, t.series_id)] for dep in pipe.stage(t.stage).after if (dep, t.series_id) in index]
                + sorted(session.get(t.id, {}).values()) for t in tasks}

    def _states(self) -> dict[int, tuple[str, int]]:
        with transaction(self.site.engine) as db:
            return {t.id: (t.state, t.attempts) for t in
                    db.scalars(select(PipelineTask).where(PipelineTask.run_id == self.run_id))}

    def _set(self, task_id: int, **fields: Any) -> None:
        with transaction(self.site.engine) as db:
            task = db.get(PipelineTask, task_id)
            for k, v in fields.items():
                setattr(task, k, v)

    def _run_state(self) -> str:
        with transaction(self.site.engine) as db:
            run = db.get(PipelineRun, self.run_id)
            if time.monotonic() - self.last_beat >= self.compute.heartbeat_interval:
                run.heartbeat_at = utcnow()  # type: ignore[union-attr]
                self.last_beat = time.monotonic()
            return run.state  # type: ignore[union-attr]

    # -- loop ----------------------------------------------------------------------------------------------------
    def _submit(self, task_id: int, attempt: int) -> None:
        future = self.client.submit(runs.execute_task, task_id, key=f"incloud-task-{task_id}-{attempt}-{time.time_ns()}",
                                    pure=False)
        self.futures[future] = task_id

    def _failed(self, task_id: int, attempts: int, error: str) -> bool:
        """A failed attempt: retry after ``retry_backoff * 2**(attempts-1)`` s (True), or keep it failed."""
        if attempts < self.compute.max_attempts:
            self._set(task_id, state=runs.WAITING, error=error)
            due = time.monotonic() + self.compute.retry_backoff * 2 ** max(attempts - 1, 0)
            heapq.heappush(self.retries, (due, task_id))
            return True
        self._set(task_id, state=runs.FAILED, error=error, finished_at=utcnow())
        return False

    def _cancel_all(self) -> None:
        for future in list(self.futures):
            future.cancel()
        self.futures.clear()
        self.retries.clear()
        with transaction(self.site.engine) as db:
            for task in db.scalars(select(PipelineTask).where(PipelineTask.run_id == self.run_id,
                                                              PipelineTask.state.in_([runs.WAITING, runs.RUNNING]))):
                task.state = runs.CANCELLED

    def drive(self) -> str:
        """Drive to the end; returns the run's final state (done, failed or cancelled)."""
        needs = self._dependencies()
        queued: set[int] = set()
        retrying: set[int] = set()
        while True:
            if self._run_state() in (runs.CANCELLING, runs.CANCELLED):
                self._cancel_all()
                return self._close(runs.CANCELLED)
            states = self._states()
            for task_id, (state, attempts) in states.items():
                if state != runs.WAITING or task_id in queued or task_id in retrying:
                    continue
                deps = [states[d][0] for d in needs.get(task_id, [])]
                if any(d in (runs.FAILED, runs.CANCELLED) for d in deps):
                    self._set(task_id, state=runs.FAILED, error="an upstream stage of this input failed",
                              finished_at=utcnow())
                elif all(d == runs.DONE for d in deps):
                    self._submit(task_id, attempts)
                    queued.add(task_id)
            now = time.monotonic()
            while self.retries and self.retries[0][0] <= now:
                _, task_id = heapq.heappop(self.retries)
                retrying.discard(task_id)
            if self.on_progress:
                self.on_progress(runs.count_states([s for s, _ in states.values()]))
            if not self.futures and not self.retries:
                if all(s in runs.FINISHED for s, _ in states.values()):
                    failed = any(s == runs.FAILED for s, _ in states.values())
                    return self._close(runs.FAILED if failed else runs.DONE)
                if not any(s == runs.WAITING and t not in queued for t, (s, _) in states.items()):
                    time.sleep(0.2)
                continue
            if not self.futures:
                time.sleep(min(0.5, max(0.0, self.retries[0][0] - time.monotonic())))
                continue
            done: list[Any] = []
            until = time.monotonic() + 0.5  # the database is read again at most twice a second while tasks run
            while not done and time.monotonic() < until:
                done = [f for f in self.futures if f.done()]
                if not done:
                    time.sleep(0.05)
            for future in done:
                task_id = self.futures.pop(future)
                queued.discard(task_id)
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - the worker died under it too often (KilledWorker)
                    result = {"state": runs.FAILED, "error": runs.one_line(exc)}
                if result["state"] == runs.FAILED:
                    attempts = self._states().get(task_id, ("", 1))[1]
                    if self._failed(task_id, attempts, str(result["error"])):
                        retrying.add(task_id)

    def _close(self, state: str) -> str:
        with transaction(self.site.engine) as db:
            run = db.get(PipelineRun, self.run_id)
            run.state, run.finished_at, run.heartbeat_at = state, utcnow(), utcnow()  # type: ignore[union-attr]
            counts = runs.count_states([t.state for t in db.scalars(select(PipelineTask).where(
                PipelineTask.run_id == self.run_id))])
        if self.on_progress:
            self.on_progress(counts)
        return state


class _NoCluster:
    """The client of a run with nothing left to submit (the driver only closes the run)."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called: nothing is waiting
        raise RuntimeError("no task to submit")


def drive(site: Any, run_id: int, *, client: Any = None, on_progress: Progress | None = None) -> str:
    """Drive run ``run_id`` to its end on the site's cluster (or on ``client``); returns its final state.

    Also resumes a run whose driver was killed: tasks it left running are run again unless their derivative
    was committed (then they are found by their provenance key and not recomputed).
    """
    with transaction(site.engine) as db:
        run = runs.begin(db, run_id, f"{host()}:{os.getpid()}", site.config.compute.heartbeat_interval)
        if not any(t.state == runs.WAITING for t in run.tasks):  # nothing to compute: no cluster to start
            client = client or _NoCluster()
    if client is not None:
        return Driver(site, run_id, client, on_progress).drive()
    from distributed import Client

    from incloud_kernel.site import private_dir

    logs = str(private_dir(site.config.home / "pipeline-logs"))
    with cluster_for(site.config.compute, run_id, logs) as cluster, Client(cluster) as own:
        return Driver(site, run_id, own, on_progress).drive()


def spawn_driver(home: str | os.PathLike[str], run_id: int) -> int:
    """Start ``incloud pipeline resume RUN`` as a background process of its own session; returns its pid.

    Used by ``run --detach`` and by the API service, which must not block on a run."""
    from pathlib import Path

    from incloud_kernel.site import private_dir

    logs = private_dir(Path(home) / "pipeline-logs")
    with open(logs / f"run-{run_id}.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from incloud_kernel.cli import main; main()", "pipeline",
                                 "resume", str(run_id), "--quiet"], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


__all__ = ["cluster_for", "Driver", "drive", "spawn_driver"]
