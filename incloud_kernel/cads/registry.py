"""The CADS model registry: versioned models on disk (joblib) and in the database (``cads_model``), and retraining.

``retrain(site, db, actor, criteria)`` reads the library (``data.library_frame``), splits off the fixed held-out
participants (``data.heldout``), fits a candidate on the rest, validates it leave-site-out, and scores it and the
current model on the *same* held-out scans. The candidate is promoted only when none of balanced accuracy, AUC,
Brier score and calibration error is worse than the current model's by more than ``tolerance`` (and, for the
first model, when its balanced accuracy beats chance by ``min_gain``); otherwise it is kept as ``refused`` with
the reason. Every version records its training snapshot (the query and the series ids), code and library
versions and metrics; its joblib file's SHA-256 is checked at every load.

Must never: delete or overwrite a model file (old reports name their version and must stay reproducible), load
a file whose checksum differs, or let anyone but a site administrator retrain (training reads every project's
features).
"""
from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import CadsModel
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.cads import data
from incloud_kernel.cads.classifier import DEFAULT_HARMONISE, DiagnosticModel, leave_site_out
from incloud_kernel.cads.normative import describe_harmonisation
from incloud_kernel.cads.metrics import not_worse
from incloud_kernel.errors import NotFound, PermissionDenied, StorageError, ValidationError

#: Largest tolerated loss on any metric when a candidate replaces the current model.
TOLERANCE = 0.02
#: The first model must beat chance balanced accuracy by this much on the held-out scans.
MIN_GAIN = 0.10
LIBRARIES = ("numpy", "scipy", "scikit-learn", "pandas", "joblib")


def models_dir(site: Any) -> Path:
    """``$INCLOUD_HOME/cads/models``, 0700."""
    from incloud_kernel.site import private_dir

    config = getattr(site, "config", site)
    return private_dir(Path(config.home) / "cads" / "models")


def libraries() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[name] = "absent"
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(site: Any, model: DiagnosticModel, version: int) -> tuple[Path, str]:
    """Write ``model`` as ``v<version>.joblib`` (atomically; refuses to overwrite). Returns (path, sha256)."""
    import joblib

    from incloud_kernel.archive.storage import replacing

    path = models_dir(site) / f"v{version}.joblib"
    if path.exists():
        raise StorageError(f"model file v{version}.joblib exists already; model files are never overwritten")
    with replacing(path) as tmp:
        joblib.dump(model, tmp, compress=3)
    return path, _sha256(path)


#: path -> (sha256, (size, mtime_ns), model): a process loads a version once; a changed file is checked again.
_LOADED: dict[str, tuple[str, tuple[int, int], DiagnosticModel]] = {}


def load(row: CadsModel) -> DiagnosticModel:
    """The fitted model of a version, after checking its file's SHA-256 (once per process while the file's size
    and modification time stay the same)."""
    import joblib

    path = Path(row.path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise StorageError(f"the file of model version {row.version} is missing") from None
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _LOADED.get(str(path))
    if cached is not None and cached[0] == row.sha256 and cached[1] == key:
        return cached[2]
    if _sha256(path) != row.sha256:
        raise StorageError(f"the file of model version {row.version} does not match its checksum; not loaded")
    model = joblib.load(path)
    _LOADED[str(path)] = (row.sha256, key, model)
    return model


def current(db: DB) -> CadsModel | None:
    return db.scalars(select(CadsModel).where(CadsModel.status == "current")).one_or_none()


def get(db: DB, version: int | None = None) -> CadsModel:
    """Model ``version``, or the current one."""
    if version is None:
        row = current(db)
        if row is None:
            raise NotFound("no CADS model has been trained and promoted yet (run incloud cads retrain)")
        return row
    row = db.scalars(select(CadsModel).where(CadsModel.version == int(version))).one_or_none()
    if row is None:
        raise NotFound(f"no CADS model version {version}")
    return row


def describe(row: CadsModel) -> dict[str, Any]:
    """What anyone may see of a version: no series ids (the snapshot stays on the server)."""
    return {"version": row.version, "status": row.status, "kind": row.kind, "query": row.query,
            "classes": row.classes, "harmoniser": (row.metrics or {}).get("harmoniser"),
            "n_features": len(row.features), "n_training": len(row.training_series),
            "n_heldout": len(row.heldout_series), "metrics": row.metrics, "decision": row.decision,
            "code_version": row.code_version, "libraries": row.libraries,
            "created_by": row.created_by, "created_at": row.created_at.isoformat() if row.created_at else None,
            "promoted_at": row.promoted_at.isoformat() if row.promoted_at else None}


def list_models(db: DB) -> list[dict[str, Any]]:
    return [describe(r) for r in db.scalars(select(CadsModel).order_by(CadsModel.version))]


@dataclass
class Retraining:
    """The outcome of one retraining: the candidate's version, whether it was promoted, why, and the time."""

    version: int
    promoted: bool
    decision: str
    metrics: dict[str, Any]
    seconds: float


def _decide(candidate: dict[str, float], incumbent: dict[str, float] | None, tolerance: float,
            min_gain: float) -> tuple[bool, str]:
    gain = candidate["balanced_accuracy"] - candidate["chance"]
    if not gain >= min_gain:
        return False, (f"refused: held-out balanced accuracy {candidate['balanced_accuracy']:.3f} is not "
                       f"{min_gain:.2f} above chance ({candidate['chance']:.3f})")
    if incumbent is None:
        return True, f"promoted: first model, held-out balanced accuracy {candidate['balanced_accuracy']:.3f}"
    worse = not_worse(candidate, incumbent, tolerance)
    if worse:
        detail = ", ".join(f"{m} {candidate[m]:.3f} vs {incumbent[m]:.3f}" for m in worse)
        return False, f"refused: worse than the current model on the same held-out scans ({detail})"
    return True, (f"promoted: not worse on the same held-out scans (balanced accuracy "
                  f"{candidate['balanced_accuracy']:.3f} vs {incumbent['balanced_accuracy']:.3f}, Brier "
                  f"{candidate['brier']:.3f} vs {incumbent['brier']:.3f})")


def retrain(site: Any, db: DB, actor: Actor, criteria: Mapping[str, Any] | None = None, *,
            frame: pd.DataFrame | None = None, kind: str = "ensemble", tolerance: float = TOLERANCE,
            min_gain: float = MIN_GAIN, validate: bool = True, seed: int = 0,
            harmonise: str = DEFAULT_HARMONISE, note: str = "") -> Retraining:
    """Train a candidate on the library (or on ``frame``, same columns as ``data.library_frame``), compare it
    with the current model on the same held-out scans, and promote or refuse it. ``harmonise``: ``combat`` or
    ``site`` (``normative.HARMONISERS``), recorded with the version (``metrics["harmoniser"]``, shown by
    ``describe`` as ``harmoniser``). ``note``: what every report by this model tells its reader about the training
data (e.g. that it is a synthetic demonstration cohort), recorded as ``metrics["note"]``. The caller commits."""
    from incloud_kernel import __version__
    from incloud_kernel.archive.projects import audit
    from incloud_kernel.library.store import generation, library_root

    if not actor.site_admin:
        raise PermissionDenied("only a site administrator retrains CADS models (training reads every project)")
    if not 0 <= tolerance < 1:
        raise ValidationError("tolerance must be between 0 and 1")
    started = time.perf_counter()
    query = dict(data.DEFAULT_CRITERIA if criteria is None else criteria)
    if frame is None:
        frame = data.library_frame(site, db, actor, query)
    frame = frame[frame["label"] != data.AMBIGUOUS].reset_index(drop=True)
    held = data.heldout(frame)
    train, test = frame[~held], frame[held]
    if test.empty or train.empty:
        raise ValidationError("too few participants to keep a held-out set; add scans to the library")
    features = data.feature_columns(frame)
    candidate = DiagnosticModel(kind, features, seed=seed, harmonise=harmonise).fit(train, train["label"])
    metrics: dict[str, Any] = {"heldout": candidate.score(test, test["label"]),
                               "harmoniser": describe_harmonisation(candidate.normative_)}
    if validate:
        metrics["leave_site_out"] = leave_site_out(train, train["label"].to_numpy(), kind=kind, seed=seed,
                                                   features=features, harmonise=harmonise)
    if note:
        metrics["note"] = str(note)[:500]
    incumbent_row = current(db)
    incumbent = None
    if incumbent_row is not None:
        incumbent = load(incumbent_row).score(test, test["label"])
        metrics["current_on_heldout"] = {"version": incumbent_row.version, **incumbent}
    promoted, decision = _decide(metrics["heldout"], incumbent, tolerance, min_gain)
    version = int(db.scalar(select(func.coalesce(func.max(CadsModel.version), 0)))) + 1
    path, digest = save(site, candidate, version)
    now = datetime.now(timezone.utc)
    series = lambda part: [int(s) for s in part["series"]] if "series" in part.columns else []  # noqa: E731
    row = CadsModel(version=version, status="current" if promoted else "refused", kind=kind, query=query,
                    training_series=series(train), heldout_series=series(test), classes=candidate.classes_,
                    features=features, metrics=_jsonable(metrics), decision=decision[:512],
                    code_version=__version__, library_generation=generation(library_root(site)),
                    libraries=libraries(), path=str(path), sha256=digest, created_by=actor.user,
                    created_at=now, promoted_at=now if promoted else None)
    if promoted and incumbent_row is not None:
        incumbent_row.status = "retired"
    db.add(row)
    db.flush()
    audit(db, actor, "cads.retrain", "cads_model", version, promoted=promoted, n_training=len(train),
          n_heldout=len(test))
    return Retraining(version, promoted, decision, row.metrics, time.perf_counter() - started)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


__all__ = ["TOLERANCE", "MIN_GAIN", "Retraining", "retrain", "current", "get", "load", "save", "describe",
           "list_models", "models_dir", "libraries"]
