"""Separate head from air in a structural MR volume: the intensity threshold and the filled head mask.

Used by registration scoring, face detection, intensity matching and renders. It only reads voxels; it must
never modify the image it is given.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def head_threshold(data: np.ndarray) -> float:
    """Air/tissue intensity threshold (same units as ``data``).

    Otsu's threshold on a subsample splits air+dark tissue from bright tissue; skin and fat of the face are
    fainter than brain in average heads, so the threshold is lowered to 30% of Otsu's, but never below the
    air noise level estimated from the volume's outer shell (mean + 4 SD of the lowest half of it).
    """
    sample = np.asarray(data[::2, ::2, ::2], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or float(sample.max()) <= float(sample.min()):
        return float("inf")
    otsu = float(threshold_otsu(sample))
    shell = np.concatenate([
        np.ravel(data[:2]), np.ravel(data[-2:]), np.ravel(data[:, :2]), np.ravel(data[:, -2:]),
        np.ravel(data[:, :, -2:]),
    ]).astype(np.float32)
    low = np.sort(shell)[: max(1, shell.size // 2)]
    air = float(low.mean() + 4 * low.std())
    lo = float(sample.min())
    return max(lo + 0.3 * (otsu - lo), min(air, lo + 0.6 * (otsu - lo)))


def skin_threshold(data: np.ndarray) -> float:
    """Air/skin threshold for renders and depth maps: 15 % of the 90th percentile of the positive voxels.

    Not ``head_threshold``: on the MNI152 head (values down to -21 from its resampling) that one falls to the
    air level (0.4 of up to 300) and its surface is a halo in the air in front of the face. At 10 % the
    MNI152 head still shows that halo; at 30 % the thin, dim eyelids vanish and the eyeballs show.
    """
    a = np.asarray(data, dtype=np.float32)
    pos = a[a > 0]
    return 0.15 * float(np.percentile(pos, 90)) if pos.size else head_threshold(a)


def head_mask(data: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean head mask: above threshold, largest connected component, closed, holes filled per slice."""
    t = head_threshold(data) if threshold is None else threshold
    m = np.asarray(data) > t
    if not m.any():
        return m
    m = ndimage.binary_opening(m, iterations=1)
    labels, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum_labels(np.ones_like(labels, dtype=np.int32), labels, index=np.arange(1, n + 1))
        m = labels == (int(np.argmax(sizes)) + 1)
    m = ndimage.binary_closing(m, iterations=2, border_value=0) | m
    filled = ndimage.binary_fill_holes(m)
    for idx in range(filled.shape[2]):  # open-ended holes (nostrils, ear canals): fill slice by slice
        filled[:, :, idx] = ndimage.binary_fill_holes(filled[:, :, idx])
    return filled
