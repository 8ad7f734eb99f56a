"""Resting-state measures on cleaned BOLD time series: ALFF, fALFF, ReHo, their normalised maps, band-pass.

Pure numpy/scipy on arrays (voxels x time, or a 3-D grid of voxels); no file or image handling, so every
formula can be checked by hand on tiny arrays (tests/test_features_bold_measures.py). Conventions follow the
tools the literature's numbers come from, each named beside its function and in docs/features.md:
DPABI/REST ``y_alff_falff.m`` for the spectral ALFF/fALFF (default), C-PAC's ``alff.py`` (AFNI 3dBandpass +
3dTstat -stdev) as the alternative, C-PAC's ``reho.py`` Kendall's W with ranks tied by their mean. Must never
import an imaging library or read a file.
"""
from __future__ import annotations

import math

import numpy as np

#: Default low-frequency band (Hz), as C-PAC, DPABI and REST.
BAND: tuple[float, float] = (0.01, 0.08)
ALFF_METHODS = ("dpabi", "cpac")


def _detrend(ts: np.ndarray) -> np.ndarray:
    """Remove each row's least-squares line (MATLAB ``detrend``, which DPABI applies before its FFT)."""
    from scipy.signal import detrend

    return detrend(np.asarray(ts, dtype=np.float64), axis=-1, type="linear")


def band_indices(n: int, tr: float, band: tuple[float, float]) -> tuple[int, int, int]:
    """(padded length, first and last FFT bin, 0-based inclusive) of ``band`` as DPABI's ``y_alff_falff.m``
    picks them: padded length 2^nextpow2(n), low bin ceil(f_lo * P * TR), high bin fix(f_hi * P * TR); a
    band edge at or above Nyquist takes every bin up to P/2."""
    padded = 1 << max(0, math.ceil(math.log2(n)))
    nyquist = 0.5 / tr
    lo = padded // 2 if band[0] >= nyquist else math.ceil(band[0] * padded * tr - 1e-9)
    hi = padded // 2 if band[1] >= nyquist or band[1] == 0 else math.floor(band[1] * padded * tr + 1e-9)
    return padded, lo, hi


def amplitude_spectrum(ts: np.ndarray, tr: float) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies Hz, one-sided amplitude 2|FFT|/n) of each detrended, zero-padded row (DPABI's
    "new version": amplitude, not the square root of power)."""
    n = ts.shape[-1]
    padded, _, _ = band_indices(n, tr, BAND)
    spec = 2.0 * np.abs(np.fft.rfft(_detrend(ts), n=padded, axis=-1)) / n
    return np.fft.rfftfreq(padded, d=tr), spec


def alff_falff(ts: np.ndarray, tr: float, band: tuple[float, float] = BAND,
               method: str = "dpabi") -> tuple[np.ndarray, np.ndarray]:
    """ALFF and fALFF of each row of ``ts`` (voxels x time).

    ``dpabi`` (DPABI/REST ``y_alff_falff.m``): detrend, zero-pad to a power of two, amplitude 2|FFT|/n;
    ALFF = MEAN amplitude over the band's bins, fALFF = SUM of the band's amplitudes / sum over every bin but
    DC (1 .. P/2). ``cpac`` (C-PAC ``alff.py``): ALFF = standard deviation of the band-passed series (ideal
    FFT filter with linear detrend, AFNI 3dBandpass), fALFF = that / standard deviation of the unfiltered
    (detrended) series. A flat row gets 0 for both.
    """
    ts = np.atleast_2d(np.asarray(ts, dtype=np.float64))
    if method not in ALFF_METHODS:
        raise ValueError(f"ALFF method must be one of {', '.join(ALFF_METHODS)}")
    flat = np.ptp(ts, axis=-1) == 0
    if method == "cpac":
        filtered = bandpass(ts, tr, band)
        alff = np.where(flat, 0.0, filtered.std(axis=-1))
        total = _detrend(ts).std(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            falff = np.where(flat | (total <= 0), 0.0, alff / np.where(total > 0, total, 1.0))
        return alff, falff
    _, lo, hi = band_indices(ts.shape[-1], tr, band)
    _, amp = amplitude_spectrum(ts, tr)
    in_band = amp[:, lo:hi + 1]
    alff = np.where(flat, 0.0, in_band.mean(axis=-1) if hi >= lo else 0.0)
    total = amp[:, 1:].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        falff = np.where(flat | (total <= 0), 0.0, in_band.sum(axis=-1) / np.where(total > 0, total, 1.0))
    return alff, falff


def bandpass(ts: np.ndarray, tr: float, band: tuple[float, float] = BAND) -> np.ndarray:
    """Ideal (rectangular FFT) band-pass of each detrended row, as AFNI 3dBandpass/3dTproject and DPABI's
    filter: bins outside [f_lo, f_hi] are zeroed (no zero padding, so the result has the input's length)."""
    ts = np.atleast_2d(np.asarray(ts, dtype=np.float64))
    n = ts.shape[-1]
    spec = np.fft.rfft(_detrend(ts), axis=-1)
    freqs = np.fft.rfftfreq(n, d=tr)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    spec[:, ~keep] = 0.0
    return np.fft.irfft(spec, n=n, axis=-1)


def normalised(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z map, mean-normalised map) of the in-mask values: (x - mean) / sd (C-PAC's z-scored ALFF/ReHo,
    DPABI's zALFF) and x / mean (DPABI's mALFF). Constant values give zeros."""
    values = np.asarray(values, dtype=np.float64)
    mean, sd = float(values.mean()) if values.size else 0.0, float(values.std()) if values.size else 0.0
    z = (values - mean) / sd if sd > 0 else np.zeros_like(values)
    m = values / mean if mean != 0 else np.zeros_like(values)
    return z, m


def kendall_w(ranks: np.ndarray) -> float:
    """Kendall's coefficient of concordance of ``ranks`` (raters x time), C-PAC's ``f_kendall``:
    W = 12 S / (k^2 (n^3 - n)), S = sum over time of (R_t - mean R)^2, R_t the rank sum at time t; no tie
    correction in the denominator (as C-PAC and REST)."""
    k, n = ranks.shape
    sums = ranks.sum(axis=0)
    s = float(((sums - sums.mean()) ** 2).sum())
    return 12.0 * s / (k * k * (n ** 3 - n))


def reho(ts: np.ndarray, mask: np.ndarray, chunk: int = 32) -> np.ndarray:
    """ReHo map: Kendall's W of each mask voxel's 3x3x3 neighbourhood (27 voxels; at the mask's edge only the
    neighbours inside the mask count, as C-PAC). ``ts`` is (mask voxels x time) in ``mask``'s C order;
    ranks over time with ties given their mean rank (scipy ``rankdata(method="average")``, MATLAB
    ``tiedrank`` as DPABI). Returns W per mask voxel. The rank sums of a neighbourhood are a 3-D box sum of
    the rank volumes, done ``chunk`` time points at a time to bound memory."""
    from scipy.ndimage import uniform_filter
    from scipy.stats import rankdata

    mask = np.asarray(mask, bool)
    n = ts.shape[1]
    ranks = rankdata(np.asarray(ts, dtype=np.float64), axis=1, method="average").astype(np.float32)
    counts = np.rint(uniform_filter(mask.astype(np.float32), size=3, mode="constant") * 27.0)[mask]
    mean_sum = counts * (n + 1) / 2.0  # mean over time of a neighbourhood's rank sum (ranks average (n+1)/2)
    s = np.zeros(int(mask.sum()), np.float64)
    grid = np.zeros(mask.shape + (min(chunk, n),), np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = grid[..., :stop - start]
        block[...] = 0.0
        block[mask] = ranks[:, start:stop]
        sums = uniform_filter(block, size=(3, 3, 3, 1), mode="constant")[mask] * 27.0
        s += ((sums - mean_sum[:, None]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = 12.0 * s / (counts ** 2 * (n ** 3 - n))
    return np.where(counts > 0, w, 0.0)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """arctanh of a correlation matrix, the diagonal set to 0 (its arctanh is infinite; nothing is lost)."""
    z = np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z


__all__ = ["BAND", "ALFF_METHODS", "band_indices", "amplitude_spectrum", "alff_falff", "bandpass", "normalised",
           "kendall_w", "reho", "fisher_z"]
