"""Training and report data for CADS, read from the feature library through its query API (never its files).

``library_frame(site, db, actor, criteria)`` runs ``library.query.search`` (the actor's own rights: a console
lists everything, a user only what they may list) and returns one row per scan in the library's wide shape
(``atlas/feature/region`` columns) with the covariates CADS needs: ``age``, ``sex``, ``site`` (the scanner) and
``label`` (the diagnosis code; scans with several codes are ``ambiguous`` and never trained on).

``heldout(frame)`` is the fixed held-out rule: a participant is held out when the SHA-256 of its project and
label falls in the first fifth. The rule never changes, so however much the library grows, a participant once
held out stays held out, every candidate and the current model are compared on the same held-out scans, and no
model ever trained on one of them. Must never: read Parquet directly, or put a value of the frame into an error.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import pandas as pd

from incloud_kernel.errors import ValidationError

#: Criteria a retraining uses unless told otherwise: scans that passed QC.
DEFAULT_CRITERIA: dict[str, Any] = {"qc": "pass"}
AMBIGUOUS = "ambiguous"
#: One participant in HELDOUT_EVERY is held out.
HELDOUT_EVERY = 5


def _label(code: Any) -> str:
    codes = [c for c in str(code or "").split(";") if c]
    return codes[0] if len(codes) == 1 else AMBIGUOUS


def wide_to_frame(wide: pd.DataFrame) -> pd.DataFrame:
    """The library's wide table with CADS's covariate names: ``site`` (scanner) and ``label`` added."""
    frame = wide.rename(columns={"scanner": "site"}).copy()
    frame["site"] = frame["site"].fillna("unknown scanner").astype(str)
    frame["label"] = [_label(d) for d in frame["diagnosis"]]
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    return frame.reset_index(drop=True)


def library_frame(site: Any, db: Any, actor: Any, criteria: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every scan the actor may list that matches ``criteria`` (default ``DEFAULT_CRITERIA``), one row each."""
    from incloud_kernel.library import query

    criteria = dict(DEFAULT_CRITERIA if criteria is None else criteria)
    result = query.search(site, db, actor, limit=None, **criteria)
    wide = result.frame("wide")
    if wide.empty:
        raise ValidationError("the library has no scans matching the training query")
    return wide_to_frame(wide)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c.count("/") == 2)


def heldout(frame: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the held-out scans (by project and participant, fixed forever)."""
    projects = frame["project"] if "project" in frame.columns else pd.Series("", index=frame.index)
    keys = (projects.astype(str) + "/" + frame["participant"].astype(str)).to_numpy()
    return np.array([int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) % HELDOUT_EVERY == 0 for k in keys],
                    dtype=bool)


__all__ = ["DEFAULT_CRITERIA", "AMBIGUOUS", "library_frame", "wide_to_frame", "feature_columns", "heldout"]
