"""ComBat harmonisation of features across scanners (sites), as a scikit-learn style transform.

Why our own: neuroHarmonize 2.5 pins numpy < 2 (it would pull numpy 1.26 over our 2.4.6), and neuroCombat 0.2.12
(unmaintained since 2021) installs but has no usable fit/transform split: its ``neuroCombatFromTraining`` is marked
"in development" and ignores the new data's covariates. This module is the location/scale model with parametric
empirical Bayes of Johnson, Li & Rabinovic 2007 (Biostatistics 8:118) as used for imaging by Fortin et al. 2018
(NeuroImage 167:104): for feature g, sample j of batch i, ``y = alpha + X beta + gamma_i + delta_i * e``; the
batch effects gamma (additive) and delta (multiplicative) are shrunk towards their across-feature priors (normal
for gamma, inverse gamma for delta) and removed, while the covariates' effects ``X beta`` (age, diagnosis, sex:
the biology to keep) are preserved. ``tests/test_combat.py`` checks it against neuroCombat run in a separate
environment on the same data, and on planted site effects.

``fit`` learns from a reference sample; ``transform`` harmonises new samples of the batches seen in ``fit``, with
their own covariates. It never looks at identities and never writes anything; imports numpy and pandas only.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from incloud_kernel.errors import ValidationError

#: Convergence of the iterative empirical Bayes solution (largest relative change of gamma* or delta*), as in
#: the reference implementations.
CONVERGENCE = 1e-4
MAX_ITERATIONS = 1000


def _covariate_matrix(covariates: Any, n: int, columns: list[str] | None, levels: dict[str, list[Any]] | None
                      ) -> tuple[np.ndarray, list[str], dict[str, list[Any]]]:
    """Numeric columns as they are; text/categorical/boolean ones one-hot encoded without their first level (as
    neuroCombat's ``categorical_cols``). ``columns``/``levels`` from ``fit`` make ``transform`` encode alike."""
    if covariates is None:
        return np.zeros((n, 0)), [], {}
    frame = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(np.asarray(covariates))
    if len(frame) != n:
        raise ValidationError(f"covariates have {len(frame)} rows for {n} samples")
    frame = frame.reset_index(drop=True)
    names = list(frame.columns) if columns is None else columns
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValidationError(f"covariate {missing[0]!r} missing")
    levels = dict(levels or {})
    parts: list[np.ndarray] = []
    for name in names:
        column = frame[name]
        if column.isna().any():
            raise ValidationError(f"covariate {name!r} has missing values: ComBat needs complete covariates")
        if name in levels or not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            known = levels.setdefault(name, sorted(column.unique().tolist(), key=str))
            unknown = set(column.unique().tolist()) - set(known)
            if unknown:
                raise ValidationError(f"covariate {name!r} has a level not seen in fit")
            parts += [(column == level).to_numpy(float)[:, None] for level in known[1:]]
        else:
            parts.append(column.to_numpy(float)[:, None])
    return (np.hstack(parts) if parts else np.zeros((n, 0))), names, levels


def _as_matrix(X: Any) -> np.ndarray:
    data = np.asarray(X, dtype=float)
    if data.ndim != 2:
        raise ValidationError("X must be a table: samples x features")
    if not np.isfinite(data).all():
        raise ValidationError("X has missing or infinite values: ComBat needs complete data")
    return data


def _priors(gamma_hat: np.ndarray, delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per batch: the normal prior of gamma (mean, variance) and the inverse gamma prior of delta (a, b) by the
    method of moments over features (Johnson 2007, section 3.2)."""
    gamma_bar = gamma_hat.mean(axis=1)
    tau2 = gamma_hat.var(axis=1, ddof=1)
    m, s2 = delta_hat.mean(axis=1), delta_hat.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # mean_only: delta is 1, its prior unused
        return gamma_bar, tau2, (2 * s2 + m ** 2) / s2, (m * s2 + m ** 3) / s2


def _posterior(s_data: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, g_bar: float, tau2: float, a: float,
               b: float) -> tuple[np.ndarray, np.ndarray]:
    """gamma* and delta* of one batch: the conditional posterior means, iterated until stable."""
    n = s_data.shape[0]
    g_old, d_old = g_hat.copy(), d_hat.copy()
    for _ in range(MAX_ITERATIONS):
        g_new = (tau2 * n * g_hat + d_old * g_bar) / (tau2 * n + d_old)
        d_new = (0.5 * ((s_data - g_new) ** 2).sum(axis=0) + b) / (n / 2.0 + a - 1.0)
        change = max(np.max(np.abs(g_new - g_old) / np.abs(g_old)), np.max(np.abs(d_new - d_old) / d_old))
        g_old, d_old = g_new, d_new
        if change < CONVERGENCE:
            break
    return g_old, d_old


class ComBat:
    """ComBat with empirical Bayes: ``ComBat().fit(X, batch, covariates).transform(X, batch, covariates)``.

    ``X``: samples x features (array or DataFrame; a DataFrame comes back with its index and columns). ``batch``:
    the scanner/site of each sample. ``covariates``: a DataFrame of the effects to preserve (numeric columns as
    they are, text or boolean columns one-hot encoded). ``empirical_bayes=False`` removes the per-feature
    estimates unshrunk; ``mean_only=True`` removes additive effects only.
    """

    def __init__(self, empirical_bayes: bool = True, mean_only: bool = False) -> None:
        self.empirical_bayes = empirical_bayes
        self.mean_only = mean_only

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"empirical_bayes": self.empirical_bayes, "mean_only": self.mean_only}

    def set_params(self, **params: Any) -> "ComBat":
        for name, value in params.items():
            if name not in self.get_params():
                raise ValidationError(f"ComBat has no parameter {name}")
            setattr(self, name, value)
        return self

    def _batches(self, batch: Sequence[Any], n: int, fitting: bool) -> np.ndarray:
        labels = np.asarray(batch, dtype=object)
        if labels.shape != (n,):
            raise ValidationError(f"batch needs one label per sample ({n})")
        if fitting:
            self.batches_ = sorted(set(labels.tolist()), key=str)
        index = {b: i for i, b in enumerate(self.batches_)}
        unknown = [b for b in set(labels.tolist()) if b not in index]
        if unknown:
            raise ValidationError(f"batch {str(unknown[0])[:40]!r} was not seen in fit")
        return np.array([index[b] for b in labels.tolist()])

    def fit(self, X: Any, batch: Sequence[Any], covariates: Any = None) -> "ComBat":
        """Estimate the covariates' effects, the pooled variance and each batch's gamma* and delta*."""
        data = _as_matrix(X)
        n, features = data.shape
        codes = self._batches(batch, n, True)
        k = len(self.batches_)
        counts = np.bincount(codes, minlength=k)
        if k < 2 or counts.min() < 2:
            raise ValidationError("ComBat needs at least two batches of at least two samples each")
        cov, self.covariates_, self.levels_ = _covariate_matrix(covariates, n, None, None)
        onehot = np.eye(k)[codes]
        design = np.hstack([onehot, cov])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValidationError("the covariates are confounded with the batches (or with each other): ComBat "
                                  "cannot tell a site effect from a biological one")
        beta = np.linalg.solve(design.T @ design, design.T @ data)
        self.grand_mean_ = (counts / n) @ beta[:k]
        self.beta_ = beta[k:]
        self.var_pooled_ = ((data - design @ beta) ** 2).mean(axis=0)
        self.var_pooled_[self.var_pooled_ == 0] = 1.0  # a constant feature: nothing to scale
        s_data = (data - self.grand_mean_ - cov @ self.beta_) / np.sqrt(self.var_pooled_)
        gamma_hat = np.vstack([s_data[codes == i].mean(axis=0) for i in range(k)])
        delta_hat = np.vstack([s_data[codes == i].var(axis=0, ddof=1) for i in range(k)])
        if self.mean_only:
            delta_hat = np.ones_like(delta_hat)
        if not self.empirical_bayes or features < 2:
            self.gamma_, self.delta_ = gamma_hat, delta_hat
            return self
        gamma_bar, tau2, a, b = _priors(gamma_hat, delta_hat)
        gamma, delta = np.empty_like(gamma_hat), np.empty_like(delta_hat)
        for i in range(k):
            rows = s_data[codes == i]
            if self.mean_only:  # sva's and neuroCombat's mean-only posterior (n = 1, delta = 1)
                gamma[i] = (tau2[i] * gamma_hat[i] + gamma_bar[i]) / (tau2[i] + 1)
                delta[i] = 1.0
            else:
                gamma[i], delta[i] = _posterior(rows, gamma_hat[i], delta_hat[i], gamma_bar[i], tau2[i], a[i], b[i])
        self.gamma_, self.delta_ = gamma, delta
        return self

    def transform(self, X: Any, batch: Sequence[Any], covariates: Any = None) -> Any:
        """``X`` with each sample's batch effects removed and its covariates' effects kept."""
        if not hasattr(self, "gamma_"):
            raise ValidationError("ComBat is not fitted: call fit first")
        data = _as_matrix(X)
        if data.shape[1] != self.gamma_.shape[1]:
            raise ValidationError(f"X has {data.shape[1]} features; ComBat was fitted on {self.gamma_.shape[1]}")
        codes = self._batches(batch, data.shape[0], False)
        cov, _, _ = _covariate_matrix(covariates, data.shape[0], self.covariates_ or None, self.levels_)
        if cov.shape[1] != self.beta_.shape[0]:
            raise ValidationError("give the covariates ComBat was fitted with")
        mean = self.grand_mean_ + cov @ self.beta_
        s_data = (data - mean) / np.sqrt(self.var_pooled_)
        adjusted = (s_data - self.gamma_[codes]) / np.sqrt(self.delta_[codes])
        out = adjusted * np.sqrt(self.var_pooled_) + mean
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(out, index=X.index, columns=X.columns)
        return out

    def fit_transform(self, X: Any, batch: Sequence[Any], covariates: Any = None) -> Any:
        return self.fit(X, batch, covariates).transform(X, batch, covariates)


def harmonise(table: "pd.DataFrame", *, batch: str = "scanner", covariates: Sequence[str] = ("age",),
              columns: Sequence[str] | None = None, model: ComBat | None = None) -> tuple["pd.DataFrame", ComBat]:
    """Harmonise a *wide* library table (``client.features(shape="wide")``, ``query.wide`` of a catalog table)
    across ``batch`` (the scanner), keeping the effects of ``covariates`` (scan columns such as age, sex; a
    diagnosis list must be made a column first, e.g. ``scz = diagnosis.apply(lambda d: "SCZ" in d)``).
    ``columns``: the feature columns (default: every ``atlas/feature/region`` column). ``model``: a ComBat
    fitted before (then only transformed). Returns a copy with those columns harmonised and the model."""
    names = list(columns) if columns is not None else [c for c in table.columns if str(c).count("/") == 2]
    missing = [c for c in [batch, *covariates, *names] if c not in table.columns]
    if missing or not names:
        raise ValidationError(f"the table has no column {missing[0]!r}" if missing else "no feature columns")
    model = model or ComBat().fit(table[names], table[batch].to_numpy(), table[list(covariates)] if covariates
                                  else None)
    out = table.copy()
    out[names] = model.transform(table[names], table[batch].to_numpy(),
                                 table[list(covariates)] if covariates else None).to_numpy()
    return out, model


class SiteHarmoniser:
    """ComBat as CADS's ``harmonise=`` hook (``cads.normative.Harmoniser``): fitted on the training healthy controls
    with the site (scanner) as the batch and ``protected`` covariates (age, sex) kept, then applied to every new
    scan of a site it was fitted on.

    Why a wrapper: the library's features may miss values (a scan without BOLD has no connectivity) and a new
    scan may come from a scanner the training data never saw. Missing values are filled with the feature's
    training mean for the arithmetic and put back as missing afterwards (ComBat works feature by feature, so the
    other values are unaffected). A scan of an unseen site is, with ``unseen="fallback"`` (the default), left as
    it is (the normative model then says "scanner not in the training data: no site correction was applied");
    with ``unseen="error"`` it is refused with one line. Never harmonises against a site it did not learn."""

    method = "combat"

    def __init__(self, batch: str = "site", protected: Sequence[str] = ("age", "sex"), unseen: str = "fallback",
                 empirical_bayes: bool = True) -> None:
        if unseen not in ("fallback", "error"):
            raise ValidationError("unseen must be 'fallback' or 'error'")
        self.batch = batch
        self.protected = tuple(protected)
        self.unseen = unseen
        self.empirical_bayes = empirical_bayes

    def describe(self) -> dict[str, Any]:
        """What a model version records about its harmonisation (its metadata)."""
        return {"method": self.method, "batch": self.batch, "protected": list(self.protected),
                "unseen_site": self.unseen, "empirical_bayes": self.empirical_bayes,
                "sites": list(getattr(self, "sites_", []))}

    def _columns(self, covariates: pd.DataFrame) -> None:
        missing = [c for c in (self.batch, *self.protected) if c not in covariates.columns]
        if missing:
            raise ValidationError(f"ComBat harmonisation needs the covariate {missing[0]}")

    def fit_transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        self._columns(covariates)
        values = features.astype(float)
        self.means_ = values.mean()
        if self.means_.isna().any():
            raise ValidationError("a feature has no value among the training controls: ComBat cannot fit it")
        self.model_ = ComBat(empirical_bayes=self.empirical_bayes).fit(
            values.fillna(self.means_), covariates[self.batch].astype(str).to_numpy(),
            covariates[list(self.protected)].reset_index(drop=True))
        self.sites_ = [str(b) for b in self.model_.batches_]
        return self.transform(features, covariates)

    def transform(self, features: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
        if not hasattr(self, "model_"):
            raise ValidationError("the ComBat harmoniser is not fitted")
        self._columns(covariates)
        values = features.astype(float)
        sites = covariates[self.batch].astype(str).to_numpy()
        known = np.isin(sites, self.sites_)
        if not known.all() and self.unseen == "error":
            raise ValidationError(f"{int((~known).sum())} scan(s) from a scanner the ComBat harmonisation was not "
                                  "fitted on; retrain with it or use the site-as-covariate model (harmonise=site)")
        out = values.copy()
        if known.any():
            rows = values[known]
            done = self.model_.transform(rows.fillna(self.means_), sites[known],
                                         covariates[list(self.protected)][known].reset_index(drop=True))
            out.loc[known] = done.where(rows.notna()).to_numpy()
        return out


__all__ = ["ComBat", "SiteHarmoniser", "harmonise"]
