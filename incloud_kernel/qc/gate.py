"""The QC gate: a series' quality decision (pending, pass, fail, caveat with a reason) and what enters processing.

Quality indices (stored per series and pipeline version in ``qc_index``) meet the site's automatic thresholds
(``[qc] thresholds``): clear passes and clear fails are decided at once, the band between them waits for a
reviewer. A reviewer's decision (``review``) always wins over the thresholds and is never overwritten by a later
automatic one. Each project's owners choose which states enter processing (``set_policy``; by default the site's
``qc.usable``: pass and caveat, as XNAT dax's ``require_usable``); pipelines take ``usable_series``.

Every decision is one ``QCReview`` row (the history) plus one ``AuditEvent`` naming the decision, never the
reviewer's comment or reason: free text may hold anything, so it stays in the ``qc_review`` table, readable by the
project's readers only, and is never logged, never put into an exception message, never sent elsewhere.
Permissions come only from ``incloud_kernel.archive.permissions``.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from statistics import quantiles
from typing import Any, Iterable, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import (
    DataFile,
    Derivative,
    Project,
    QCIndex,
    QCPolicy,
    QCReview,
    QCStatus,
    Series,
)
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.projects import audit
from incloud_kernel.config import QCSection, get_config
from incloud_kernel.errors import StorageError, ValidationError

log = logging.getLogger(__name__)

#: Who the automatic decisions are recorded as (in ``qc_review.reviewer`` and the audit log).
AUTO_REVIEWER = "system:qc-gate"
#: Who records a protocol deviation found at ingest (``acquisition.compliance``) as a caveat (``flag``).
PROTOCOL_REVIEWER = "system:protocol-check"
#: Decisions a reviewer may take (``pending`` re-opens a series for review).
DECISIONS = tuple(q.value for q in QCStatus)
MAX_REASON = 500
MAX_COMMENT = 2000
_INDEX_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")


# --------------------------------------------------------------------------------------------------------------
# Automatic thresholds
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One threshold pair of the site config: ``index`` of series with BIDS ``suffix``, ``better`` lower or
    higher; at or better than ``pass_at`` votes pass, at or beyond ``fail_at`` fails."""

    suffix: str
    index: str
    better: str
    pass_at: float
    fail_at: float

    def passes(self, value: float) -> bool:
        return value <= self.pass_at if self.better == "lower" else value >= self.pass_at

    def fails(self, value: float) -> bool:
        return value >= self.fail_at if self.better == "lower" else value <= self.fail_at

    def describe_fail(self) -> str:
        return f"{self.index} {'>=' if self.better == 'lower' else '<='} {self.fail_at:g}"


def rules(cfg: QCSection | None = None) -> list[Rule]:
    """The site's threshold rules (``[qc] thresholds``; checked when the config is read)."""
    cfg = cfg or get_config().qc
    return [Rule(str(r["suffix"]), str(r["index"]), str(r["better"]), float(r["pass"]), float(r["fail"]))
            for r in cfg.thresholds]


def automatic(suffix: str, indices: Mapping[str, float], site_rules: Iterable[Rule]) -> tuple[str, str]:
    """The automatic decision for a series of ``suffix`` with ``indices``: (state, reason).

    ``fail`` when any applicable rule's index is at or beyond its fail threshold; ``pass`` when the suffix has
    rules and every one of them has its index at or better than its pass threshold; else ``pending`` (a
    reviewer decides, also when an index is missing or not finite).
    """
    applicable = [r for r in site_rules if r.suffix == suffix]
    failed = [r for r in applicable if _finite(indices.get(r.index)) and r.fails(float(indices[r.index]))]
    if failed:
        return QCStatus.failed.value, "automatic: " + ", ".join(r.describe_fail() for r in failed)
    if applicable and all(_finite(indices.get(r.index)) and r.passes(float(indices[r.index])) for r in applicable):
        return QCStatus.passed.value, "automatic: " + ", ".join(r.index for r in applicable) + " within pass"
    return QCStatus.pending.value, ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------------------
# Indices in, decisions out
# --------------------------------------------------------------------------------------------------------------

def record_indices(db: DB, actor: Actor, series: int | Series, indices: Mapping[str, float],
                   pipeline_version: str, cfg: QCSection | None = None) -> str:
    """Store ``indices`` (MRIQC IQM names, finite numbers) of one series for ``pipeline_version`` and apply the
    automatic thresholds; returns the series' QC state afterwards. Needs ``write`` in its project.

    Recording the same version again replaces that version's values (a re-run), never another version's.
    Raises ValidationError for a bad name, version or value (naming the index, never echoing a value).
    """
    row = permissions.get_series(db, actor, series, Action.write)
    if not isinstance(pipeline_version, str) or not _VERSION.fullmatch(pipeline_version):
        raise ValidationError("pipeline_version must be 1-32 letters, digits or ._+- (starting with one of the "
                              "first two)")
    for name, value in indices.items():
        if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
            raise ValidationError("index names are lower-case letters, digits and _ (MRIQC IQM names)")
        if not _finite(value):
            raise ValidationError(f"index {name} must be a finite number")
    existing = {i.name: i for i in db.scalars(select(QCIndex).where(
        QCIndex.series_id == row.id, QCIndex.pipeline_version == pipeline_version))}
    for name, value in indices.items():
        if name in existing:
            existing[name].value = float(value)
        else:
            db.add(QCIndex(series_id=row.id, project_id=row.project_id, name=name, value=float(value),
                           pipeline_version=pipeline_version))
    db.flush()
    audit(db, actor, "qc.indices", "series", row.id, names=sorted(indices), pipeline_version=pipeline_version)
    return apply_thresholds(db, row, cfg)


def current_indices(db: DB, series_ids: Iterable[int]) -> dict[int, dict[str, float]]:
    """Per series, each index's value from the newest pipeline version that computed it (by time recorded).
    Callers pass ids they have already permission-checked."""
    ids = list(series_ids)
    out: dict[int, dict[str, float]] = {i: {} for i in ids}
    if not ids:
        return out
    rows = db.scalars(select(QCIndex).where(QCIndex.series_id.in_(ids)).order_by(QCIndex.computed_at, QCIndex.id))
    for r in rows:  # later rows win
        out[r.series_id][r.name] = r.value
    return out


def last_review(db: DB, series_id: int) -> QCReview | None:
    """The series' current decision record (newest row), or None when nothing was decided yet."""
    return db.scalars(select(QCReview).where(QCReview.series_id == series_id)
                      .order_by(QCReview.id.desc()).limit(1)).first()


def _refresh_library(db: DB, series: Series) -> None:
    """Copy ``series``' new QC state into the feature library's scan row (``library.store.refresh`` of that scan
    only; nothing when it has no features there), so ``qc=`` queries follow the decision. A library that cannot
    be written does not undo the decision: it is logged (one line, ids only) and ``incloud features refresh``
    repairs it."""
    from incloud_kernel.library import store

    project = db.get(Project, series.project_id)
    try:
        store.refresh(get_config(), db, project.code, [series.id])
    except (OSError, StorageError) as exc:
        log.warning("feature library not refreshed after the QC decision on series #%s: %s", series.id,
                    type(exc).__name__)


def apply_thresholds(db: DB, series: Series, cfg: QCSection | None = None) -> str:
    """Decide ``series`` from its current indices unless a reviewer already has; returns its state.

    Internal (no permission check): callers hold ``write`` on the series (``record_indices``) or are the site's
    maintenance. A changed automatic decision is recorded as a review by ``AUTO_REVIEWER`` and audited.
    """
    previous = last_review(db, series.id)
    if previous is not None and previous.source == "reviewer":
        return series.qc_status
    if previous is None and series.qc_status != QCStatus.pending.value:  # set by hand before the gate existed
        return series.qc_status
    state, reason = automatic(series.suffix, current_indices(db, [series.id])[series.id], rules(cfg))
    if previous is not None and previous.reviewer != AUTO_REVIEWER and state != QCStatus.failed.value:
        return series.qc_status  # a flag (``flag``) is lifted by a reviewer or a failing index, not by a pass
    if state == series.qc_status and (previous is None or previous.reason == reason):
        return state
    before, series.qc_status = series.qc_status, state
    db.add(QCReview(series_id=series.id, project_id=series.project_id, reviewer=AUTO_REVIEWER, decision=state,
                    reason=reason, comment="", source="auto"))
    db.flush()
    audit(db, Actor(AUTO_REVIEWER), "qc.auto", "series", series.id, decision=state, previous=before)
    _refresh_library(db, series)
    return state


def flag(db: DB, series: Series, reason: str, *, reviewer: str = PROTOCOL_REVIEWER) -> str:
    """An automatic caveat from outside the thresholds (a protocol deviation found at ingest): the series stays
    usable with ``reason`` (value-free, one line) as the thresholds' decisions are recorded, by ``reviewer``.
    A reviewer's decision and a fail stand (the flag is then only audited); a later passing index does not lift
    it. Internal (no permission check): the ingest chain calls it in its archive transaction. Returns the state."""
    reason = _clean_text(reason, MAX_REASON, "reason")
    previous = last_review(db, series.id)
    before = series.qc_status
    if (previous is None or previous.source != "reviewer") and before != QCStatus.failed.value:
        series.qc_status = QCStatus.caveat.value
        db.add(QCReview(series_id=series.id, project_id=series.project_id, reviewer=reviewer,
                        decision=QCStatus.caveat.value, reason=reason, comment="", source="auto"))
        db.flush()
    audit(db, Actor(reviewer), "qc.flag", "series", series.id, decision=series.qc_status, previous=before)
    if series.qc_status != before:
        _refresh_library(db, series)
    return series.qc_status


def _clean_text(value: str | None, limit: int, what: str) -> str:
    text = " ".join(str(value or "").split())  # one line: no control characters survive
    if len(text) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    return text


def review(db: DB, actor: Actor, series: int | str | Series, decision: str, *, comment: str = "",
           reason: str = "") -> QCReview:
    """A reviewer's decision on one series: pass, fail, caveat (needs a reason; the comment serves when none is
    given) or pending (re-open). Needs the qc_reviewer role or ownership of the project
    (``permissions.require_review``). The audit event names the decision, never the comment or reason."""
    row = permissions.require_review(db, actor, series)
    if decision not in DECISIONS:
        raise ValidationError(f"decision must be one of {', '.join(DECISIONS)}")
    comment = _clean_text(comment, MAX_COMMENT, "comment")
    reason = _clean_text(reason, MAX_REASON, "reason") or (comment[:MAX_REASON] if decision == "caveat" else "")
    if decision == QCStatus.caveat.value and not reason:
        raise ValidationError("a caveat needs a reason: say what is wrong with the series but leaves it usable")
    before, row.qc_status = row.qc_status, decision
    record = QCReview(series_id=row.id, project_id=row.project_id, reviewer=actor.user, decision=decision,
                      reason=reason, comment=comment, source="reviewer")
    db.add(record)
    db.flush()
    audit(db, actor, "qc.review", "series", row.id, decision=decision, previous=before,
          fields=[name for name, text in (("reason", reason), ("comment", comment)) if text])
    _refresh_library(db, row)
    return record


# --------------------------------------------------------------------------------------------------------------
# What enters processing
# --------------------------------------------------------------------------------------------------------------

def accepted_states(db: DB, project_id: int, cfg: QCSection | None = None) -> list[str]:
    """The QC states whose series of the project enter processing: the owners' choice, else ``qc.usable``."""
    policy = db.get(QCPolicy, project_id)
    if policy is not None:
        return list(policy.accept)
    return list((cfg or get_config().qc).usable)


def set_policy(db: DB, actor: Actor, project: int | str | Project, accept: Iterable[str]) -> QCPolicy:
    """Choose which QC states of the project's series enter processing (e.g. ``["pass"]`` to leave caveats
    out); needs ``manage`` (a project owner). ValidationError for an unknown state or an empty choice."""
    proj = permissions.require(db, actor, project, Action.manage)
    states = sorted(set(accept), key=DECISIONS.index) if set(accept) <= set(DECISIONS) else None
    if not states:
        raise ValidationError(f"choose one or more of {', '.join(DECISIONS)}")
    policy = db.get(QCPolicy, proj.id)
    before = list(policy.accept) if policy else None
    if policy is None:
        policy = QCPolicy(project_id=proj.id, accept=states, updated_by=actor.user)
        db.add(policy)
    else:
        policy.accept, policy.updated_by = states, actor.user
    db.flush()
    audit(db, actor, "qc.policy", "project", proj.code, accept=states, previous=before)
    return policy


def usable_series(db: DB, actor: Actor, project: int | str | Project, cfg: QCSection | None = None,
                  **filters: Any) -> list[Series]:
    """The project's series that enter processing now (their QC state is one the project accepts), by id;
    ``filters`` as ``permissions.list_series`` (datatype, suffix, ...). Needs ``read``."""
    proj = permissions.require(db, actor, project, Action.read)
    return _all_series(db, actor, proj.id, qc_status=accepted_states(db, proj.id, cfg), **filters)


def _all_series(db: DB, actor: Actor, project_id: int, **filters: Any) -> list[Series]:
    """Every page of ``permissions.list_series`` for one project, by id."""
    out: list[Series] = []
    page = 1
    while True:
        chunk = permissions.list_series(db, actor, project=project_id, page=page,
                                        page_size=permissions.MAX_PAGE_SIZE, **filters)
        out += chunk.items
        if not chunk.has_more:
            return out
        page += 1


# --------------------------------------------------------------------------------------------------------------
# The review queue (what the dashboard shows)
# --------------------------------------------------------------------------------------------------------------

def outlier_flags(values: Mapping[int, float], iqr_factor: float) -> dict[int, str]:
    """Tukey's fences over one index of a group of series: ``high``/``low`` for values more than
    ``iqr_factor`` IQRs beyond the quartiles. Fewer than 4 values: no flags (no quartiles worth the name)."""
    if len(values) < 4:
        return {}
    q1, _, q3 = quantiles(values.values(), n=4, method="inclusive")
    spread = q3 - q1
    low, high = q1 - iqr_factor * spread, q3 + iqr_factor * spread
    return {sid: ("high" if v > high else "low") for sid, v in values.items() if v > high or v < low}


#: Words in a TSV's name that mark per-volume motion (MRIQC ``*_timeseries.tsv``, fMRIPrep ``*_desc-confounds_*``).
MOTION_TSV_WORDS = ("motion", "confounds", "timeseries")


def _is_motion_tsv(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    return name.endswith(".tsv") and any(word in name for word in MOTION_TSV_WORDS)


def _motion_files(db: DB, series: list[Series]) -> dict[int, int]:
    """Per series, the newest per-volume motion TSV (FD/DVARS): a derivative file of its session whose
    derivative lists the series among its inputs (provenance), else a motion TSV recorded with the series."""
    out: dict[int, int] = {}
    if not series:
        return out
    by_session: dict[int, list[tuple[int, str, list[Any]]]] = {}
    for fid, relpath, session_id, inputs in db.execute(
            select(DataFile.id, DataFile.relpath, Derivative.session_id, Derivative.inputs)
            .join(Derivative, DataFile.derivative_id == Derivative.id)
            .where(Derivative.session_id.in_({s.session_id for s in series}), DataFile.relpath.endswith(".tsv"))
            .order_by(DataFile.id.desc())):
        if _is_motion_tsv(relpath):
            by_session.setdefault(session_id, []).append((fid, relpath, list(inputs or [])))
    for s in series:
        found = next((fid for fid, _, inputs in by_session.get(s.session_id, []) if s.id in inputs), None)
        if found is not None:
            out[s.id] = found
    for f in db.scalars(select(DataFile).where(DataFile.series_id.in_([s.id for s in series if s.id not in out]),
                                               DataFile.relpath.endswith(".tsv")).order_by(DataFile.id.desc())):
        if _is_motion_tsv(f.relpath):
            out.setdefault(f.series_id, f.id)  # type: ignore[arg-type]
    return out


def queue(db: DB, actor: Actor, project: int | str | Project, cfg: QCSection | None = None) -> dict[str, Any]:
    """Everything the review dashboard shows for a project the actor may read: each series with its
    participant and session labels, state, current indices, flags (threshold ``fail``/``review`` band and group
    outliers ``high``/``low`` per suffix), its current decision record and motion TSV file id; the project's
    accepted states; whether the actor may rate its series."""
    cfg = cfg or get_config().qc
    proj = permissions.require(db, actor, project, Action.read)
    series = [s for s in _all_series(db, actor, proj.id) if s.datatype != "sourcedata"]
    indices = current_indices(db, [s.id for s in series])
    site_rules = rules(cfg)
    flags: dict[int, dict[str, str]] = {s.id: {} for s in series}
    for suffix in {s.suffix for s in series}:
        group = [s for s in series if s.suffix == suffix]
        for name in {n for s in group for n in indices[s.id]}:
            for sid, flag in outlier_flags({s.id: indices[s.id][name] for s in group if name in indices[s.id]},
                                           cfg.outlier_iqr).items():
                flags[sid][name] = flag
        for rule in (r for r in site_rules if r.suffix == suffix):
            for s in group:
                value = indices[s.id].get(rule.index)
                if _finite(value) and rule.fails(float(value)):  # type: ignore[arg-type]
                    flags[s.id][rule.index] = "fail"
                elif _finite(value) and not rule.passes(float(value)):  # type: ignore[arg-type]
                    flags[s.id].setdefault(rule.index, "review")
    latest = {}
    if series:
        newest = (select(func.max(QCReview.id)).where(QCReview.series_id.in_([s.id for s in series]))
                  .group_by(QCReview.series_id))
        latest = {r.series_id: r for r in db.scalars(select(QCReview).where(QCReview.id.in_(newest)))}
    motion = _motion_files(db, series)
    items = []
    for s in series:
        ses = s.session
        last = latest.get(s.id)
        items.append({
            "id": s.id, "participant": ses.participant.label, "session": ses.label, "datatype": s.datatype,
            "suffix": s.suffix, "entities": dict(s.entities or {}), "qc_status": s.qc_status,
            "indices": indices[s.id], "flags": flags[s.id], "motion_file": motion.get(s.id),
            "review": None if last is None else {
                "reviewer": last.reviewer, "decision": last.decision, "reason": last.reason,
                "comment": last.comment, "source": last.source, "at": last.at.isoformat() if last.at else None},
        })
    return {"project": proj.code, "accept": accepted_states(db, proj.id, cfg),
            "can_review": permissions.may_review(db, actor, proj), "items": items,
            "thresholds": [{"suffix": r.suffix, "index": r.index, "better": r.better, "pass": r.pass_at,
                            "fail": r.fail_at} for r in site_rules]}


__all__ = ["AUTO_REVIEWER", "PROTOCOL_REVIEWER", "DECISIONS", "flag", "Rule", "rules", "automatic", "record_indices", "current_indices",
           "last_review", "apply_thresholds", "review", "accepted_states", "set_policy", "usable_series",
           "outlier_flags", "queue"]
