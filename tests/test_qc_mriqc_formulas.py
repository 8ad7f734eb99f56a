"""Our indices against MRIQC 24.0.2's formulas applied by hand, written here independently of the product
code (issue 14, first "Done when" bullet, last part). Sources: ``mriqc/qc/anatomical.py`` (snr, snr_dietrich,
cnr, cjv, fber, efc, wm2max, art_qi1, volume_fraction, summary_stats), ``mriqc/interfaces/anatomical.py``
(which statistic feeds which index; INU from the bias field in the segmentation) and, for BOLD, nipype's
``compute_dvars``, AFNI's ``@compute_gcor``, ``3dToutcount`` and MRIQC's ``gsr`` and FD summary.

The T1w comparison uses the masks our estimator measured in (``masks_``, ``pvms_``, ``bias_``), so it checks
the formulas, not the segmentation.
"""
from __future__ import annotations

from math import pi, sqrt
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from qc_images import synth_t1

from incloud_kernel.qc import functional
from incloud_kernel.qc.anatomical import StructuralQC
from incloud_kernel.qc.motion import fd_summary, framewise_displacement
from incloud_kernel.qc.spatial import fwhm_classic


def hand_stats(data: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """statsmodels ``DescrStatsW`` semantics as MRIQC calls it (rounded data and weights)."""
    x = np.round(data.astype(np.float64).reshape(-1), 0)
    w = np.round(p.astype(np.float32).reshape(-1), 3).astype(np.float64)
    mean = (x * w).sum() / w.sum()
    std = sqrt(((x - mean) ** 2 * w).sum() / w.sum())
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    median = x[order][np.argmax(cw >= 0.5 * cw[-1])]
    t = data[p > 0.5 * p.max()].astype(np.float64)
    mad = np.median(np.abs(t - median)) / 0.6744897501960817  # statsmodels.robust.scale.mad
    return {"mean": mean, "median": median, "stdv": std, "mad": mad, "n": float(p.sum())}


def hand_t1w(q: StructuralQC) -> dict[str, float]:
    x, m = q.harmonized_, q.masks_
    s = {k: hand_stats(x, q.pvms_[k]) for k in ("csf", "gm", "wm")}
    air = m["hat"] & ~m["art"]
    bg = hand_stats(x, air.astype(np.float32))
    out = {}
    for k in ("csf", "gm", "wm"):
        out[f"snr_{k}"] = s[k]["median"] / (s[k]["stdv"] * sqrt(s[k]["n"] / (s[k]["n"] - 1)))
        if bg["mad"] > 1.0:
            out[f"snrd_{k}"] = s[k]["median"] / (sqrt(2 / (4 - pi)) * bg["mad"])
        else:
            out[f"snrd_{k}"] = s[k]["median"] / (sqrt(2 / (4 - pi)) * bg["stdv"]) if bg["stdv"] > 1e-3 else -1.0
    wm, gm = s["wm"], s["gm"]
    out["cnr"] = abs(wm["median"] - gm["median"]) / sqrt(bg["stdv"] ** 2 + wm["stdv"] ** 2 + gm["stdv"] ** 2)
    out["cjv"] = (wm["mad"] + gm["mad"]) / abs(wm["median"] - gm["median"])
    fg_energy = np.median(x[m["head"]].astype(np.float64) ** 2)
    outside = ~m["head"] & ~m["rot"]
    bg_energy = np.median(x[outside].astype(np.float64) ** 2)
    out["fber"] = fg_energy / bg_energy if bg_energy >= 1e-3 else -1.0
    v = x[~m["rot"]].astype(np.float64)
    n = v.size
    energy = sqrt((v ** 2).sum())
    out["efc"] = np.sum(v / energy * np.log((v + 1e-16) / energy)) / (n / sqrt(n) * np.log(1 / sqrt(n)))
    out["wm2max"] = wm["median"] / np.percentile(x, 99.95)
    out["qi_1"] = m["art"].sum() / (air.sum() + m["art"].sum()) if air.sum() else -1.0
    total = sum(float(q.pvms_[k].sum()) for k in ("csf", "gm", "wm"))
    for k in ("csf", "gm", "wm"):
        out[f"icvs_{k}"] = float(q.pvms_[k].sum()) / total
    seg = (q.pvms_["csf"] > 0) | (q.pvms_["gm"] > 0) | (q.pvms_["wm"] > 0)
    out["inu_med"] = np.median(q.bias_[seg])
    out["inu_range"] = np.percentile(q.bias_[seg], 95) - np.percentile(q.bias_[seg], 5)
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> StructuralQC:
    """A synthetic head with Rician air noise (so every branch is live: Dietrich SNR, FBER, QI1)."""
    return StructuralQC().fit(synth_t1(tmp_path_factory.mktemp("t1"), voxel_mm=2.0))


def test_t1w_indices_equal_mriqc_formulas_by_hand(fitted: StructuralQC) -> None:
    ours, hand = fitted.iqms_, hand_t1w(fitted)
    assert fitted.masks_["hat"].any() and fitted.iqms_["fber"] > 0
    for key, value in hand.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_fwhm_recovers_a_known_gaussian_kernel() -> None:
    """White noise smoothed with SD 1.5 voxels has FWHM 2.3548 * 1.5 = 3.53 voxels on every axis."""
    noise = np.random.default_rng(0).normal(size=(64, 64, 64))
    smooth = ndimage.gaussian_filter(noise, 1.5)
    mask = np.zeros(smooth.shape, bool)
    mask[8:-8, 8:-8, 8:-8] = True
    fx, fy, fz, avg = fwhm_classic(smooth, mask)
    assert avg == pytest.approx(2.3548 * 1.5, rel=0.05)
    assert max(fx, fy, fz) / min(fx, fy, fz) < 1.05


def _ar1_series(voxels: int, volumes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(voxels, volumes))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0]
    for t in range(1, volumes):
        x[:, t] = 0.4 * x[:, t - 1] + e[:, t]
    return 500.0 + 20.0 * x


def test_dvars_equals_nipype_definition_by_hand() -> None:
    series = _ar1_series(300, 40)
    data = series.reshape(10, 6, 5, 40).astype(np.float32)
    mask = np.ones((10, 6, 5), bool)
    got = functional.dvars(data, mask)
    m = series.astype(np.float32).astype(np.float64)
    m = m / np.median(m) * 1000.0
    sd = (np.percentile(m, 75, axis=1, method="lower") - np.percentile(m, 25, axis=1, method="lower")) / 1.349
    ar1 = []
    for row in m:
        d = row - row.mean()
        ac = np.correlate(d, d, "full")[len(d) - 1:] / len(d)
        ar1.append(ac[1] / ac[0])  # Yule-Walker order 1
    dsd = np.sqrt(2 * (1 - np.array(ar1))) * sd
    diff = np.diff(m, axis=1)
    nstd = np.sqrt((diff ** 2).mean(0))
    np.testing.assert_allclose(got[:, 1], nstd, rtol=1e-5)
    np.testing.assert_allclose(got[:, 0], nstd / dsd.mean(), rtol=1e-5)
    np.testing.assert_allclose(got[:, 2], np.sqrt(((diff / dsd[:, None]) ** 2).mean(0)), rtol=1e-5)


def test_gcor_is_the_mean_correlation_of_all_voxel_pairs() -> None:
    rng = np.random.default_rng(1)
    shared = rng.normal(size=50)
    series = rng.normal(size=(120, 50)) + 0.7 * shared
    data = series.reshape(4, 5, 6, 50)
    assert functional.gcor(data, np.ones((4, 5, 6), bool)) == pytest.approx(np.corrcoef(series).mean(), rel=1e-9)


def test_gsr_of_a_planted_ghost() -> None:
    """Brain 100, a ghost of 10 half a field of view away along y, air 0: GSR_y = (10 - 0) / 100 = 0.1."""
    mean = np.zeros((32, 32, 8))
    mask = np.zeros(mean.shape, bool)
    mask[10:22, 4:12, 2:6] = True
    mean[mask] = 100.0
    mean[np.roll(mask, 16, axis=1)] = 10.0
    assert functional.gsr(mean, mask, "y") == pytest.approx(0.1)
    # along x the shifted region is air and the y ghost counts as non-ghost background: a negative GSR
    non_ghost_mean = 10.0 * mask.sum() / (mean.size - 2 * mask.sum())
    assert functional.gsr(mean, mask, "x") == pytest.approx(-non_ghost_mean / 100.0)


def test_outlier_fraction_finds_a_planted_spike() -> None:
    """3dToutcount: a volume where 30 % of the voxels jump by 20 SD has an outlier fraction of 0.3."""
    rng = np.random.default_rng(2)
    data = 100.0 + rng.normal(size=(10, 10, 10, 60))
    spiked = rng.random((10, 10, 10)) < 0.3
    data[spiked, 30] += 20.0
    frac = functional.outlier_fraction(data, np.ones((10, 10, 10), bool))
    assert frac[30] == pytest.approx(spiked.mean(), abs=0.01)
    assert np.delete(frac, 30).max() < 0.01


def test_fd_power_and_mriqc_summary() -> None:
    """Two steps: 1 mm in x, then 0.01 rad about z (0.5 mm on the 50 mm sphere)."""
    params = np.zeros((3, 6))
    params[1:, 0] = 1.0
    params[2, 5] = 0.01
    fd = framewise_displacement(params)
    np.testing.assert_allclose(fd, [1.0, 0.5])
    assert fd_summary(fd, 0.2) == {"fd_mean": 0.75, "fd_num": 2.0, "fd_perc": pytest.approx(200 / 3)}
    assert fd_summary(fd, 0.6)["fd_num"] == 1.0
