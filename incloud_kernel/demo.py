"""The embedded demo's content beyond its archive (README command A, issue 13 item 6): QC indices, DEMO's features in
the library, a CADS model and a first CADS report, so every module of the portal shows something.

``populate(site)`` is what ``incloud demo populate`` runs; ``scripts/start.sh`` starts it in the background after
the hub (as the service user, never as root), so the login URL is not delayed. Each step is skipped when it is
done already, so a later start does nothing but check:

1. **qc**: waits for DEMO's QC run (the one start.sh started detached; one is started and driven here if there is
   none, and a run whose driver died is driven again);
2. **attributes**: each DEMO session's age and scanner and each participant's sex, when the archive lacks them,
   from the T1w's BIDS sidecar (``PatientAge``, ``PatientSex``, ``Manufacturer``/``ManufacturersModelName``: what
   de-identification kept), because CADS needs them; the library rows are refreshed;
3. **features**: the "features" pipeline over DEMO's series that the QC gate lets through (rows go to the feature
   library as the engine records them). The demo's synthetic 2 mm scans fail the automatic QC thresholds; when no
   DEMO T1w is usable, DEMO's owners' QC policy is set to also accept ``fail`` (printed, audited): the demo then
   shows features and reports whose QC line says ``fail``, never a pass that was not given;
4. **reference**: a synthetic reference cohort (project ``DEMOREF``: feature rows only, no images; healthy
   controls and two diagnoses with planted regional volume loss, four scanners plus DEMO's own, ``cads.synthetic``)
   on the columns DEMO's T1 features have, centred on DEMO's own values, so a CADS model applies to DEMO's scans;
5. **model**: a CADS model trained on DEMOREF (``cads.registry.retrain``, ComBat-harmonised) unless one is current;
6. **report**: the report of DEMO's first T1w with features, built as the demo clinician (the API's permission
   check), which the clinician then opens in the "CADS reports" tile.

Must never: invent a QC decision, train on DEMO's own scans (they have no diagnosis), or print a
patient-identifying value (pseudonyms, counts and series numbers only).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import select

from incloud_kernel.archive.models import DataFile, Participant, PipelineRun, Project, QCIndex, Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from incloud_kernel.ingest import demographics
from incloud_kernel.errors import ValidationError

PROJECT = "DEMO"
REFERENCE = "DEMOREF"
CLINICIAN = "clinician"
#: Scans of the synthetic reference cohort (half healthy controls; a fifth held out by ``cads.data.heldout``).
REFERENCE_SIZE = 240
#: What every report by the demo's model tells its reader (the clinician is no member of DEMOREF).
MODEL_NOTE = ("trained on a synthetic reference cohort (DEMOREF) for demonstration: not for clinical use")
#: The T1 stage's volume feature (``features.t1``): the reference cohort's columns.
VOLUME = "gm_volume"
#: Keywords picking the regions whose volume each synthetic diagnosis lowers (the first three matches each).
PLANTED_KEYWORDS = {"SCZ": ("Frontal", "Temporal"), "BD": ("Cingulate", "Insular", "Amygdala")}
CONSOLE = Actor.console("demo")
POLL_SECONDS = 3.0
#: A run found waiting that no driver has started after this long is driven here.
UNSTARTED_SECONDS = 300.0


@dataclass
class Summary:
    """What ``populate`` did and found: the steps' one-line outcomes and the series whose report was built."""

    steps: list[str] = field(default_factory=list)
    qc_indices: int = 0
    feature_scans: int = 0
    model_version: int | None = None
    report_series: int | None = None


def _ended_run(site: Any, name: str, project: str, say: Callable[[str], None]) -> tuple[int, str]:
    """The newest run of pipeline ``name`` over ``project`` brought to its end: waited for while its driver runs,
    driven here when it has none (none yet, or its driver died). Returns (run id, final state)."""
    from incloud_kernel.pipeline import executor, runs

    beat = site.config.compute.heartbeat_interval
    with transaction(site.engine) as db:
        existing = [r.id for r in runs.list_runs(db, CONSOLE, project) if r.pipeline == name
                    and r.state != runs.CANCELLED]
        if not existing:
            existing = [runs.create_run(db, CONSOLE, name, project, backend=site.config.compute.backend).id]
            db.commit()
            say(f"{name}: run #{existing[0]} started over {project}")
            started = True
        else:
            started = False
    run_id = existing[0]
    if started:  # driven here, outside any database session (a run takes minutes)
        return run_id, executor.drive(site, run_id)
    since = time.monotonic()
    while True:
        with transaction(site.engine) as db:
            run = db.get(PipelineRun, run_id)
            assert run is not None
            state, lost = run.state, runs.interrupted(run, beat)
        if state in runs.FINISHED:
            return run_id, state
        # a run still waiting long after it was made: its detached driver never started
        if lost or (state == runs.WAITING and time.monotonic() - since > UNSTARTED_SECONDS):
            say(f"{name}: run #{run_id} lost its driver; driving it here")
            return run_id, executor.drive(site, run_id)
        time.sleep(POLL_SECONDS)


def _sidecar(site: Any, db: Any, series_id: int) -> dict[str, Any]:
    relpath = db.scalar(select(DataFile.relpath).where(DataFile.series_id == series_id,
                                                       DataFile.relpath.like("%.json")))
    if relpath is None:
        return {}
    try:
        return dict(json.loads((Path(site.archive_root) / relpath).read_text()))
    except (OSError, ValueError):
        return {}


def _fill_attributes(site: Any, project: str) -> int:
    """Age, scanner and sex from the T1w sidecars where the archive has none (sites ingested before
    ``ingest.demographics`` existed); returns the sessions completed."""
    from incloud_kernel.archive.projects import audit
    from incloud_kernel.library import store

    filled = 0
    with transaction(site.engine) as db:
        proj = db.scalars(select(Project).where(Project.code == project)).one()
        for series in db.scalars(select(Series).where(Series.project_id == proj.id, Series.suffix == "T1w")):
            session = series.session
            participant = db.get(Participant, session.participant_id)
            assert participant is not None
            if session.age_at_scan is not None and session.scanner and participant.sex:
                continue
            facts = demographics.from_sidecar(_sidecar(site, db, series.id))
            if session.age_at_scan is None and facts.age_at_scan is not None:
                session.age_at_scan = facts.age_at_scan
            session.scanner = session.scanner or facts.scanner
            if not participant.sex and facts.sex:
                participant.sex = facts.sex
            filled += 1
        if filled:
            audit(db, CONSOLE, "demo.attributes", "project", project, sessions=filled)
            db.flush()
            store.refresh(site, db, project)
    return filled


def _usable_t1(site: Any, project: str) -> int:
    from incloud_kernel.qc import gate

    with transaction(site.engine) as db:
        return len(gate.usable_series(db, CONSOLE, project, suffix="T1w"))


def _accept_failed(site: Any, project: str) -> None:
    from incloud_kernel.qc import gate

    with transaction(site.engine) as db:
        gate.set_policy(db, CONSOLE, project, ["pass", "caveat", "fail"])
        db.commit()


def _demo_frame(site: Any, project: str) -> Any:
    """DEMO's scans in the library (wide), as the site console sees them."""
    from incloud_kernel.library import query

    with transaction(site.engine) as db:
        return query.search(site, db, CONSOLE, limit=None, audit=False, project=project).frame("wide")


def _planted(columns: list[str], noise: float) -> dict[str, dict[str, float]]:
    """Three regions per diagnosis whose volume it lowers by 2.4-2.8 times the between-person spread ``noise``
    (12-14 % at 5 %; by keyword, other columns if too few match)."""
    out: dict[str, dict[str, float]] = {}
    taken: set[str] = set()
    for diagnosis, words in PLANTED_KEYWORDS.items():
        hits = [c for c in columns if any(w in c for w in words) and c not in taken][:3]
        hits += [c for c in columns if c not in taken and c not in hits][:3 - len(hits)]
        taken.update(hits)
        out[diagnosis] = {c: 1 - k * noise for c, k in zip(hits, (2.8, 2.6, 2.4))}
    return out


def reference_cohort(demo: Any, n: int = REFERENCE_SIZE, seed: int = 7) -> tuple[Any, list[str]]:
    """The synthetic reference cohort on DEMO's regional volume columns (``atlas/gm_volume/region``), each
    centred on DEMO's mean value, and its feature columns; the AAL columns of ``cads.synthetic`` when DEMO has
    no features."""
    from incloud_kernel.cads import synthetic

    columns = [c for c in demo.columns if c.count("/") == 2 and c.split("/")[1] == VOLUME
               and not c.startswith("global/")] if len(demo) else []
    means = {c: float(demo[c].mean()) for c in columns if np.isfinite(demo[c].mean()) and demo[c].mean() > 0}
    if not means:
        means = {synthetic.gmv(r).replace("/gmv/", f"/{VOLUME}/"): float(m) for r, m in synthetic.REGIONS.items()}
    # DEMO's mean is of scans of any age and sex; the cohort's means are those of a 40-year-old man
    scanners = tuple(sorted({str(s) for s in demo.get("scanner", []) if isinstance(s, str) and s}))
    sites = tuple(dict.fromkeys(scanners + synthetic.SITES))
    # the spread between people: DEMO's own (its scans are few; 10 % when there is one), within 5-25 %
    spread = float(np.nanmedian([demo[c].std() / demo[c].mean() for c in means])) if len(demo) > 1 else np.nan
    noise = float(np.clip(spread, 0.05, 0.25)) if np.isfinite(spread) else 0.10
    frame = synthetic.cohort(n, seed=seed, sites=sites, volumes=means, planted=_planted(sorted(means), noise),
                             connectivity=False, noise=noise)
    frame["participant"] = [f"REF{k:04d}" for k in range(n)]
    return frame, list(means)


def _publish_reference(site: Any, demo: Any, n: int) -> int:
    from incloud_kernel.archive import records
    from incloud_kernel.archive.projects import create_project
    from incloud_kernel.cads import synthetic
    from incloud_kernel.library import store

    frame, columns = reference_cohort(demo, n)
    ids = []
    with records.transaction(site) as db:
        create_project(db, CONSOLE, REFERENCE, "Synthetic reference cohort for CADS (features only, no images)")
        for row in frame.itertuples():
            participant = records.add_participant(db, CONSOLE, REFERENCE, row.participant, sex=row.sex,
                                                  diagnosis=[row.diagnosis], follow_up=False)
            session = records.add_session(db, CONSOLE, participant, "1", age_at_scan=float(row.age),
                                          scanner=row.site)
            ids.append(records.add_series(db, CONSOLE, session, "anat", "T1w", qc_status="pass").id)
    with records.transaction(site) as db:
        for k, series in enumerate(ids):
            store.publish(site, db, CONSOLE, synthetic.long_rows(frame, k, columns), series=series)
    store.compact(site, REFERENCE)
    return len(ids)


def _exists(site: Any, code: str) -> bool:
    with transaction(site.engine) as db:
        return db.scalar(select(Project.id).where(Project.code == code)) is not None


def populate(site: Any, *, project: str = PROJECT, clinician: str = CLINICIAN, reference_size: int = REFERENCE_SIZE,
             validate: bool = True, say: Callable[[str], None] = print) -> Summary:
    """Run the demo's steps (module docstring); each one already done is skipped. ``reference_size``: scans of
    the synthetic reference cohort; ``validate``: the model's leave-site-out validation (its report prints it).
    Returns the summary."""
    from incloud_kernel.cads import registry, report

    out = Summary()

    def step(line: str) -> None:
        out.steps.append(line)
        say(line)

    if not _exists(site, project):
        raise ValidationError(f"no project {project}: create the demo first (scripts/start.sh does)")
    run_id, state = _ended_run(site, "qc", project, step)
    with transaction(site.engine) as db:
        out.qc_indices = len(set(db.scalars(select(QCIndex.series_id).join(Series).join(Project).where(
            Project.code == project))))
    step(f"qc: run #{run_id} {state}; {out.qc_indices} series with quality indices")
    filled = _fill_attributes(site, project)
    if filled:
        step(f"attributes: age, sex and scanner of {filled} session(s) from their T1w sidecars")
    if not _usable_t1(site, project):
        _accept_failed(site, project)
        step(f"qc: no {project} T1w passed the automatic QC thresholds (the demo's scans are synthetic); {project}'s "
             "QC policy now also lets 'fail' into processing, and their reports say QC fail")
    run_id, state = _ended_run(site, "features", project, step)
    demo = _demo_frame(site, project)
    out.feature_scans = int(len(demo))
    step(f"features: run #{run_id} {state}; {out.feature_scans} {project} scan(s) in the feature library")
    if not _exists(site, REFERENCE):
        step(f"reference: {_publish_reference(site, demo, reference_size)} synthetic scans published as project "
             f"{REFERENCE}")
    with transaction(site.engine) as db:
        current = registry.current(db)
        if current is None:
            outcome = registry.retrain(site, db, CONSOLE, {"project": REFERENCE, "qc": "pass"}, validate=validate,
                                       harmonise="combat", note=MODEL_NOTE)
            db.commit()
            step(f"cads: model v{outcome.version} {outcome.decision}")
            current = registry.current(db)
        out.model_version = current.version if current is not None else None
    t1 = demo[demo["series"].isin(_t1_series(site, project))] if len(demo) else demo
    if out.model_version is None or not len(t1):
        step("cads: no report (no current model or no T1w with features)")
        return out
    series = int(sorted(t1["series"].astype(int))[0])
    with transaction(site.engine) as db:
        built = report.build(site, db, Actor.resolve(db, clinician), series)
        db.commit()
    out.report_series = series
    step(f"cads: report of series {series} (participant {built['pseudonym']}) by model v"
         f"{built['model']['version']}: {len(built['flagged'])} flagged of {built['n_features']}, "
         f"{len(built['warnings'])} warning(s); {clinician} opens it in the CADS reports tile")
    return out


def _t1_series(site: Any, project: str) -> list[int]:
    with transaction(site.engine) as db:
        return list(db.scalars(select(Series.id).join(Project).where(Project.code == project,
                                                                     Series.suffix == "T1w")))


def what_to_open(summary: Summary, project: str = PROJECT) -> list[str]:
    """The lines printed at the end: which demo user opens which tile first."""
    lines = ["as reviewer: Review QC (the quality indices of the demo's scans)",
             f"as researcher: Archive browser, then Feature library ({summary.feature_scans} {project} scans)"]
    if summary.report_series is not None:
        lines.append(f"as clinician: CADS reports, series {summary.report_series} (model v{summary.model_version})")
    return lines


__all__ = ["PROJECT", "REFERENCE", "Summary", "populate", "reference_cohort", "what_to_open"]
