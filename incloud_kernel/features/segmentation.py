"""Tissue segmentation of a bias-corrected, brain-extracted T1w: CSF, grey and white matter probabilities.

Method: dipy's ``TissueClassifierHMRF`` (Zhang, Brady & Smith 2001, IEEE TMI 20:45: a hidden Markov random
field with Gaussian class likelihoods, ICM with a Potts prior of weight ``beta``), the Atropos equivalent of
this package. Classes are ordered by mean intensity (T1w: CSF < GM < WM); its partial-volume estimates are the
probability maps. It runs on the brain's bounding box only (the background is dipy's class 0). When the HMRF
degenerates (a class loses every voxel: dipy then returns NaN or empty maps, seen on the low-contrast
synthetic heads), the maps are the posteriors of a 3-class Gaussian mixture (scikit-learn, as the QC code's
``qc.anatomical.tissue_pvms``) instead, without the spatial prior. This module never reads or writes files.
"""
from __future__ import annotations

import numpy as np

TISSUES = ("CSF", "GM", "WM")


def segment(data: np.ndarray, brain: np.ndarray, *, beta: float = 0.1, iterations: int = 10,
            tolerance: float = 1e-5) -> dict[str, np.ndarray]:
    """``{"CSF", "GM", "WM"}`` -> float32 probability maps on ``data``'s grid (0 outside ``brain``)."""
    from dipy.segment.tissue import TissueClassifierHMRF

    idx = np.argwhere(brain)
    if len(idx) < 100:
        raise ValueError("the brain mask has fewer than 100 voxels")
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = brain[box]
    values = np.where(inside, np.clip(data[box], 0, None), 0).astype(np.float64)
    scale = float(np.percentile(values[inside], 99)) or 1.0
    values = values / scale * 1000.0
    values[inside] = np.maximum(values[inside], 1e-3)  # a brain voxel at exactly 0 would count as background
    classifier = TissueClassifierHMRF(verbose=False)
    _, _, pve = classifier.classify(values, 3, beta, tolerance=tolerance, max_iter=iterations)
    pve = np.nan_to_num(pve, nan=0.0)
    if min(float(pve[..., i][inside].sum()) for i in range(3)) < 0.001 * inside.sum():
        from incloud_kernel.qc.anatomical import tissue_pvms

        mixture = tissue_pvms(data, brain)
        return {name: mixture[name.lower()] for name in TISSUES}
    out = {}
    for i, name in enumerate(TISSUES):
        full = np.zeros(brain.shape, dtype=np.float32)
        full[box] = np.where(inside, pve[..., i], 0.0)
        out[name] = full
    total = out["CSF"] + out["GM"] + out["WM"]
    for name in TISSUES:  # dipy's PVEs sum to 1 in the brain; renormalise rounding, 0 outside
        out[name] = np.where(total > 0, out[name] / np.maximum(total, 1e-6), 0.0).astype(np.float32)
    return out


def hard_labels(probseg: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 labels 0 background, 1 CSF, 2 GM, 3 WM: the most probable tissue where any is present."""
    stack = np.stack([probseg[t] for t in TISSUES])
    labels = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    labels[stack.sum(0) <= 0] = 0
    return labels


__all__ = ["TISSUES", "hard_labels", "segment"]
