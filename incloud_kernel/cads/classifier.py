"""The diagnostic classifier: normative z-scores in, calibrated probabilities per diagnostic category out.

``DiagnosticModel(kind="ensemble").fit(frame, labels)`` fits, on the training scans,

1. the normative model (``normative.NormativeModel``) on the training healthy controls only, which turns every
   feature into a deviation from what age, sex and site predict (the harmonisation step, ``harmonise=``:
   ``"site"``, the default, is the site as a term of the regression; ``"combat"`` is the library's ComBat fitted
   on the training controls with the site as batch and age and sex protected);
2. a scikit-learn pipeline on those z-scores: median imputation, scaling, and a linear model (multinomial
   logistic regression), a tree ensemble (random forest) or both (soft vote), wrapped in
   ``CalibratedClassifierCV`` so the probabilities are calibrated on data the model did not fit;
3. an "outside the training distribution" detector: the Mahalanobis distance (Ledoit-Wolf covariance) of a scan's
   z-scores from the training scans, warned beyond the 99.5th centile of the training scans' out-of-fold
   distances, and ages or sites the training data did not cover.

``leave_site_out(frame, labels)`` validates the whole recipe site by site (each site's scans predicted by a model
fitted without that site, the normative part included). Probabilities come with the range over the calibration
folds' models, an honest if partial uncertainty. Must never: fit the normative part on patients, report a
probability without its model, or hide that a scan is unlike the training data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from incloud_kernel.cads.metrics import evaluate
from incloud_kernel.cads.normative import HARMONISERS, NormativeModel, harmoniser
from incloud_kernel.errors import ValidationError

KINDS = ("linear", "forest", "ensemble")
#: The label of healthy controls (the normative part fits on them).
CONTROL = "HC"
#: Fewest scans of a category to train on it (fewer: the category is left out and said so).
MIN_PER_CLASS = 10
OOD_CENTILE = 99.5
#: How scanner differences are handled unless told otherwise (``normative.HARMONISERS``). Not ComBat: on the
#: synthetic cohort both remove the planted site effects equally (tests/test_cads_normative.py), and the site
#: term also works for a left-out site in the same way; ComBat is the documented option (``--harmonise combat``).
DEFAULT_HARMONISE = "site"


def _estimator(kind: str, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, VotingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    linear = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                           LogisticRegression(C=0.5, max_iter=2000))
    forest = make_pipeline(SimpleImputer(strategy="median"),
                           RandomForestClassifier(n_estimators=150, min_samples_leaf=3, max_features="sqrt",
                                                  random_state=seed, n_jobs=1))
    if kind == "linear":
        return linear
    if kind == "forest":
        return forest
    return VotingClassifier([("linear", linear), ("forest", forest)], voting="soft")


@dataclass
class Prediction:
    """One scan's calibrated probabilities, their range over the calibration folds' models, and warnings."""

    probability: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    distance: float
    warnings: list[str] = field(default_factory=list)


class DiagnosticModel:
    """Normative z-scores -> scaling -> linear model and/or tree ensemble -> calibrated probabilities."""

    def __init__(self, kind: str = "ensemble", features: Sequence[str] | None = None, calibration_folds: int = 3,
                 seed: int = 0, normative: NormativeModel | None = None,
                 harmonise: str = DEFAULT_HARMONISE) -> None:
        if kind not in KINDS:
            raise ValidationError(f"kind must be one of {', '.join(KINDS)}")
        if harmonise not in HARMONISERS:
            raise ValidationError(f"harmonise must be one of {', '.join(HARMONISERS)}")
        self.harmonise = harmonise
        self.kind = kind
        self.features = list(features) if features is not None else None
        self.calibration_folds = calibration_folds
        self.seed = seed
        self.normative = normative

    def fit(self, frame: pd.DataFrame, labels: Sequence[str]) -> DiagnosticModel:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.covariance import LedoitWolf

        y = np.asarray(labels).astype(str)
        counts = pd.Series(y).value_counts()
        if CONTROL not in counts or counts[CONTROL] < MIN_PER_CLASS:
            raise ValidationError(f"training needs at least {MIN_PER_CLASS} healthy controls ({CONTROL})")
        self.classes_ = sorted(c for c, n in counts.items() if n >= MIN_PER_CLASS)
        self.left_out_ = sorted(c for c, n in counts.items() if n < MIN_PER_CLASS)
        if len(self.classes_) < 2:
            raise ValidationError("training needs at least two diagnostic categories with "
                                  f"{MIN_PER_CLASS} scans each")
        keep = np.isin(y, self.classes_)
        frame, y = frame[keep], y[keep]
        features = self.features or [c for c in frame.columns if c.count("/") == 2]
        self.normative_ = (self.normative or harmoniser(self.harmonise)).fit(frame[y == CONTROL], features)
        z = self.normative_.transform(frame).to_numpy(float)
        self.model_ = CalibratedClassifierCV(_estimator(self.kind, self.seed), method="sigmoid",
                                             cv=self.calibration_folds).fit(z, y)
        filled = np.where(np.isfinite(z), z, 0.0)
        self.ood_limit_ = self._ood_limit(filled)
        self.center_ = filled.mean(axis=0)
        self.precision_ = LedoitWolf().fit(filled).precision_
        self.n_train_ = int(len(y))
        return self

    def _ood_limit(self, filled: np.ndarray, folds: int = 5) -> float:
        """The ``OOD_CENTILE`` centile of *out-of-fold* distances: a training scan is closer to a covariance fitted
        on it than a new scan is, so in-sample distances would warn about ordinary new scans."""
        from sklearn.covariance import LedoitWolf
        from sklearn.model_selection import KFold

        distances = np.empty(len(filled))
        for fit, held in KFold(folds, shuffle=True, random_state=self.seed).split(filled):
            self.center_ = filled[fit].mean(axis=0)
            self.precision_ = LedoitWolf().fit(filled[fit]).precision_
            distances[held] = self._distance(filled[held])
        return float(np.percentile(distances, OOD_CENTILE))

    def _distance(self, z: np.ndarray) -> np.ndarray:
        d = z - self.center_
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.precision_, d))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, scans x ``classes_``."""
        return self.model_.predict_proba(self.normative_.transform(frame).to_numpy(float))

    def predict(self, frame: pd.DataFrame) -> list[Prediction]:
        """Probabilities with their range over the calibration folds' models and the out-of-distribution
        warnings, per scan."""
        z = self.normative_.transform(frame).to_numpy(float)
        proba = self.model_.predict_proba(z)
        folds = np.stack([c.predict_proba(z) for c in self.model_.calibrated_classifiers_])
        distance = self._distance(np.where(np.isfinite(z), z, 0.0))
        low, high = folds.min(axis=0), folds.max(axis=0)
        out = []
        unseen = set(self.normative_.unseen_sites(frame))
        lo_age, hi_age = self.normative_.age_range_
        for i, (_, row) in enumerate(frame.iterrows()):
            warnings = []
            if distance[i] > self.ood_limit_:
                warnings.append(f"outside the training distribution: distance {distance[i]:.1f} exceeds the "
                                f"{OOD_CENTILE:g}th centile of the training scans ({self.ood_limit_:.1f})")
            if str(row["site"]) in unseen:
                warnings.append("scanner not in the training data: no site correction was applied")
            if not lo_age <= float(row["age"]) <= hi_age:
                warnings.append(f"age {float(row['age']):.0f} outside the training range "
                                f"{lo_age:.0f}-{hi_age:.0f}")
            if np.isnan(z[i]).any():
                warnings.append(f"{int(np.isnan(z[i]).sum())} features missing (imputed)")
            out.append(Prediction({c: float(proba[i, k]) for k, c in enumerate(self.classes_)},
                                  {c: float(low[i, k]) for k, c in enumerate(self.classes_)},
                                  {c: float(high[i, k]) for k, c in enumerate(self.classes_)},
                                  float(distance[i]), warnings))
        return out

    def score(self, frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, float]:
        """The four metrics on labelled scans (scans of categories the model does not know are left out)."""
        y = np.asarray(labels).astype(str)
        keep = np.isin(y, self.classes_)
        if not keep.any():
            raise ValidationError("no scan of a category the model knows to score on")
        return evaluate(y[keep], self.predict_proba(frame[keep]), self.classes_)


def leave_site_out(frame: pd.DataFrame, labels: Sequence[str], *, kind: str = "ensemble", seed: int = 0,
                   features: Sequence[str] | None = None, harmonise: str = DEFAULT_HARMONISE) -> dict[str, Any]:
    """Leave-site-out validation: each site predicted by a model fitted on the others (normative part and
    harmonisation too: the left-out site is a scanner the model never saw, so it gets no site correction).
    Returns the pooled metrics and one entry per site."""
    y = np.asarray(labels).astype(str)
    sites = frame["site"].astype(str).to_numpy()
    if len(set(sites)) < 2:
        raise ValidationError("leave-site-out validation needs scans from at least two sites")
    truth, probas, per_site, classes = [], [], {}, None
    for site in sorted(set(sites)):
        test = sites == site
        model = DiagnosticModel(kind, features, seed=seed, harmonise=harmonise).fit(frame[~test], y[~test])
        classes = classes or model.classes_
        if model.classes_ != classes:
            raise ValidationError(f"a category has too few scans outside site {site} to validate")
        keep = test & np.isin(y, classes)
        proba = model.predict_proba(frame[keep])
        per_site[site] = evaluate(y[keep], proba, classes)
        truth.append(y[keep])
        probas.append(proba)
    pooled = evaluate(np.concatenate(truth), np.vstack(probas), classes or [])
    return {"pooled": pooled, "sites": per_site, "classes": classes}


__all__ = ["KINDS", "CONTROL", "DEFAULT_HARMONISE", "DiagnosticModel", "Prediction", "leave_site_out"]
