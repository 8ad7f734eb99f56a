"""Masks the QC indices are measured in: head, brain (EPI and T1w), rotation padding, MRIQC's "hat" air mask
and the artifact mask of Mortamet et al. 2009.

Built only from installed libraries (dipy's ``median_otsu``, the refacing head mask, SimpleITK registration of
the packaged average head): no FSL/AFNI/ANTs binary, nothing downloaded. Functions read arrays and return new
boolean arrays; they must never modify their inputs.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: MNI152 positions (RAS mm) of the top of the glabella and of the inion: MRIQC 24.0.2 ``ArtifactMask``
#: defaults (``mriqc/interfaces/anatomical.py``); the "hat" air mask lies above the plane through them.
GLABELLA_MNI = (0.0, 90.0, -14.0)
INION_MNI = (0.0, -120.0, -14.0)


def epi_mask(mean: np.ndarray) -> np.ndarray:
    """Brain mask of a mean EPI or b=0 volume: dipy's ``median_otsu`` (median filter radius 2, one pass),
    largest connected component, holes filled. Falls back to everything above the median when empty."""
    from dipy.segment.mask import median_otsu

    radius = 2 if min(mean.shape) >= 12 else 1
    _, mask = median_otsu(np.asarray(mean, dtype=np.float32), median_radius=radius, numpass=1)
    mask = largest_component(mask)
    if mask.sum() < 10:
        mask = mean > np.median(mean)
    return ndimage.binary_fill_holes(mask)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(labels, dtype=np.int32), labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head (skull, skin and everything inside): the refacing module's air/tissue threshold, largest
    component, closed and filled (``incloud_kernel.deface.headmask.head_mask``)."""
    from incloud_kernel.deface.headmask import head_mask as _head

    return _head(data)


def skull_stripped(data: np.ndarray, head: np.ndarray, zooms: np.ndarray) -> bool:
    """True for a brain-extracted image: background exactly zero over most of the volume *and* a "head" no
    larger than a brain (under 2.5 l; a head with skull and scalp is 3-5 l). MRIQC's air-based indices are
    undefined there and come out as -1. A head whose air was zeroed (e.g. FSL's MNI152) is not stripped."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    return bool((data <= zero_level(data)).mean() > 0.25 and head.sum() * voxel_ml < 2500.0)


def zero_level(data: np.ndarray) -> float:
    """Values at or below this are background zeros: a millionth of the maximum (resampled templates carry
    denormal values such as 1e-45 where the source was 0)."""
    return float(np.max(data)) * 1e-6


def rotation_mask(data: np.ndarray) -> np.ndarray:
    """Empty voxels added by a rotation/reslicing (MRIQC ``RotationMask``): voxels <= 0, opened, the two
    largest components kept, discarded when smaller than 500 voxels."""
    mask = np.pad(data <= 0, 1, constant_values=True)
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 2))
    labels, n = ndimage.label(mask)
    if n > 2:
        sizes = ndimage.sum_labels(np.ones_like(labels, dtype=np.int32), labels, index=np.arange(1, n + 1))
        keep = np.argsort(sizes)[::-1][:2] + 1
        mask = np.isin(labels, keep)
    mask = mask[1:-1, 1:-1, 1:-1]
    return mask if mask.sum() >= 500 else np.zeros_like(mask, dtype=bool)


def hat_mask(head: np.ndarray, glabella_k: float, inion_k: float) -> np.ndarray:
    """MRIQC's "hat": the air outside the head above the nasion-occipital plane. As MRIQC's ``ArtifactMask``,
    the head mask is extended over every slice below the inion and over the anterior half below the glabella
    (``glabella_k``/``inion_k``: slice indices, canonical RAS grid), and the hat is its complement."""
    extended = head.copy()
    extended[:, :, : max(0, int(inion_k))] = True
    extended[:, extended.shape[1] // 2:, : max(0, int(glabella_k))] = True
    return ~extended


def mad(values: np.ndarray, center: float | None = None) -> float:
    """Median absolute deviation scaled to a Gaussian SD (divided by 0.6745), about ``center`` (default the
    median): the definition of ``statsmodels.robust.scale.mad`` that MRIQC uses."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return 0.0
    c = float(np.median(values)) if center is None else center
    return float(np.median(np.abs(values - c)) / 0.6744897501960817)


def artifact_mask(data: np.ndarray, hat: np.ndarray, head: np.ndarray, zscore: float = 10.0) -> np.ndarray:
    """Mortamet et al. 2009 artifacts (MRIQC ``artifact_mask``): hat voxels brighter than ``zscore`` times the
    MAD of the non-zero hat intensities, away from the head (normalised distance >= 0.1), opened with a
    6-connected element to drop isolated noise voxels."""
    art = np.zeros(data.shape, dtype=bool)
    bg = data[hat]
    if (bg > 0).sum() < 10:
        return art
    spread = mad(bg[bg > 0])
    if spread <= 0:
        return art
    if hat.size > 2_000_000:  # the 10 % cut needs no sub-voxel precision: half resolution is 8x cheaper
        half = ndimage.distance_transform_edt(hat[::2, ::2, ::2]) * 2.0
        dist = np.repeat(np.repeat(np.repeat(half, 2, 0), 2, 1), 2, 2)[: hat.shape[0], : hat.shape[1], : hat.shape[2]]
        dist = np.where(hat, dist, 0.0)
    else:
        dist = ndimage.distance_transform_edt(hat)  # distance of air voxels to the (extended) head
    dist = dist / dist.max() if dist.max() > 0 else dist
    art[hat] = (bg / spread) > zscore
    art[dist < 0.10] = False
    return ndimage.binary_opening(art, structure=ndimage.generate_binary_structure(3, 1))
