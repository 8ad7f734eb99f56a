"""ALFF, fALFF, ReHo and the nuisance/band-pass helpers against values computed by hand on tiny arrays (issue 15
item 2): the DPABI formula written out independently (explicit DFT, MATLAB's 1-based bin rules), Kendall's W
from its definition and from Spearman's rho (W = (rho + 1) / 2 for two raters without ties), the 24 motion
regressors from their definition. Arrays only: fast, no image, no registration.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from incloud_kernel.features.bold_measures import (
    alff_falff, band_indices, bandpass, fisher_z, kendall_w, normalised, reho)
from incloud_kernel.features.bold_preproc import design, friston24, regress_out, slice_time_correct


def _dpabi_by_hand(x: np.ndarray, tr: float, lo_hz: float, hi_hz: float) -> tuple[float, float]:
    """DPABI y_alff_falff.m for one series, written out: detrend (least-squares line), pad to 2^nextpow2,
    amplitude 2|DFT|/N by an explicit sum, MATLAB 1-based bins ceil(f_lo P TR + 1) .. fix(f_hi P TR + 1),
    ALFF = mean over the band, fALFF = band sum / sum over bins 2 .. P/2 + 1."""
    n = len(x)
    t = np.arange(n)
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    p = 2 ** math.ceil(math.log2(n))
    xp = np.concatenate([x, np.zeros(p - n)])
    amp = [2 * abs(sum(xp[j] * np.exp(-2j * np.pi * k * j / p) for j in range(p))) / n for k in range(p)]
    lo1, hi1 = math.ceil(lo_hz * p * tr + 1), math.trunc(hi_hz * p * tr + 1)
    band = amp[lo1 - 1:hi1]
    return float(np.mean(band)), float(np.sum(band) / np.sum(amp[1:p // 2 + 1]))


@pytest.mark.parametrize("n,tr", [(20, 2.0), (37, 1.5), (64, 0.8)])
def test_alff_falff_dpabi_matches_hand(n: int, tr: float) -> None:
    rng = np.random.default_rng(n)
    ts = rng.normal(100, 5, (3, n)) + np.linspace(0, 4, n)
    alff, falff = alff_falff(ts, tr, (0.01, 0.08), "dpabi")
    for i in range(3):
        a, f = _dpabi_by_hand(ts[i], tr, 0.01, 0.08)
        assert alff[i] == pytest.approx(a, rel=1e-9)
        assert falff[i] == pytest.approx(f, rel=1e-9)


def test_band_indices_follow_dpabi_rounding() -> None:
    # n=20, TR=2: P=32; ceil(0.64 + 1) = 2 and fix(5.12 + 1) = 6 (1-based) -> bins 1..5 (0-based)
    assert band_indices(20, 2.0, (0.01, 0.08)) == (32, 1, 5)
    # a band edge above Nyquist takes every bin up to P/2
    assert band_indices(20, 2.0, (0.01, 0.5)) == (32, 1, 16)


def test_alff_cpac_is_sd_of_bandpassed_over_sd() -> None:
    rng = np.random.default_rng(3)
    n, tr = 50, 2.0
    x = rng.normal(0, 1, n)
    t = np.arange(n)
    d = x - np.polyval(np.polyfit(t, x, 1), t)
    spec = np.fft.rfft(d)
    f = np.fft.rfftfreq(n, tr)
    spec[(f < 0.01) | (f > 0.08)] = 0
    filtered = np.fft.irfft(spec, n)
    alff, falff = alff_falff(x[None], tr, (0.01, 0.08), "cpac")
    assert alff[0] == pytest.approx(filtered.std(), rel=1e-9)
    assert falff[0] == pytest.approx(filtered.std() / d.std(), rel=1e-9)
    assert np.allclose(bandpass(x[None], tr)[0], filtered)


def test_in_band_sinusoid_raises_alff_and_falff() -> None:
    n, tr = 128, 2.0
    t = np.arange(n) * tr
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (2, n))
    planted = noise + np.vstack([2 * np.sin(2 * np.pi * 0.03 * t), 2 * np.sin(2 * np.pi * 0.2 * t)])
    a0, f0 = alff_falff(noise, tr)
    a1, f1 = alff_falff(planted, tr)
    assert a1[0] > 2 * a0[0] and f1[0] > f0[0] + 0.1  # in band: up
    assert a1[1] == pytest.approx(a0[1], rel=0.3) and f1[1] < f0[1]  # 0.2 Hz: ALFF unchanged, fALFF down


def test_flat_series_gives_zero() -> None:
    for method in ("dpabi", "cpac"):
        a, f = alff_falff(np.full((1, 30), 7.0), 2.0, method=method)
        assert a[0] == pytest.approx(0.0, abs=1e-12) and f[0] == 0.0


def _w_by_hand(series: np.ndarray) -> float:
    """Kendall's W from its definition: ranks per rater (ties: mean rank), rank sums R_t over raters,
    S = sum (R_t - mean R)^2, W = 12 S / (k^2 (n^3 - n))."""
    ranks = np.array([rankdata(s) for s in series])
    k, n = ranks.shape
    r = ranks.sum(0)
    return float(12 * ((r - r.mean()) ** 2).sum() / (k * k * (n ** 3 - n)))


def test_kendall_w_two_raters_is_spearman() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=12), rng.normal(size=12)
    ranks = np.array([rankdata(a), rankdata(b)])
    assert kendall_w(ranks) == pytest.approx((spearmanr(a, b).statistic + 1) / 2, rel=1e-12)


def test_reho_27_neighbours_and_edges_with_ties() -> None:
    rng = np.random.default_rng(2)
    n = 10
    mask = np.ones((3, 3, 3), bool)
    ts = rng.integers(0, 4, (27, n)).astype(float)  # many ties: mean ranks
    w = reho(ts, mask, chunk=3)
    grid = ts.reshape(3, 3, 3, n)
    assert w[13] == pytest.approx(_w_by_hand(ts), rel=1e-5)  # centre voxel: all 27
    assert w[0] == pytest.approx(_w_by_hand(grid[:2, :2, :2].reshape(-1, n)), rel=1e-5)  # corner: 8 neighbours
    # a voxel outside the mask neither counts nor gets a value
    mask[2, 2, 2] = False
    w2 = reho(np.delete(ts, 26, axis=0), mask)
    assert len(w2) == 26
    assert w2[13] == pytest.approx(_w_by_hand(np.delete(ts, 26, axis=0)), rel=1e-5)


def test_reho_identical_neighbourhood_is_one() -> None:
    ts = np.tile(np.arange(8.0), (27, 1))
    assert reho(ts, np.ones((3, 3, 3), bool))[13] == pytest.approx(1.0)


def test_normalised_maps() -> None:
    z, m = normalised(np.array([1.0, 2.0, 3.0, 6.0]))
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert m.mean() == pytest.approx(1) and m[3] == pytest.approx(2.0)


def test_fisher_z_zero_diagonal() -> None:
    z = fisher_z(np.array([[1.0, 0.5], [0.5, 1.0]]))
    assert z[0, 1] == pytest.approx(np.arctanh(0.5)) and z[0, 0] == 0.0


def test_friston24_definition() -> None:
    p = np.arange(18.0).reshape(3, 6) ** 1.5
    x = friston24(p)
    d = np.vstack([np.zeros(6), p[1:] - p[:-1]])
    assert x.shape == (3, 24)
    assert np.allclose(x, np.hstack([p, d, p ** 2, d ** 2]))


def test_regress_out_removes_confound_and_trend() -> None:
    rng = np.random.default_rng(4)
    conf = rng.normal(size=(40, 2))
    signal = rng.normal(size=40)
    y = 5 + 0.1 * np.arange(40) + 3 * conf[:, 0] - 2 * conf[:, 1] + signal
    res = regress_out(y[None], design(conf))[0]
    assert abs(np.corrcoef(res, conf[:, 0])[0, 1]) < 1e-8 and abs(res.mean()) < 1e-8
    assert np.corrcoef(res, signal)[0, 1] > 0.9


def test_slice_timing_shifts_each_slice_to_the_middle() -> None:
    tr, n = 2.0, 40
    times = [0.0, 1.0, 0.5, 1.5]  # four slices, reference = (0 + 1.5) / 2 = 0.75 s
    f = 0.02
    data = np.zeros((1, 1, 4, n), np.float32)
    for k, tk in enumerate(times):
        data[0, 0, k] = np.sin(2 * np.pi * f * (np.arange(n) * tr + tk))
    out = slice_time_correct(data, tr, times, axis=2)
    want = np.sin(2 * np.pi * f * (np.arange(n) * tr + 0.75))
    for k in range(4):
        assert np.abs(out[0, 0, k, 2:-2] - want[2:-2]).max() < 2e-3
