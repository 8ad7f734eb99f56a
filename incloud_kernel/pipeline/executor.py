"""Driving a run on Dask: a ``LocalCluster`` by default, a dask-jobqueue ``SLURMCluster`` when the site's
``compute.backend`` is ``slurm``; tasks submitted as their inputs become ready, failures retried with back-off.

The driver holds no state the database does not: it reads the run's tasks, submits each ready one
(``runs.execute_task`` on a worker), records what comes back, and beats a heartbeat so others can tell a live
run from an interrupted one. Killing it loses nothing that ``resume`` cannot finish. A task running longer
than its time limit (``compute.task_timeout``, a stage's ``timeout``, ``compute.stage_timeouts``) is stopped by
restarting the worker under it and counted as a failed attempt.

The scheduler's Dask dashboard listens on ``compute.dashboard_host`` (loopback by default) under the public path
the API service proxies it at (``dashboard_prefix``); its internal URL is kept on the run while the driver lives,
for that proxy only. Must never pass a database credential or token through the scheduler (workers read the site
config from their environment, which the LocalCluster or ``sbatch`` hands down), never bind the dashboard to
every interface by default (it has no login of its own), and never leave a cluster behind on exit.
"""
from __future__ import annotations

import heapq
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from sqlalchemy import select

from incloud_kernel.archive.models import PipelineRun, PipelineTask, utcnow
from incloud_kernel.config import ComputeSection, Config
from incloud_kernel.db import transaction
from incloud_kernel.errors import ConfigError
from incloud_kernel.pipeline import container, runs
from incloud_kernel.pipeline.pipeline import load
from incloud_kernel.pipeline.provenance import host

Progress = Callable[[dict[str, int]], None]

#: The hub-managed API service that proxies run dashboards (``hub.roles.API_SERVICE``; the kernel never imports
#: the hub package).
API_SERVICE = "incloud-api"


def dashboard_prefix(cfg: Config, run_id: int) -> str:
    """The public path of run ``run_id``'s Dask dashboard behind the hub's proxy (no trailing slash). The
    dashboard is served under this very prefix (Dask's ``http_prefix``) so that the API service forwards paths
    unchanged and Bokeh's relative links and websocket resolve through the proxy."""
    base = urlparse(cfg.hub.bind_url).path.rstrip("/")
    return f"{base}/services/{API_SERVICE}/runs/{int(run_id)}/dashboard"


def _dashboard_options(compute: ComputeSection, prefix: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"dashboard_address": f"{compute.dashboard_host}:0"}
    if prefix:
        options["http_prefix"] = prefix
    return options


def worker_python(compute: ComputeSection, config: Config | None = None, log_directory: str | None = None) -> str:
    """The Python a Slurm worker job starts its Dask worker with: ``compute.slurm_python`` (or the driver's own),
    or with ``compute.container`` the image's, through images/incloud-run with the site's home, archive, the
    job's log folder (TLS certificates) and ``container.binds`` mounted at the same paths."""
    if not compute.container:
        return compute.slurm_python or sys.executable
    if config is None:
        raise ConfigError("compute.container needs the site's configuration to mount its folders")
    binds = [config.home, config.archive_root, *([log_directory] if log_directory else []), *config.container.binds]
    return shlex.join(container.wrap(config.container.images, [f"{container.IMAGE_VENV}/bin/python"],
                                     binds=[b for b in binds if os.path.exists(b)],
                                     pythonpath=config.container.pythonpath))


@contextmanager
def cluster_for(compute: ComputeSection, run_id: int | None = None, log_directory: str | None = None,
                dashboard_prefix: str | None = None, config: Config | None = None) -> Iterator[Any]:
    """The Dask cluster the site config names, closed (Slurm jobs cancelled) on exit; Slurm worker jobs write
    their output into ``log_directory`` (default: the driver's working folder, sbatch's default). The
    scheduler's dashboard listens on a free port of ``compute.dashboard_host`` under ``dashboard_prefix``.

    Scheduler, workers and client speak mutual TLS with a temporary certificate authority of this cluster
    (Dask's ``security=True``): another account on a node cannot connect to the scheduler and run code as the
    service user. Slurm worker jobs read their certificate from ``log_directory`` (private to the service user,
    shared with the jobs). With ``compute.container`` the workers run in the workstation image (``worker_python``;
    ``config`` is the site's configuration)."""
    dashboard = _dashboard_options(compute, dashboard_prefix)
    if compute.backend == "slurm":
        # dask_jobqueue installs a SIGINT handler when first imported: a caller driving from a thread must have
        # imported it in the main thread before (the CLI and the API's background drivers drive in it).
        from dask_jobqueue import SLURMCluster

        options: dict[str, Any] = dict(dashboard)
        if compute.scheduler_host:
            options["host"] = compute.scheduler_host
        cluster = SLURMCluster(
            cores=compute.slurm_cores, processes=1, memory=compute.slurm_memory, queue=compute.slurm_queue,
            walltime=compute.slurm_walltime, python=worker_python(compute, config, log_directory),
            job_name=f"incloud-run-{run_id}" if run_id is not None else "incloud-pipeline",
            job_extra_directives=list(compute.slurm_job_extra), scheduler_options=options,
            worker_extra_args=[f"--nthreads={compute.threads_per_worker}"], death_timeout=60,
            log_directory=log_directory, security=True, shared_temp_directory=log_directory)
        cluster.scale(compute.workers)
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=compute.workers, threads_per_worker=compute.threads_per_worker,
                               processes=True, host="127.0.0.1", security=True,
                               dashboard_address=dashboard["dashboard_address"],
                               scheduler_kwargs={k: v for k, v in dashboard.items() if k == "http_prefix"})
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
        self.running_since: dict[int, float] = {}  # task id -> monotonic time it was first seen running
        self.limits: dict[int, float] = {}

    def _time_limits(self) -> dict[int, float]:
        """Task id -> seconds it may compute (0: no limit): the site's ``stage_timeouts`` for its stage, else the
        stage's own ``timeout``, else ``compute.task_timeout``."""
        with transaction(self.site.engine) as db:
            pipe = load(db.get(PipelineRun, self.run_id).pipeline_ref)  # type: ignore[union-attr]
            tasks = list(db.execute(select(PipelineTask.id, PipelineTask.stage).where(
                PipelineTask.run_id == self.run_id)))
        out: dict[int, float] = {}
        for task_id, name in tasks:
            stage_limit = getattr(pipe.stage(name), "timeout", None)
            limit = self.compute.stage_timeouts.get(name, stage_limit)
            out[task_id] = float(self.compute.task_timeout if limit is None else limit)
        return out

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

    def _stop_overdue(self, states: dict[int, tuple[str, int]]) -> tuple[list[int], list[int]]:
        """Stop tasks computing longer than their limit: the worker under each is restarted (a Python thread
        cannot be interrupted) and the attempt counts as failed; returns the ids of the stopped tasks and of those that will be retried."""
        now = time.monotonic()
        for future, task_id in self.futures.items():
            if states.get(task_id, ("", 0))[0] == runs.RUNNING:
                self.running_since.setdefault(task_id, now)
        overdue = [(f, t) for f, t in self.futures.items() if self.limits.get(t, 0) > 0
                   and t in self.running_since and now - self.running_since[t] > self.limits[t]]
        if not overdue:
            return [], []
        keys = {f.key: t for f, t in overdue}
        workers = {w for w, held in self.client.processing().items() if keys.keys() & set(held)}
        for future, task_id in overdue:
            self.futures.pop(future)
            future.cancel()
        if workers:
            try:
                with _beating(self.site, self.run_id):  # a restart takes seconds: the driver is alive meanwhile
                    self.client.restart_workers(list(workers), timeout=60, raise_for_error=False)
            except Exception:  # noqa: BLE001 - a worker that cannot restart is replaced by its cluster or lost
                pass
        retried: list[int] = []
        for _, task_id in overdue:
            self.running_since.pop(task_id, None)
            attempts = self._states().get(task_id, ("", 1))[1]
            if self._failed(task_id, attempts, f"TimeoutError: timed out after {self.limits[task_id]:g} s"):
                retried.append(task_id)
        return [t for _, t in overdue], retried

    def drive(self) -> str:
        """Drive to the end; returns the run's final state (done, failed or cancelled)."""
        needs = self._dependencies()
        self.limits = self._time_limits()
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
            stopped, retried = self._stop_overdue(states)
            queued.difference_update(stopped)
            retrying.update(retried)
            done: list[Any] = []
            until = time.monotonic() + 0.5  # the database is read again at most twice a second while tasks run
            while not done and time.monotonic() < until:
                done = [f for f in self.futures if f.done()]
                if not done:
                    time.sleep(0.05)
            for future in done:
                task_id = self.futures.pop(future)
                queued.discard(task_id)
                self.running_since.pop(task_id, None)
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
            run.dashboard = None  # type: ignore[union-attr]  # the cluster closes with the driver
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
    prefix = dashboard_prefix(site.config, run_id)
    with ExitStack() as stack:
        with _beating(site, run_id):
            cluster = stack.enter_context(cluster_for(site.config.compute, run_id, logs, prefix,
                                                          site.config))
            own = stack.enter_context(Client(cluster))
            url = _record_dashboard(site, run_id, own, prefix)
        try:
            return Driver(site, run_id, own, on_progress).drive()
        finally:
            if url:
                _clear_dashboard(site, run_id, url)


@contextmanager
def _beating(site: Any, run_id: int) -> Iterator[None]:
    """Beat the run's heartbeat from a thread while its cluster starts (the drive loop beats after): a cluster
    slow to start on a loaded node must not make a live driver look dead (and its run resumable by another)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(site.config.compute.heartbeat_interval):
            try:
                with transaction(site.engine) as db:
                    run = db.get(PipelineRun, run_id)
                    if run is not None:
                        run.heartbeat_at = utcnow()
            except Exception:  # noqa: BLE001 - a missed beat only makes the run look interrupted
                pass

    thread = threading.Thread(target=beat, name=f"incloud-run-{run_id}-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _record_dashboard(site: Any, run_id: int, client: Any, prefix: str) -> str | None:
    """Keep the internal URL of this driver's dashboard on the run (for the API service's proxy); returns it."""
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if not port:
        return None
    bind = site.config.compute.dashboard_host
    host = socket.gethostname() if bind in ("", "0.0.0.0", "::") else bind
    url = f"http://{'[' + host + ']' if ':' in host else host}:{int(port)}{prefix}"
    with transaction(site.engine) as db:
        run = db.get(PipelineRun, run_id)
        run.dashboard = url  # type: ignore[union-attr]
    return url


def _clear_dashboard(site: Any, run_id: int, url: str) -> None:
    """Forget this driver's dashboard (unless another driver's replaced it meanwhile)."""
    with transaction(site.engine) as db:
        run = db.get(PipelineRun, run_id)
        if run is not None and run.dashboard == url:
            run.dashboard = None


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


__all__ = ["cluster_for", "dashboard_prefix", "Driver", "drive", "spawn_driver", "API_SERVICE"]
