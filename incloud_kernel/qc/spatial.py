"""Spatial image-quality measures shared by every modality, as MRIQC 24.0.2 defines them in
``mriqc/qc/anatomical.py`` (SNR, Dietrich SNR, CNR, CJV, FBER, EFC, WM2MAX, QI1, volume fractions, tissue
summary statistics) and the classic FWHM smoothness of AFNI's ``3dFWHMx -ShowMeClassicFWHM`` that MRIQC calls.

Pure functions of arrays and masks (our own code from the published formulas; MRIQC is the reference, not a
dependency). They must never modify their inputs.
"""
from __future__ import annotations

from math import sqrt

import numpy as np

from incloud_kernel.qc.masks import mad

#: 1 / sqrt(2 / (4 - pi)): Rayleigh correction of the air SD (Dietrich et al. 2007, eq. A.12).
DIETRICH_FACTOR = 0.6551364


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """The ``qs`` quantiles of ``values`` weighted by ``weights`` (first value whose cumulative weight reaches
    q of the total), as statsmodels' ``DescrStatsW.quantile`` that MRIQC's ``summary_stats`` uses."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    cum = np.cumsum(weights[order])
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return [float(v[min(int(i), v.size - 1)]) for i in idx]


def summary_stats(data: np.ndarray, pvm: np.ndarray) -> dict[str, float]:
    """Weighted statistics of ``data`` in one region given as a probability (partial-volume) map, MRIQC's
    ``summary_stats``: data rounded to integers and weights to 3 decimals; weighted mean, median, 5th/95th
    percentiles and SD (ddof 0); MAD about the weighted median over voxels with p > 0.5 max(p); n = sum(p)."""
    pvm = np.asarray(pvm, dtype=np.float32)
    w = np.round(pvm, 3)
    keep = w > 0
    v = np.round(np.asarray(data, dtype=np.float64)[keep], 0)
    w = w[keep].astype(np.float64)
    n = float(pvm.sum(dtype=np.float64))
    if w.sum() <= 0:
        return {"mean": 0.0, "median": 0.0, "p05": 0.0, "p95": 0.0, "stdv": 0.0, "mad": 0.0, "n": 0.0}
    mean = float(np.sum(v * w) / w.sum())
    std = float(np.sqrt(np.sum(w * (v - mean) ** 2) / w.sum()))
    p05, median, p95 = weighted_quantiles(v, w, (0.05, 0.5, 0.95))
    thresholded = np.asarray(data)[pvm > 0.5 * float(pvm.max())]
    return {"mean": mean, "median": median, "p05": p05, "p95": p95, "stdv": std,
            "mad": mad(thresholded, center=median), "n": n}


def snr(mu_fg: float, sigma_fg: float, n: float) -> float:
    """SNR of one region from its own spread: mu / (sigma sqrt(n / (n - 1))) (MRIQC ``snr``)."""
    if n <= 1 or sigma_fg <= 0:
        return 0.0
    return float(mu_fg / (sigma_fg * sqrt(n / (n - 1))))


def snr_dietrich(mu_fg: float, mad_air: float = 0.0, sigma_air: float = 1.0) -> float:
    """Dietrich SNR: the region's median over the air noise, 0.6551 mu / MAD_air (MRIQC ``snr_dietrich``);
    with MAD_air <= 1 it uses the air SD, and -1 when that is below 1e-3 (no background: skull-stripped)."""
    if mad_air > 1.0:
        return float(DIETRICH_FACTOR * mu_fg / mad_air)
    return float(DIETRICH_FACTOR * mu_fg / sigma_air) if sigma_air > 1e-3 else -1.0


def cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float, sigma_gm: float) -> float:
    """Contrast-to-noise ratio |mu_WM - mu_GM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2) (Magnotta and
    Friedman 2006; MRIQC ``cnr``). Higher is better."""
    return float(abs(mu_wm - mu_gm) / sqrt(sigma_air ** 2 + sigma_gm ** 2 + sigma_wm ** 2))


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """Coefficient of joint variation (sigma_WM + sigma_GM) / |mu_WM - mu_GM| (Ganzetti 2016; MRIQC ``cjv``,
    fed with MADs). Lower is better; grows with intensity non-uniformity and head motion."""
    return float((sigma_wm + sigma_gm) / abs(mu_wm - mu_gm))


def fber(data: np.ndarray, head: np.ndarray, rotmask: np.ndarray | None = None) -> float:
    """Foreground-background energy ratio: median |x|^2 in the head over median |x|^2 in the air outside
    it (rotation padding excluded) (Shehzad 2015; MRIQC ``fber``); -1 when the air is empty of signal."""
    data = np.asarray(data, dtype=np.float64)
    fg = np.median(np.abs(data[head > 0]) ** 2)
    air = head == 0
    if rotmask is not None:
        air &= rotmask == 0
    if not air.any():
        return -1.0
    bg = np.median(np.abs(data[air]) ** 2)
    return -1.0 if bg < 1.0e-3 else float(fg / bg)


def efc(data: np.ndarray, framemask: np.ndarray | None = None) -> float:
    """Entropy focus criterion (Atkinson 1997) normalised by its maximum so images of different sizes
    compare (MRIQC ``efc``): sum (x/x_max) ln(x/x_max) / (sqrt(N) ln(1/sqrt(N))), x_max = sqrt(sum x^2).
    Near 0 when the energy is concentrated; motion ghosting and blurring raise it."""
    x = np.asarray(data, dtype=np.float64)
    x = x[framemask == 0] if framemask is not None else x.ravel()
    n = x.size
    efc_max = n * (1.0 / np.sqrt(n)) * np.log(1.0 / np.sqrt(n))
    b_max = np.sqrt((x ** 2).sum())
    return float((1.0 / efc_max) * np.sum((x / b_max) * np.log((x + 1e-16) / b_max)))


def wm2max(data: np.ndarray, mu_wm: float) -> float:
    """White-matter median over the 99.95th percentile of the volume (MRIQC ``wm2max``); near 1 is good,
    low values mean bright outliers (vessels, fat, artefacts) dominate the intensity range."""
    return float(mu_wm / np.percentile(np.asarray(data).ravel(), 99.95))


def art_qi1(airmask: np.ndarray, artmask: np.ndarray) -> float:
    """QI1 (Mortamet 2009; MRIQC ``art_qi1``): artefactual voxels over the hat mask; -1 without a hat."""
    if airmask.sum() < 1:
        return -1.0
    return float(artmask.sum() / (airmask.sum() + artmask.sum()))


def volume_fractions(pvms: dict[str, np.ndarray]) -> dict[str, float]:
    """Tissue fractions of the intracranial volume: sum of each partial-volume map over the sum of all
    (MRIQC ``volume_fraction``; keys ``csf``, ``gm``, ``wm``)."""
    sums = {k: float(np.asarray(v, dtype=np.float64).sum()) for k, v in pvms.items()}
    total = sum(sums.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in sums.items()}


def fwhm_classic(data: np.ndarray, mask: np.ndarray, detrend: bool = True) -> tuple[float, ...]:
    """Smoothness as AFNI's classic 3dFWHMx estimate (Forman et al. 1995), in voxels as MRIQC reports it.

    Per axis, with v the variance of the values in ``mask`` and v_d the variance of first differences between
    neighbours both in the mask: r = 1 - v_d / (2 v) is the lag-1 autocorrelation, and a Gaussian kernel with
    that autocorrelation has FWHM = sqrt(-2 ln 2 / ln r) voxels (-1 when r <= 0 or r >= 1). ``detrend``
    removes a least-squares plane (linear trend in x, y, z) first, as ``-detrend`` does for one volume.
    Returns (x, y, z, average) in voxels (MRIQC divides AFNI's mm by the voxel size); times the zooms for mm.
    """
    m = np.asarray(mask, dtype=bool)
    x = np.asarray(data, dtype=np.float64)
    if detrend and m.sum() > 4:
        ijk = np.argwhere(m).astype(np.float64)
        design = np.column_stack([np.ones(len(ijk)), ijk])
        beta, *_ = np.linalg.lstsq(design, x[m], rcond=None)
        x = x.copy()
        x[m] = x[m] - design @ beta
    v = float(np.var(x[m])) if m.any() else 0.0
    out = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        both = m[tuple(a)] & m[tuple(b)]
        if v <= 0 or both.sum() < 2:
            out.append(-1.0)
            continue
        d = (x[tuple(a)] - x[tuple(b)])[both]
        r = 1.0 - float(np.var(d)) / (2.0 * v)
        out.append(float(np.sqrt(-2.0 * np.log(2.0) / np.log(r))) if 0.0 < r < 1.0 else -1.0)
    valid = [f for f in out if f > 0]
    return (*out, float(np.mean(valid)) if valid else -1.0)
