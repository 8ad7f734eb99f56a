"""Runs and tasks in the database: creating a run over a project's series, executing one task (on a Dask
worker), progress counts, cancel and resume.

The database is the run's memory, not the Dask scheduler: every task's state, attempts and last error live in
``pipeline_task``, so a run survives a killed worker (the task runs again; its provenance key makes the second
commit a no-op) and a killed driver (``resume`` drives the remaining tasks). Permissions come only from
``archive.permissions`` (write on the project to start a run, read to watch it, owner or manage to cancel).
Must never keep a patient-identifying value: errors are one line of exception class and message about
de-identified archive contents, inputs are named by series id and pseudonymous labels.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions, records
from incloud_kernel.archive.models import (
    DataFile,
    FileKind,
    Participant,
    PipelineRun,
    PipelineTask,
    Project,
    Provenance,
    Series,
    Session,
    utcnow,
)
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.projects import audit
from incloud_kernel.archive.storage import sha256_file
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, ValidationError
from incloud_kernel.pipeline import provenance
from incloud_kernel.pipeline.pipeline import Pipeline, get, load
from incloud_kernel.pipeline.stage import StageInput

#: Task and run states.
WAITING, RUNNING, DONE, FAILED, CANCELLED, CANCELLING = "waiting", "running", "done", "failed", "cancelled", \
    "cancelling"
TASK_STATES = (WAITING, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)


def one_line(exc: BaseException) -> str:
    """An input's error as kept on its task: exception class and message on one line, at most 1000 characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:1000]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        return value.replace(tzinfo=timezone.utc)
    return value


# --------------------------------------------------------------------------------------------------------------
# Creating and finding runs
# --------------------------------------------------------------------------------------------------------------

def select_series(db: DB, pipeline: Pipeline, project_id: int, only: Iterable[int] | None = None) -> list[Series]:
    """The project's series some stage of the pipeline takes; with ``requires_qc`` only those in a QC state the
    project accepts for processing (``qc.gate.accepted_states``: a reviewer's decision changes the next run).
    ``only``: just these series ids of the project (one uploaded study's), not the whole project."""
    from incloud_kernel.qc.gate import accepted_states

    stmt = select(Series).where(Series.project_id == project_id, Series.datatype != records.SOURCEDATA)
    if only is not None:
        stmt = stmt.where(Series.id.in_(sorted({int(i) for i in only})))
    if pipeline.requires_qc:
        stmt = stmt.where(Series.qc_status.in_(accepted_states(db, project_id)))
    return [s for s in db.scalars(stmt.order_by(Series.id)) if pipeline.stages_for(s.datatype, s.suffix)]


def create_run(db: DB, actor: Actor, pipeline: str | Pipeline, project: int | str, *,
               backend: str = "local", series: Iterable[int] | None = None) -> PipelineRun:
    """A new run of ``pipeline`` over ``project``'s selected series, with one waiting task per stage and series.

    Needs ``write`` on the project (derivatives are written into it). A stage whose upstream stages do not take
    a series gets no task for it. ``series``: only these series of the project (an uploaded study's).
    Raises NotFound/PermissionDenied as ``permissions.require``.
    """
    pipe = get(pipeline) if isinstance(pipeline, str) else pipeline
    if not pipe.ref:
        raise ValidationError(f"pipeline {pipe.name} must be registered (module:attribute) to run on workers")
    proj = permissions.require(db, actor, project, Action.write)
    run = PipelineRun(project_id=proj.id, pipeline=pipe.name, version=pipe.version, pipeline_ref=pipe.ref,
                      owner=actor.user, state=WAITING, backend=backend)
    db.add(run)
    db.flush()
    for row in select_series(db, pipe, proj.id, series):
        label = row.session.participant.label
        takes = {s.name for s in pipe.stages_for(row.datatype, row.suffix)}
        for stage in pipe.stages:
            if stage.name in takes and set(stage.after) <= takes:
                db.add(PipelineTask(run_id=run.id, stage=stage.name, series_id=row.id, participant=label))
    db.flush()
    audit(db, actor, "pipeline.run", "pipeline_run", run.id, project=proj.id, pipeline=pipe.name,
          version=pipe.version)
    return run


def session_dependencies(db: DB, run_id: int, pipe: Pipeline, session_id: int | None = None
                         ) -> dict[int, dict[str, int]]:
    """Task id -> ``{stage name: task id}`` of the tasks it reads on *another* series of its session (the
    stages' ``session_after``): for each ``(stage, suffix)`` the run's task of that stage on the session's
    lowest-id series of that suffix. A session without one has no entry (the stage gets an empty mapping).
    ``session_id`` limits the answer to one session's tasks (one query either way)."""
    if not any(s.session_after for s in pipe.stages):
        return {}
    stmt = (select(PipelineTask.id, PipelineTask.stage, Series.id, Series.session_id, Series.suffix)
            .join(Series, Series.id == PipelineTask.series_id).where(PipelineTask.run_id == run_id))
    if session_id is not None:
        stmt = stmt.where(Series.session_id == session_id)
    rows = db.execute(stmt.order_by(Series.id, PipelineTask.id)).all()
    first: dict[tuple[int, str, str], int] = {}  # (session, stage, suffix) -> task on the lowest-id series
    for task_id, stage, _series_id, session, suffix in rows:
        first.setdefault((session, stage, suffix), task_id)
    out: dict[int, dict[str, int]] = {}
    for task_id, stage, _series_id, session, _suffix in rows:
        links = {name: first[(session, name, suffix)] for name, suffix in pipe.stage(stage).session_after
                 if (session, name, suffix) in first}
        if links:
            out[task_id] = links
    return out


def get_run(db: DB, actor: Actor, run_id: int, action: Action | str = Action.read) -> PipelineRun:
    """A run the actor may ``action`` (read: see its project); NotFound for a run of an invisible project."""
    run = db.get(PipelineRun, int(run_id))
    if run is None:
        raise NotFound(f"run #{run_id} not found")
    try:
        permissions.require(db, actor, run.project_id, Action.read)
    except NotFound:
        raise NotFound(f"run #{run_id} not found") from None
    if Action(action) is not Action.read and run.owner != actor.user:
        permissions.require(db, actor, run.project_id, Action.manage)
    return run


def list_runs(db: DB, actor: Actor, project: int | str | None = None, limit: int = 100) -> list[PipelineRun]:
    """The newest runs of projects the actor may read (of ``project`` only, if given)."""
    stmt = select(PipelineRun).where(PipelineRun.project_id.in_(permissions.visible_project_ids(actor)))
    if project is not None:
        stmt = stmt.where(PipelineRun.project_id == permissions.require(db, actor, project).id)
    return list(db.scalars(stmt.order_by(PipelineRun.id.desc()).limit(limit)))


def interrupted(run: PipelineRun, heartbeat_interval: float) -> bool:
    """A run marked running whose driver has been silent for three heartbeats (killed, or its node lost)."""
    beat = _aware(run.heartbeat_at)
    return run.state in (RUNNING, CANCELLING) and (
        beat is None or utcnow() - beat > timedelta(seconds=3 * heartbeat_interval))


def dashboard_path(run: PipelineRun, heartbeat_interval: float) -> str | None:
    """The hub-relative path of the run's live Dask dashboard (its status page), or None when the run has no
    live driver. Never the internal address: the dashboard is reached through the API service's proxy only."""
    if not run.dashboard or run.state not in (RUNNING, CANCELLING) or interrupted(run, heartbeat_interval):
        return None
    return urlparse(run.dashboard).path.rstrip("/") + "/status"


# --------------------------------------------------------------------------------------------------------------
# Progress, cancel
# --------------------------------------------------------------------------------------------------------------

def count_states(states: list[str]) -> dict[str, int]:
    """How many of ``states`` are in each task state (every state present, zeros included)."""
    c = Counter(states)
    return {s: c.get(s, 0) for s in TASK_STATES}


def outputs_of(db: DB, provenance_ids: list[int]) -> dict[int, list[str]]:
    """Archive paths of the derivative files behind each provenance id."""
    if not provenance_ids:
        return {}
    rows = db.execute(select(Provenance.id, DataFile.relpath)
                      .join(DataFile, DataFile.derivative_id == Provenance.derivative_id)
                      .where(Provenance.id.in_(provenance_ids)).order_by(DataFile.relpath)).all()
    out: dict[int, list[str]] = defaultdict(list)
    for pid, relpath in rows:
        out[pid].append(relpath)
    return out


def progress(db: DB, actor: Actor, run_id: int, heartbeat_interval: float = 5.0,
             with_tasks: bool = True) -> dict[str, Any]:
    """Counts of done / running / waiting / failed / cancelled tasks for the run, per stage and per subject,
    and (``with_tasks``) every task with its input, state, attempts, error and outputs side by side."""
    run = get_run(db, actor, run_id)
    tasks = list(db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id).order_by(PipelineTask.id)))
    by_stage: dict[str, list[str]] = defaultdict(list)
    by_subject: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        by_stage[t.stage].append(t.state)
        by_subject[t.participant].append(t.state)
    project = db.get(Project, run.project_id)
    out: dict[str, Any] = {
        "run": run.id, "pipeline": run.pipeline, "version": run.version, "project": project.code if project else None,
        "owner": run.owner, "state": run.state, "backend": run.backend,
        "interrupted": interrupted(run, heartbeat_interval), "dashboard": dashboard_path(run, heartbeat_interval),
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "total": len(tasks), "counts": count_states([t.state for t in tasks]),
        "reused": sum(1 for t in tasks if t.reused),
        "stages": {k: count_states(v) for k, v in by_stage.items()},
        "subjects": {k: count_states(v) for k, v in sorted(by_subject.items())},
    }
    if with_tasks:
        outs = outputs_of(db, [t.provenance_id for t in tasks if t.provenance_id])
        out["tasks"] = [{"id": t.id, "stage": t.stage, "series": t.series_id, "subject": t.participant,
                         "state": t.state, "attempts": t.attempts, "reused": t.reused, "error": t.error,
                         "host": t.host, "outputs": outs.get(t.provenance_id or -1, [])} for t in tasks]
    return out


def provenance_of(db: DB, actor: Actor, run_id: int) -> list[dict[str, Any]]:
    """How each derivative of the run was made, for a methods section or an audit: per task that produced (or
    reused) one, the pipeline and stage with their versions, the parameters, every input file with its checksum,
    the library versions with the workstation image's digest, the host, the run time and the output files.
    Same permission as ``progress`` (read the run's project); inputs are archive paths (pseudonymous labels)."""
    run = get_run(db, actor, run_id)
    tasks = list(db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id,
                                                       PipelineTask.provenance_id.is_not(None))
                            .order_by(PipelineTask.id)))
    records = {p.id: p for p in db.scalars(select(Provenance).where(
        Provenance.id.in_([t.provenance_id for t in tasks])))} if tasks else {}
    outs = outputs_of(db, list(records))
    out = []
    for t in tasks:
        p = records[t.provenance_id]  # type: ignore[index]
        out.append({"task": t.id, "series": t.series_id, "subject": t.participant, "reused": t.reused,
                    "pipeline": p.pipeline, "pipeline_version": p.pipeline_version, "stage": p.stage,
                    "stage_version": p.stage_version, "parameters": p.parameters,
                    "inputs": [{"relpath": i.get("relpath"), "sha256": i.get("sha256")} for i in p.inputs],
                    "libraries": p.libraries, "host": p.host, "runtime_seconds": p.runtime_seconds,
                    "created_at": p.created_at, "key": p.key, "outputs": outs.get(p.id, [])})
    return out


def summary(db: DB, actor: Actor, heartbeat_interval: float = 5.0, newest: int = 5) -> dict[str, Any]:
    """For a dashboard: how many runs of the actor's projects are going and how many ended with failed inputs,
    and the ``newest`` runs with their counts (a few queries whatever the number of runs)."""
    visible = permissions.visible_project_ids(actor)
    going = db.scalars(select(PipelineRun).where(PipelineRun.project_id.in_(visible),
                                                 PipelineRun.state.in_([RUNNING, CANCELLING])))
    failed = db.scalar(select(func.count()).select_from(PipelineRun).where(
        PipelineRun.project_id.in_(visible), PipelineRun.state == FAILED))
    rows = [progress(db, actor, r.id, heartbeat_interval, with_tasks=False)
            for r in list_runs(db, actor, limit=newest)]
    return {"running": sum(1 for r in going if not interrupted(r, heartbeat_interval)), "failed": failed or 0,
            "last_runs": [{"run": r["run"], "project": r["project"], "pipeline": r["pipeline"],
                           "version": r["version"], "state": "interrupted" if r["interrupted"] else r["state"],
                           "total": r["total"], "done": r["counts"]["done"], "failed": r["counts"]["failed"]}
                          for r in rows]}


def cancel(db: DB, actor: Actor, run_id: int, heartbeat_interval: float = 5.0) -> PipelineRun:
    """Stop a run: waiting tasks are cancelled at once; running ones finish (their outputs are valid) and the
    driver ends the run as ``cancelled``. A run without a live driver is cancelled here. Owner or manage."""
    run = get_run(db, actor, run_id, Action.manage)
    if run.state in FINISHED:
        return run
    for task in db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id,
                                                      PipelineTask.state == WAITING)):
        task.state = CANCELLED
    live = run.state in (RUNNING, CANCELLING) and not interrupted(run, heartbeat_interval)
    run.state = CANCELLING if live else CANCELLED
    if not live:
        for task in db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id,
                                                          PipelineTask.state == RUNNING)):
            task.state = CANCELLED
        run.finished_at, run.dashboard = utcnow(), None
    audit(db, actor, "pipeline.cancel", "pipeline_run", run.id)
    db.flush()
    return run


def begin(db: DB, run_id: int, driver: str, heartbeat_interval: float = 5.0) -> PipelineRun:
    """Claim a run for a driver (a new one, or ``resume`` after a killed driver): tasks left ``running`` by the
    dead driver's workers go back to ``waiting`` (their provenance key keeps a finished one from running twice).

    Raises ValidationError for a finished run and for one whose driver is alive (one driver per run)."""
    run = db.get(PipelineRun, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"run #{run_id} not found")
    if run.state in (DONE, CANCELLED):
        raise ValidationError(f"run #{run_id} is {run.state}; start a new run instead")
    if run.state in (RUNNING, CANCELLING) and not interrupted(run, heartbeat_interval):
        raise ValidationError(f"run #{run_id} is {run.state} with a live driver ({run.driver})")
    for task in db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id, PipelineTask.state == RUNNING)):
        task.state = WAITING
    run.state, run.driver, run.heartbeat_at, run.dashboard = RUNNING, driver[:256], utcnow(), None
    run.started_at = run.started_at or utcnow()
    run.finished_at = None
    return run


# --------------------------------------------------------------------------------------------------------------
# One task, on a Dask worker
# --------------------------------------------------------------------------------------------------------------

_SITES: dict[str, Any] = {}


def _site() -> Any:
    """The worker process's site, opened once from its environment (``INCLOUD_*``, inherited from the driver)."""
    from incloud_kernel.config import get_config
    from incloud_kernel.site import Site

    cfg = get_config()
    if cfg.database_url not in _SITES:
        _SITES[cfg.database_url] = Site.open(cfg)
    return _SITES[cfg.database_url]


def _inputs(db: DB, task: PipelineTask, pipe: Pipeline, root: Path) -> tuple[StageInput, list[dict[str, Any]]]:
    """What the stage reads (raw files of the series, outputs of its upstream tasks) and their checksums."""
    series = db.get(Series, task.series_id)
    if series is None:
        raise NotFound(f"series #{task.series_id} is gone from the archive")
    ses = db.get(Session, series.session_id)
    part = db.get(Participant, ses.participant_id) if ses else None
    raw = list(db.scalars(select(DataFile).where(DataFile.series_id == series.id,
                                                 DataFile.kind == FileKind.raw.value).order_by(DataFile.relpath)))
    stem = records.bids_stem(series).rsplit("/", 1)[-1]
    files = {f.relpath.rsplit("/", 1)[-1][len(stem) + 1:]: root / f.relpath for f in raw
             if f.relpath.rsplit("/", 1)[-1].startswith(stem + ".")}
    used = [{"file_id": f.id, "relpath": f.relpath, "sha256": f.sha256} for f in raw]
    def outputs(up: PipelineTask | None, name: str, of: str) -> dict[str, Path]:
        prov = db.get(Provenance, up.provenance_id) if up and up.provenance_id else None
        if prov is None:
            raise ValidationError(f"upstream stage {name} has no outputs for {of}")
        rows = list(db.scalars(select(DataFile).where(DataFile.derivative_id == prov.derivative_id)
                               .order_by(DataFile.relpath)))
        used.extend({"file_id": r.id, "relpath": r.relpath, "sha256": r.sha256} for r in rows)
        return {r.relpath: root / r.relpath for r in rows}

    upstream: dict[str, dict[str, Path]] = {}
    for name in pipe.stage(task.stage).after:
        up = db.scalars(select(PipelineTask).where(PipelineTask.run_id == task.run_id, PipelineTask.stage == name,
                                                   PipelineTask.series_id == task.series_id)).one_or_none()
        upstream[name] = outputs(up, name, f"series #{task.series_id}")
    session_upstream: dict[str, dict[str, Path]] = {}
    links = session_dependencies(db, task.run_id, pipe, series.session_id).get(task.id, {})
    for name, up_id in sorted(links.items()):
        session_upstream[name] = outputs(db.get(PipelineTask, up_id), name, f"the session of series #{series.id}")
    inputs = StageInput(series_id=series.id, participant=part.label if part else "", session=ses.label if ses else "",
                        datatype=series.datatype, suffix=series.suffix, entities=dict(series.entities or {}),
                        files=files, upstream=upstream, session_upstream=session_upstream)
    return inputs, used


def _finish(engine: Any, task_id: int, **fields: Any) -> None:
    with transaction(engine) as db:
        task = db.get(PipelineTask, task_id)
        if task is not None:
            for k, v in fields.items():
                setattr(task, k, v)
            task.finished_at = utcnow()


def execute_task(task_id: int) -> dict[str, Any]:
    """Run one task where it is called (a Dask worker) and record the outcome; returns ``{"state", "error"}``.

    Never raises for a failure of the stage or its data: the error is kept on the task (one line) and returned,
    so one failing input never stops the batch. The derivative, its files and its provenance are committed in
    one transaction whose first write is the provenance key: a concurrent or repeated attempt of the same
    computation finds the key taken and records nothing (no duplicate derivative).
    """
    site = _site()
    engine = site.engine
    with transaction(engine) as db:
        task = db.get(PipelineTask, task_id)
        if task is None:
            return {"state": CANCELLED, "error": "task deleted"}
        run = db.get(PipelineRun, task.run_id)
        if run is None or run.state in (CANCELLING, CANCELLED) or task.state == CANCELLED:
            task.state = CANCELLED
            return {"state": CANCELLED, "error": None}
        if task.state == DONE:  # a repeated execution (Dask re-ran a task whose result it lost)
            return {"state": DONE, "error": None}
        task.state, task.attempts, task.host = RUNNING, task.attempts + 1, provenance.host()[:256]
        task.started_at, task.finished_at = utcnow(), None
        ref, run_id = run.pipeline_ref, run.id
    scratch: Path | None = None
    try:
        pipe = load(ref)
        stage = pipe.stage(task.stage)
        with transaction(engine) as db:
            task = db.get(PipelineTask, task_id)
            inputs, used = _inputs(db, task, pipe, site.archive_root)
            series_session = db.get(Series, task.series_id).session_id  # type: ignore[union-attr]
        for item in used:  # read only what the archive vouches for
            if sha256_file(site.archive_root / item["relpath"]) != item["sha256"]:
                raise ValidationError(f"input file #{item['file_id']} does not match its recorded SHA-256 "
                                      "(run 'incloud archive verify')")
        pkey = provenance.key(pipe.name, pipe.version, stage.name, stage.version, stage.parameters,
                              [i["sha256"] for i in used])
        with transaction(engine) as db:
            existing = provenance.find(db, pkey)
        if existing is not None and existing.derivative_id is not None:
            _finish(engine, task_id, state=DONE, reused=True, error=None, provenance_id=existing.id)
            return {"state": DONE, "error": None, "reused": True}
        scratch = Path(tempfile.mkdtemp(prefix="incloud-stage-"))
        started = time.monotonic()
        outputs = stage.run(inputs, scratch)
        runtime = time.monotonic() - started
        provenance.dataset_description(site.archive_root, pipe.name, pipe.version, pipe.description)
        actor = Actor(user=f"pipeline-run:{run_id}", site_admin=True)
        try:
            with records.transaction(site) as db:
                prov = Provenance(key=pkey, run_id=run_id, pipeline=pipe.name, pipeline_version=pipe.version,
                                  stage=stage.name, stage_version=stage.version, parameters=stage.parameters,
                                  inputs=used, libraries=provenance.library_versions(stage.libraries),
                                  host=provenance.host()[:256], runtime_seconds=runtime)
                db.add(prov)
                db.flush()  # the key first: a concurrent attempt waits here, then fails on the unique key
                derivative, _rows = records.register_derivative(site, actor, db, series_session, pipe.name,
                                                                pipe.version, outputs, inputs=[task.series_id])
                prov.derivative_id = derivative.id
                indices = stage.indices(outputs)
                if indices is not None:  # QC indices: stored in the gate, whose thresholds decide what they can
                    from incloud_kernel.qc.gate import record_indices

                    record_indices(db, actor, task.series_id, indices, f"{pipe.name}-{pipe.version}")
                tables = stage.feature_tables(outputs)
                if tables:  # feature rows go to the library in the same transaction: a failure retries the task
                    from incloud_kernel.library.store import publish_tables

                    publish_tables(site, db, actor, tables, series=task.series_id, provenance=prov.id)
                row = db.get(PipelineTask, task_id)
                row.state, row.error, row.reused, row.provenance_id = DONE, None, False, prov.id
                row.finished_at = utcnow()
        except IntegrityError:  # the same computation was committed meanwhile by another attempt
            with transaction(engine) as db:
                existing = provenance.find(db, pkey)
            if existing is None:
                raise
            _finish(engine, task_id, state=DONE, reused=True, error=None, provenance_id=existing.id)
            return {"state": DONE, "error": None, "reused": True}
        except ValidationError as exc:
            if "already recorded" in str(exc):
                raise ValidationError(
                    f"outputs of {pipe.name} {pipe.version} already exist for series #{task.series_id} from "
                    f"another stage version or parameters: give the pipeline a new version") from None
            raise
        return {"state": DONE, "error": None, "reused": False}
    except Exception as exc:  # noqa: BLE001 - any failure of one input is data, not a crash of the batch
        error = one_line(exc)
        _finish(engine, task_id, state=FAILED, error=error)
        return {"state": FAILED, "error": error}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["create_run", "get_run", "list_runs", "progress", "summary", "cancel", "begin", "execute_task", "select_series",
           "interrupted", "dashboard_path", "outputs_of", "count_states", "one_line", "session_dependencies", "TASK_STATES"]
