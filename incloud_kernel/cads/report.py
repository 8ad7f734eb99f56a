"""One participant's CADS report: abnormal regions (normative z-scores, centiles, flags) and diagnostic probabilities.

``build(site, db, actor, series)`` checks that the actor may read the series (any role in its project: a clinician
who is a collaborator gets the report), reads the scan's features through the library's query API with the
actor's own rights, and applies a registered model version (the current one unless ``model=`` names another:
that is how an old report is reproduced). The report is a plain dict (JSON for the API and the dashboard, the
PDF is drawn from it) that always names the model version, the model's validated performance, the number of
flags expected by chance, every warning, and the statement that it supports and does not replace clinical
judgement.

Must never: answer for a series the actor may not read (a series that does not exist and one the actor may not
see give the same PermissionDenied, so probing ids reveals nothing), contain an identity (pseudonym, labels and
numbers only; no dates of birth, names or record numbers), or present a probability without its uncertainty.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import Participant, Project
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.cads import data, registry
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError

STATEMENT = ("This report supports and does not replace clinical judgement. Its probabilities come from a "
             "statistical model trained on research data; they are not a diagnosis.")
#: Default |z| beyond which a region is flagged.
THRESHOLD = 2.0


def _series(db: DB, actor: Actor, series: int) -> Any:
    if isinstance(series, bool) or not isinstance(series, int) or series < 1:
        raise ValidationError("a series is given by its number")
    try:
        return permissions.get_series(db, actor, series)
    except NotFound:
        raise PermissionDenied(f"no CADS report you may open for series {series}") from None


def scan_frame(site: Any, db: DB, actor: Actor, series: int) -> tuple[Any, Any]:
    """(the series row, its one-row CADS frame read from the library with the actor's rights)."""
    row = _series(db, actor, series)
    session = row.session
    participant = db.get(Participant, session.participant_id)
    project = db.get(Project, row.project_id)
    assert participant is not None and project is not None
    from incloud_kernel.library import query

    result = query.search(site, db, actor, limit=None, project=project.code, participant=participant.label,
                          session=session.label)
    wide = result.frame("wide")
    wide = wide[wide["series"].astype(int) == row.id] if not wide.empty else wide
    if wide.empty:
        raise ValidationError(f"series {row.id} has no features in the library yet (run the feature pipeline)")
    return row, data.wide_to_frame(wide.head(1))


def available(site: Any, db: DB, actor: Actor, limit: int = 2000) -> list[dict[str, Any]]:
    """The scans with features in the library whose report the actor may open (projects it is a member of; a
    feature grant alone lists features, not reports): series, pseudonym, project, session, QC state."""
    from sqlalchemy import select

    from incloud_kernel.library.query import Library

    codes = sorted(db.scalars(select(Project.code).where(Project.id.in_(permissions.visible_project_ids(actor)))))
    scans = Library.of(site).scans(codes, {}, limit)
    return [{"series": int(r.series), "pseudonym": r.participant, "project": r.project, "session": r.session,
             "qc": r.qc} for r in scans.drop_duplicates("series").itertuples()]


def _digest(frame: Any, features: list[str]) -> str:
    values = [None if v != v else round(float(v), 9) for v in frame.iloc[0].reindex(features).tolist()]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def build(site: Any, db: DB, actor: Actor, series: int, *, model: int | None = None,
          threshold: float = THRESHOLD) -> dict[str, Any]:
    """The report of ``series`` by model version ``model`` (default: the current one). Audited
    ``cads.report`` (series and model version; the caller commits)."""
    from incloud_kernel.archive.projects import audit

    row, frame = scan_frame(site, db, actor, series)
    version = registry.get(db, model)
    fitted = registry.load(version)
    dev = fitted.normative_.deviations(frame, threshold)
    index = frame.index[0]
    table = dev.table(index)
    regions = [{"feature": name, "z": None if r.z != r.z else round(float(r.z), 3),
                "centile": None if r.centile != r.centile else round(float(r.centile), 2),
                "flag": bool(r.flag)} for name, r in table.iterrows()]
    prediction = fitted.predict(frame)[0]
    session = row.session
    participant = db.get(Participant, session.participant_id)
    project = db.get(Project, row.project_id)
    assert participant is not None and project is not None
    scan = frame.iloc[0]
    report = {
        "series": row.id, "pseudonym": participant.label, "project": project.code, "session": session.label,
        "scan": {"modality": row.modality, "datatype": row.datatype, "suffix": row.suffix,
                 "scanner": str(scan["site"]), "age": None if scan["age"] != scan["age"] else float(scan["age"]),
                 "sex": scan.get("sex"), "qc": row.qc_status,
                 "pipeline": f"{scan.get('pipeline')}-{scan.get('version')}"},
        "threshold": dev.threshold,
        "regions": regions,
        "flagged": [r for r in regions if r["flag"]],
        "expected_false_flags": round(dev.expected_false_flags, 2),
        "n_features": len(regions),
        "probabilities": [{"category": c, "probability": round(prediction.probability[c], 4),
                           "low": round(prediction.low[c], 4), "high": round(prediction.high[c], 4)}
                          for c in sorted(prediction.probability, key=prediction.probability.get, reverse=True)],
        "uncertainty": "range of the probabilities over the calibration folds' models",
        "warnings": list(prediction.warnings),
        "model": {"version": version.version, "status": version.status, "kind": version.kind,
                  "trained_on": len(version.training_series),
                  "training_projects": _training_projects(db, actor, version.training_series),
                  "note": version.metrics.get("note", ""), "created_at":
                  version.created_at.isoformat() if version.created_at else None,
                  "validated": _validated(version.metrics)},
        "input_sha256": _digest(frame, fitted.normative_.features_),
        "statement": STATEMENT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if row.qc_status != "pass":
        report["warnings"].insert(0, f"the scan's QC status is {row.qc_status}, not pass")
    audit(db, actor, "cads.report", "series", row.id, model_version=version.version)
    return report


def _training_projects(db: DB, actor: Actor, series: list[Any]) -> list[dict[str, Any]]:
    """Which projects the model learnt from, with their names and scan counts, so a reader sees what the model
    was trained on. Only projects the reader may see are named (a project one is not in "does not exist" for
    one, as everywhere else); the others' scans are counted together under code None."""
    from sqlalchemy import func, select

    from incloud_kernel.archive.models import Series

    visible = set(db.scalars(permissions.visible_project_ids(actor)))
    rows = db.execute(select(Project.id, Project.code, Project.name, func.count(Series.id))
                      .join(Series, Series.project_id == Project.id)
                      .where(Series.id.in_([int(s) for s in series]))
                      .group_by(Project.id, Project.code, Project.name).order_by(Project.code)).all()
    named = [{"code": code, "name": name, "scans": int(n)} for pid, code, name, n in rows if pid in visible]
    hidden = sum(int(n) for pid, _, _, n in rows if pid not in visible)
    return named + ([{"code": None, "name": "", "scans": hidden}] if hidden else [])


def _validated(metrics: dict[str, Any]) -> dict[str, Any]:
    """The performance to print: held-out and leave-site-out metrics (rounded)."""
    def pick(m: dict[str, Any] | None) -> dict[str, Any] | None:
        if not m:
            return None
        return {k: (round(m[k], 3) if isinstance(m.get(k), float) else m.get(k))
                for k in ("balanced_accuracy", "auc", "brier", "calibration_error", "chance", "n")}

    lso = metrics.get("leave_site_out") or {}
    return {"heldout": pick(metrics.get("heldout")), "leave_site_out": pick(lso.get("pooled"))}


__all__ = ["STATEMENT", "THRESHOLD", "available", "build", "scan_frame"]
