"""What happens to an uploaded study after it is archived: its processing starts by itself, step by step.

The steps are ``archived``, ``qc``, ``features`` and ``report``. ``advance`` looks at where the study is and
starts what is due, through the pipeline engine (``incloud_kernel.pipeline``, each run driven by a detached
``incloud pipeline resume`` process, as ``run --detach``): the QC pipeline over the study's series; the features
pipeline over the series the QC gate accepts once no series waits for a reviewer any more; the CADS report is
ready when the library holds the series' features and the site has a model. A series the automatic thresholds
leave ``pending`` makes the QC step ``review`` ("waiting for QC review"): a state, not an error; a reviewer's
decision lets the next ``advance`` go on. Runs belong to the uploading user (write on the project, checked by
``runs.create_run``) and take only the study's series.

``advance`` is idempotent: the caller keeps the run ids in a small mutable record (the upload ticket) and
calls it again, from a follower thread or on every status look, so an API restart loses nothing.
Must never return or record a patient-identifying value: steps carry states, counts, series ids and the
archive's series names only.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from sqlalchemy import select

#: Pipelines the upload starts, by their site name (``compute.pipelines`` may replace either).
QC_PIPELINE, FEATURES_PIPELINE = "qc", "features"
STEPS = ("archived", "qc", "features", "report")
#: Step states the follower stops at: nothing more happens without a person (review) or ever (the others).
SETTLED = frozenset({"done", "failed", "skipped", "unavailable"})
_GOING = ("waiting", "running", "cancelling")


@dataclass
class Step:
    """One step as the uploader shows it: ``state`` is waiting, running, review, done, failed, skipped or
    unavailable; ``detail`` one value-free line."""

    name: str
    state: str
    detail: str = ""


def settled(steps: list[dict[str, Any]]) -> bool:
    """True when no step will change by itself any more (a QC review, or every step at an end)."""
    return any(s["state"] == "review" for s in steps) or all(s["state"] in SETTLED for s in steps)


def _start(site: Any, db: Any, actor: Any, pipeline: str, project: str, series: Iterable[int]) -> tuple[int, int]:
    """A run of ``pipeline`` over ``series`` of ``project``, its driver spawned detached: (run id, tasks)."""
    from incloud_kernel.pipeline import runs
    from incloud_kernel.pipeline.executor import spawn_driver

    run = runs.create_run(db, actor, pipeline, project, backend=site.config.compute.backend, series=series)
    tasks = len(run.tasks)
    db.commit()
    if tasks:
        spawn_driver(site.config.home, run.id)
    return run.id, tasks


def _run_step(site: Any, db: Any, run_id: int, record: dict[str, Any]) -> tuple[str, Any]:
    """(the step state of run ``run_id``, the run row). A run whose driver died (no heartbeat) is resumed, at
    most once every three heartbeats (``record["resumed"]``: when it last was)."""
    from incloud_kernel.archive.models import PipelineRun
    from incloud_kernel.pipeline import runs
    from incloud_kernel.pipeline.executor import spawn_driver

    run = db.get(PipelineRun, run_id)
    if run.state in _GOING:
        beat = site.config.compute.heartbeat_interval
        if runs.interrupted(run, beat) and time.time() - record.get("resumed", 0) > 3 * beat:
            record["resumed"] = time.time()
            spawn_driver(site.config.home, run.id)  # ``resume``: one live driver per run, the engine makes sure
        return "running", run
    return {"done": "done", "cancelled": "skipped"}.get(run.state, "failed"), run


def advance(site: Any, user: str, project: str, series_ids: list[int], record: dict[str, Any]) -> list[dict[str, Any]]:
    """Start what is due for the archived study (``series_ids`` of ``project``, uploaded by ``user``) and
    return its steps. ``record`` (kept by the caller between calls) holds ``qc_run`` and ``features_run``."""
    from incloud_kernel.archive.models import PipelineTask, Series
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.cads import registry as models
    from incloud_kernel.db import session_factory
    from incloud_kernel.qc.gate import accepted_states

    steps = [Step("archived", "done", f"{len(series_ids)} series")]
    with session_factory(site.engine)() as db:
        actor = Actor.resolve(db, user)
        if record.get("qc_run") is None:
            record["qc_run"], record["qc_tasks"] = _start(site, db, actor, QC_PIPELINE, project, series_ids)
        if not record.get("qc_tasks"):
            return [asdict(s) for s in steps + [Step("qc", "skipped", "no series that QC measures"),
                                                Step("features", "skipped"), Step("report", "skipped")]]
        state, run = _run_step(site, db, record["qc_run"], record)
        measured = sorted(set(db.scalars(select(PipelineTask.series_id).where(PipelineTask.run_id == run.id))))
        if state == "running":
            finished = db.scalar(select(PipelineTask.id).where(PipelineTask.run_id == run.id,
                                                              PipelineTask.state.in_(["done", "failed"])).limit(1))
            steps.append(Step("qc", "running", "measuring" if finished is None else "measured in part"))
            return [asdict(s) for s in steps + [Step("features", "waiting"), Step("report", "waiting")]]
        rows = list(db.scalars(select(Series).where(Series.id.in_(series_ids)).order_by(Series.id)))
        accept = set(accepted_states(db, rows[0].project_id)) if rows else set()
        pending = [r.id for r in rows if r.id in measured and r.qc_status == "pending"]
        usable = [r.id for r in rows if r.qc_status in accept]
        failed = [r.id for r in rows if r.id in measured and r.qc_status == "fail"]
        counts = f"{len(usable)} usable, {len(failed)} failed, {len(pending)} waiting for review"
        if pending:
            steps.append(Step("qc", "review", counts))
            return [asdict(s) for s in steps + [Step("features", "waiting", "after the QC review"),
                                                Step("report", "waiting")]]
        steps.append(Step("qc", "done" if usable else "failed", counts))
        if not usable:
            return [asdict(s) for s in steps + [Step("features", "skipped", "no series passed QC"),
                                                Step("report", "skipped")]]
        if record.get("features_run") is None:
            record["features_run"], record["features_tasks"] = _start(site, db, actor, FEATURES_PIPELINE,
                                                                      project, usable)
        if not record.get("features_tasks"):
            return [asdict(s) for s in steps + [Step("features", "skipped", "no series the features take"),
                                                Step("report", "skipped")]]
        state, run = _run_step(site, db, record["features_run"], record)
        tasks = list(db.scalars(select(PipelineTask).where(PipelineTask.run_id == run.id)))
        done = sorted({t.series_id for t in tasks if t.state == "done"})
        steps.append(Step("features", state, f"{sum(t.state == 'done' for t in tasks)} of {len(tasks)} inputs"))
        if state == "running":
            return [asdict(s) for s in steps + [Step("report", "waiting")]]
        if not done:
            return [asdict(s) for s in steps + [Step("report", "skipped", "no features were computed")]]
        if models.current(db) is None:
            return [asdict(s) for s in steps + [Step("report", "unavailable", "no CADS model at this site yet")]]
        from incloud_kernel.cads import report

        ready = sorted(int(r["series"]) for r in report.available(site, db, actor)
                       if r["project"] == project and int(r["series"]) in done)
        record["report_series"] = ready
        if not ready:
            return [asdict(s) for s in steps + [Step("report", "waiting", "the features are not in the library yet")]]
        steps.append(Step("report", "done", f"{len(ready)} series"))
    return [asdict(s) for s in steps]


__all__ = ["advance", "settled", "Step", "STEPS", "QC_PIPELINE", "FEATURES_PIPELINE"]
