"""Normative models of brain features: the healthy-control distribution of each region's value given age, sex and site.

``NormativeModel().fit(controls)`` fits, per feature column, a Bayesian linear regression (scikit-learn's
``BayesianRidge``) on a cubic B-spline basis of age (``SplineTransformer``), sex, and the site as a batch effect
(one indicator per training site, shrunk by the ridge prior), with a second regression of the log squared residual
on the same basis so the spread may change with age (heteroscedastic noise). ``transform(frame)`` gives each
scan's z-score (observed minus predicted mean, over the predictive standard deviation, which includes the
uncertainty of the coefficients) and ``deviations`` the centiles and flags beyond ``threshold``.

Why a flag count is printed with its expectation: with 116 regions and |z| > 2, a perfectly healthy person gets
about 5 flags by chance (``expected_false_flags``); a report that hides that overclaims.

Must never: use anything but healthy controls to fit (the caller chooses them; ``fit`` refuses too few rows),
or silently invent a site effect for a site it never saw (unseen sites get no site term and ``unseen_sites``
says so). Harmonisation plugs in as ``harmonise=``: an object with ``fit_transform`` / ``transform`` over
(features, covariates) applied before the regression. The library's ComBat is one
(``incloud_kernel.library.combat.SiteHarmoniser``, made by ``harmoniser("combat")``): it removes each site's
additive and multiplicative bias keeping age and sex, so the regression then needs no site term
(``site_term=False``); ``harmoniser("site")`` is the site-as-covariate model alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd

from incloud_kernel.errors import ValidationError

#: Covariate columns a frame given to the model must hold.
COVARIATES = ("age", "sex", "site")
#: Fewest controls per feature the model fits on (fewer gives centiles that mean nothing).
MIN_CONTROLS = 20
#: The ways a model handles scanner differences: ComBat before the regression, or the site as a regression term.
HARMONISERS = ("combat", "site")


class Harmoniser(Protocol):
    """What ``harmonise=`` expects (the library's ComBat is one): features in, features out, same shape."""

    def fit_transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame: ...

    def transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame: ...


def harmoniser(name: str) -> NormativeModel:
    """An unfitted normative model harmonising by ``name`` (one of ``HARMONISERS``): ``combat`` (the library's
    ComBat fitted on the training controls, site as batch, age and sex protected; a scan of an unseen site is
    left uncorrected and said so) or ``site`` (the site as a term of the regression)."""
    if name == "site":
        return NormativeModel()
    if name == "combat":
        from incloud_kernel.library.combat import SiteHarmoniser

        return NormativeModel(harmonise=SiteHarmoniser(), site_term=False)
    raise ValidationError(f"harmonise must be one of {', '.join(HARMONISERS)}")


def describe_harmonisation(model: NormativeModel) -> dict[str, Any]:
    """What a model version records about how it handled scanners (``registry`` stores it with the version)."""
    hook = model.harmonise
    if hook is None:
        return {"method": "site" if model.site_term else "none", "sites": list(getattr(model, "sites_", []))}
    describe = getattr(hook, "describe", None)
    return dict(describe()) if callable(describe) else {"method": type(hook).__name__}


def expected_false_flags(n_regions: int, threshold: float) -> float:
    """Flags expected by chance in ``n_regions`` independent regions of a healthy person (two-sided normal tail)."""
    return float(n_regions * math.erfc(threshold / math.sqrt(2)))


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


@dataclass
class Deviations:
    """Per scan and feature: ``z``, ``centile`` (0-100) and ``flag`` (|z| > threshold) as frames indexed like the
    input, with the threshold and the expected number of chance flags per scan."""

    z: pd.DataFrame
    centile: pd.DataFrame
    flag: pd.DataFrame
    threshold: float
    expected_false_flags: float

    def table(self, row: Any) -> pd.DataFrame:
        """One scan's features (rows) with z, centile and flag, the most deviant first."""
        out = pd.DataFrame({"z": self.z.loc[row], "centile": self.centile.loc[row], "flag": self.flag.loc[row]})
        out.index.name = "feature"
        return out.reindex(out["z"].abs().sort_values(ascending=False).index)


class NormativeModel:
    """Bayesian linear regression per feature on B-spline(age) + sex + site; scikit-learn style (fit/transform).

    ``knots`` and ``degree`` shape the age spline; ``heteroscedastic`` models the spread as a function of the
    covariates too; ``threshold`` is |z| beyond which a region is flagged; ``site_term`` puts the site into the
    regression (False when ``harmonise`` removes site effects before it)."""

    def __init__(self, knots: int = 5, degree: int = 3, heteroscedastic: bool = True, threshold: float = 2.0,
                 harmonise: Harmoniser | None = None, site_term: bool = True) -> None:
        self.knots = knots
        self.degree = degree
        self.heteroscedastic = heteroscedastic
        self.threshold = threshold
        self.harmonise = harmonise
        self.site_term = site_term

    # -- design ---------------------------------------------------------------------------------------------
    def _check(self, frame: pd.DataFrame, fitting: bool) -> None:
        missing = [c for c in COVARIATES if c not in frame.columns]
        if missing:
            raise ValidationError(f"the normative model needs the column {missing[0]}")
        if frame["age"].isna().any():
            raise ValidationError("the normative model needs an age for every scan")
        if fitting and len(frame) < MIN_CONTROLS:
            raise ValidationError(f"the normative model needs at least {MIN_CONTROLS} healthy controls, "
                                  f"got {len(frame)}")

    def _design(self, frame: pd.DataFrame) -> np.ndarray:
        spline = self.spline_.transform(frame[["age"]].to_numpy(float))
        sex = (frame["sex"].astype(str).to_numpy() == "F").astype(float)[:, None]
        sites = frame["site"].astype(str).to_numpy()
        if not getattr(self, "site_term", True):  # models saved before site_term had the site term
            return np.hstack([spline, sex])
        onehot = (sites[:, None] == np.asarray(self.sites_)[None, :]).astype(float)
        return np.hstack([spline, sex, onehot])

    # -- fit / transform ------------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, features: Sequence[str] | None = None) -> NormativeModel:
        """Fit on healthy controls: ``frame`` holds ``COVARIATES`` and the feature columns (``features``, default
        every numeric column that is not a covariate)."""
        from sklearn.linear_model import BayesianRidge
        from sklearn.preprocessing import SplineTransformer

        self._check(frame, fitting=True)
        self.features_ = list(features) if features is not None else [
            c for c in frame.columns if c not in COVARIATES and pd.api.types.is_numeric_dtype(frame[c])]
        if not self.features_:
            raise ValidationError("the normative model got no feature columns")
        values = frame[self.features_].astype(float)
        if self.harmonise is not None:
            values = self.harmonise.fit_transform(values, frame[list(COVARIATES)])
        ages = frame[["age"]].to_numpy(float)
        self.age_range_ = (float(ages.min()), float(ages.max()))
        self.spline_ = SplineTransformer(n_knots=self.knots, degree=self.degree, extrapolation="linear",
                                         include_bias=False).fit(ages)
        self.sites_ = sorted(frame["site"].astype(str).unique())
        design = self._design(frame)
        self.mean_models_: dict[str, Any] = {}
        self.spread_models_: dict[str, Any] = {}
        self.spread_scale_: dict[str, float] = {}
        for name in self.features_:
            y = values[name].to_numpy(float)
            ok = np.isfinite(y)
            if ok.sum() < MIN_CONTROLS:
                raise ValidationError(f"feature {name} has fewer than {MIN_CONTROLS} values among the controls")
            mean = BayesianRidge().fit(design[ok], y[ok])
            self.mean_models_[name] = mean
            if self.heteroscedastic:
                resid = y[ok] - mean.predict(design[ok])
                logvar = np.log(resid ** 2 + 1e-12 * max(np.var(y[ok]), 1e-300))
                spread = BayesianRidge().fit(design[ok], logvar)
                # E[log chi2_1] = -1.27: the fitted log squared residual is biased low; rescale so that the
                # training z-scores have unit variance (a moment correction, not a free parameter per scan).
                var = np.exp(spread.predict(design[ok]))
                self.spread_scale_[name] = float(np.mean(resid ** 2 / var))
                self.spread_models_[name] = spread
        return self

    def predict(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predicted mean, predictive standard deviation) per scan and feature."""
        self._check(frame, fitting=False)
        design = self._design(frame)
        means, sds = {}, {}
        for name in self.features_:
            mean_model = self.mean_models_[name]
            mu, sd_total = mean_model.predict(design, return_std=True)
            if self.heteroscedastic:
                noise_var = np.exp(self.spread_models_[name].predict(design)) * self.spread_scale_[name]
                param_var = np.maximum(sd_total ** 2 - 1.0 / mean_model.alpha_, 0.0)
                sd = np.sqrt(noise_var + param_var)
            else:
                sd = sd_total
            means[name], sds[name] = mu, sd
        return pd.DataFrame(means, index=frame.index), pd.DataFrame(sds, index=frame.index)

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """z-scores per scan and feature (NaN where the scan lacks the value or the whole column)."""
        values = frame.reindex(columns=self.features_).astype(float)
        if self.harmonise is not None:
            values = self.harmonise.transform(values, frame[list(COVARIATES)])
        mu, sd = self.predict(frame)
        return (values - mu) / sd

    def fit_transform(self, frame: pd.DataFrame, features: Sequence[str] | None = None) -> pd.DataFrame:
        return self.fit(frame, features).transform(frame)

    def unseen_sites(self, frame: pd.DataFrame) -> list[str]:
        """Sites in ``frame`` the model was not fitted on: their scans get no site term (say so in a report)."""
        return sorted(set(frame["site"].astype(str)) - set(self.sites_))

    def deviations(self, frame: pd.DataFrame, threshold: float | None = None) -> Deviations:
        """z, centile and flag per scan and feature, with the chance-flag expectation."""
        threshold = self.threshold if threshold is None else float(threshold)
        if not threshold > 0:
            raise ValidationError("the flag threshold must be a positive number of standard deviations")
        z = self.transform(frame)
        centile = pd.DataFrame(100 * _normal_cdf(z.to_numpy()), index=z.index, columns=z.columns)
        return Deviations(z=z, centile=centile, flag=z.abs() > threshold, threshold=threshold,
                          expected_false_flags=expected_false_flags(len(self.features_), threshold))


__all__ = ["COVARIATES", "HARMONISERS", "MIN_CONTROLS", "Deviations", "Harmoniser", "NormativeModel",
           "describe_harmonisation", "expected_false_flags", "harmoniser"]
