"""Tissue segmentation of a bias-corrected T1w: CSF, grey and white matter probabilities inside a brain region.

Default method (``beta=0``): a 3-class Gaussian mixture of the intensities (scikit-learn, fixed seed), the
classes ordered by mean (T1w: CSF < GM < WM), its posteriors as the probability maps: the intensity model of
FSL FAST and SPM's unified segmentation without their spatial priors, and the same model the QC code
(``qc.anatomical.tissue_pvms``) and the synthetic cohort's tissue classes use. The mixture is *fitted* on a
fixed region (``fit``: in ``features.t1``, the template's brain mask pulled onto the T1w and a thin shell of
the CSF around it) and *applied* to the wider region a caller segments (the same mask grown by a margin, so
cortex that the registration left just outside the template's edge is still classified): skull and scalp in
that margin then neither move the class boundaries nor count as brain, whatever the margin
(``keep_brain_tissue`` drops grey- or white-matter-like voxels that do not connect to the brain's own tissue,
e.g. bright scalp).

Optional (``beta > 0``): dipy's ``TissueClassifierHMRF`` (Zhang, Brady & Smith 2001, IEEE TMI 20:45: hidden
Markov random field, ICM with a Potts prior of weight ``beta``), the default until session 8. It is no longer
the default because it did not give one method across grids: on the 2 mm synthetic head it degenerated (a
class lost every voxel) and this module silently fell back to the mixture, while at 1 mm it ran and its grey
matter came out narrower (29 % of the generator's grey-matter voxels called white matter, half of the
posterior cingulate's core called CSF), which hid the planted thinning (docs/features_t1.md, session 8). When
it degenerates the mixture is used, as before. This module never reads or writes files.
"""
from __future__ import annotations

import numpy as np

TISSUES = ("CSF", "GM", "WM")
#: Voxels the mixture is fitted on, at most (a fixed-seed sample: the fit takes a second at 1 mm).
MIXTURE_SAMPLES = 200_000


def mixture(data: np.ndarray, brain: np.ndarray, fit: np.ndarray | None = None,
            seed: int = 0) -> dict[str, np.ndarray]:
    """``{"CSF", "GM", "WM"}`` -> float32 posteriors of a 3-class Gaussian mixture fitted on the intensities in
    ``fit`` (default ``brain``) and evaluated in ``brain`` (0 outside)."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    fit = brain if fit is None else fit  # not clipped to ``brain``: the classes must not follow the margin
    if fit.sum() < 100:
        raise ValueError("the region the tissue classes are fitted on has fewer than 100 voxels")
    values = data[fit].astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(values) > MIXTURE_SAMPLES:
        values = values[np.sort(rng.choice(len(values), MIXTURE_SAMPLES, replace=False))]
    with threadpool_limits(1):  # a 1-D mixture: threads only contend, and one thread sums in a fixed order
        gmm = GaussianMixture(n_components=3, random_state=seed, max_iter=200).fit(values[:, None])
        post = gmm.predict_proba(data[brain].astype(np.float64)[:, None])[:, np.argsort(gmm.means_.ravel())]
    return {name: _scatter(post[:, i], brain) for i, name in enumerate(TISSUES)}


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 array of ``mask``'s shape: ``values`` at the mask's voxels, 0 elsewhere."""
    full = np.zeros(mask.shape, dtype=np.float32)
    full[mask] = values
    return full


def keep_brain_tissue(probseg: dict[str, np.ndarray], core: np.ndarray) -> dict[str, np.ndarray]:
    """``probseg`` with grey and white matter kept only in the tissue (most probable class GM or WM, face
    connectivity) connected to the tissue inside ``core``; elsewhere their probability moves to CSF (dark skull
    is CSF-like already; bright scalp or marrow in a mask's margin is not brain). The maps still sum to what
    they summed to."""
    from scipy import ndimage

    labels = hard_labels(probseg)
    tissue = labels >= 2
    components, _ = ndimage.label(tissue)
    kept = np.unique(components[tissue & core])
    brain_tissue = np.isin(components, kept[kept > 0])
    out = dict(probseg)
    drop = tissue & ~brain_tissue  # only the cut-off tissue: CSF voxels keep their partial grey matter
    out["CSF"] = np.where(drop, probseg["CSF"] + probseg["GM"] + probseg["WM"], probseg["CSF"]).astype(np.float32)
    out["GM"] = np.where(drop, 0.0, probseg["GM"]).astype(np.float32)
    out["WM"] = np.where(drop, 0.0, probseg["WM"]).astype(np.float32)
    return out


def segment(data: np.ndarray, brain: np.ndarray, *, beta: float = 0.0, iterations: int = 10,
            tolerance: float = 1e-5, fit: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{"CSF", "GM", "WM"}`` -> float32 probability maps on ``data``'s grid (0 outside ``brain``): the
    mixture fitted on ``fit`` (default ``brain``) when ``beta`` is 0, dipy's HMRF on ``brain`` otherwise."""
    if int(brain.sum()) < 100:
        raise ValueError("the brain mask has fewer than 100 voxels")
    if beta <= 0:
        return mixture(data, brain, fit)
    return _hmrf(data, brain, beta=beta, iterations=iterations, tolerance=tolerance)


def _hmrf(data: np.ndarray, brain: np.ndarray, *, beta: float, iterations: int,
          tolerance: float) -> dict[str, np.ndarray]:
    """dipy's HMRF on the brain's bounding box (the background is dipy's class 0); the mixture if it
    degenerates (a class loses every voxel: dipy then returns NaN or empty maps)."""
    from dipy.segment.tissue import TissueClassifierHMRF

    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = brain[box]
    values = np.where(inside, np.clip(data[box], 0, None), 0).astype(np.float64)
    scale = float(np.percentile(values[inside], 99)) or 1.0
    values = values / scale * 1000.0
    values[inside] = np.maximum(values[inside], 1e-3)  # a brain voxel at exactly 0 would count as background
    classifier = TissueClassifierHMRF(verbose=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        _, _, pve = classifier.classify(values, 3, beta, tolerance=tolerance, max_iter=iterations)
    pve = np.nan_to_num(pve, nan=0.0)
    if min(float(pve[..., i][inside].sum()) for i in range(3)) < 0.001 * inside.sum():
        return mixture(data, brain)
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


__all__ = ["MIXTURE_SAMPLES", "TISSUES", "hard_labels", "keep_brain_tissue", "mixture", "segment"]
