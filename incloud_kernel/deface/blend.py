"""Blend the template's face into the subject: soft weights, intensity and noise matching, the weighted sum.

The weight is 1 inside the face/ear region and falls smoothly (smoothstep, C1) to exactly 0 over ``ramp_mm``
outside the region's border and outside the protected region's border, so no step (edge) is created.
Where the weight is 0 the subject's stored value is copied bit for bit. Intensities of the template are mapped
to the subject's own distribution (quantile mapping, on the replaced region or on the caller's ``reference``
voxels: the refacer passes the scalp of the cranium) and given the subject's noise level. This module must never change a voxel whose weight is 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, 1 for t >= 1, 3t^2 - 2t^3 between (continuous slope at both ends)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def weights(region_mm: np.ndarray, brain_mm: np.ndarray, *, protect_mm: float, ramp_mm: float) -> np.ndarray:
    """Replacement weight (float32, 0..1) in subject mm.

    ``region_mm``: signed distance to the face+ears border (positive inside); the weight is 1 everywhere
    inside the region and falls to 0 over ``ramp_mm`` outside it, so the whole face is replaced and the
    blend happens in the tissue around it. ``brain_mm``: distance to the brain; the weight is exactly 0 where
    ``brain_mm <= protect_mm`` and rises over ``ramp_mm`` beyond.
    """
    w = smoothstep((region_mm + ramp_mm) / ramp_mm) * smoothstep((brain_mm - protect_mm) / ramp_mm)
    w[(brain_mm <= protect_mm) | (region_mm <= -ramp_mm)] = 0.0
    return w.astype(np.float32)


def quantile_map(values: np.ndarray, source: np.ndarray, target: np.ndarray, n: int = 201) -> np.ndarray:
    """Map ``values`` through the monotone function taking the ``source`` distribution onto ``target``'s."""
    q = np.linspace(0.0, 1.0, n)
    sq = np.quantile(source, q)
    tq = np.quantile(target, q)
    # ties (e.g. many zeros of air) would make the map undefined: spread them by a tiny increment
    sq = sq + np.arange(n) * 1e-6 * max(1.0, float(np.ptp(sq)))
    return np.interp(values, sq, tq).astype(np.float32)


def noise_sigma(image: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise SD inside ``mask``: MAD of the residual from a 1-voxel Gaussian smoothing, x 1.4826."""
    if not mask.any():
        return 0.0
    resid = image - ndimage.gaussian_filter(image, 1.0)
    r = resid[mask]
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def classwise_map(t: np.ndarray, sel: np.ndarray, s: np.ndarray, t_thr: float, s_thr: float,
                  s_tissue: float | None = None) -> np.ndarray:
    """Quantile-map template values to the subject's, separately for air (below each image's head threshold)
    and tissue (above it), so the template's air/tissue border (its face *shape*) is kept exactly: a single
    quantile map would force the subject's tissue volume onto it and carry part of the subject's shape over.
    ``s_tissue`` (>= ``s_thr``): the subject's tissue class starts there instead, so no template value lands
    between ``s_thr`` and ``s_tissue``: any surface drawn at a level between them is the template's at ``t_thr``.
    """
    out = np.empty_like(t, dtype=np.float32)
    t_sel = t[sel]
    s_hi = s_thr if s_tissue is None else max(s_thr, s_tissue)
    for lo_side in (True, False):
        tm = t < t_thr if lo_side else t >= t_thr
        src = t_sel[t_sel < t_thr] if lo_side else t_sel[t_sel >= t_thr]
        dst = s[s < s_thr] if lo_side else s[s >= s_hi]
        if src.size < 10 or dst.size < 10:  # one class absent in the region: map it linearly by the thresholds
            out[tm] = t[tm] * ((s_thr if lo_side else s_hi) / t_thr if t_thr > 0 else 1.0)
        else:
            out[tm] = quantile_map(t[tm], src, dst)
    return out


def blend(
    subject: np.ndarray, template: np.ndarray, w: np.ndarray, *, seed: int = 0,
    thresholds: tuple[float, ...] | None = None, noise: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """The float result ``subject + w * (matched template + noise - subject)`` (float64; w==0 -> subject).

    ``subject`` and ``template`` are float arrays on the same grid; statistics use the voxels with w > 0.
    ``thresholds``: (subject, template[, subject tissue start]) air/tissue thresholds for class-wise
    intensity matching (``classwise_map``); without
    them a single quantile map is used. ``noise``: a standard normal field on the same grid (the caller
    keys it to voxel positions, so two scans of one grid get the same noise at the same voxel whatever their
    weights); without it, ``seed`` draws one value per selected voxel in array order. ``reference``
    (boolean, same grid): match intensities on these voxels instead of the replaced ones: on the
    same anatomy outside the replaced region (brain, skull, scalp) the map is the same for two scans that
    differ only in their faces, where a map taken from the face region carries each face's own tissue volume
    into the placed template surface.
    """
    sel = w > 0
    out = subject.astype(np.float64, copy=True)
    if not sel.any():
        return out, {"replaced_voxels": 0.0}
    cal = sel if reference is None or reference.sum() < 1000 else reference
    s = subject[cal].astype(np.float32)
    t = np.nan_to_num(template, nan=float(np.min(template[np.isfinite(template)], initial=0.0)))
    if thresholds is not None:
        matched = classwise_map(t, cal, s, thresholds[1], thresholds[0], *thresholds[2:])
    else:
        matched = quantile_map(t, t[cal], s)
    # noise level on the replaced voxels themselves: on the unreplaced ones (brain) the tissue's own texture
    # counts as noise (SD 8.6 against a surface threshold of 16 on the MNI152 head) and roughens the face
    sig_s = noise_sigma(subject.astype(np.float32), sel)
    sig_t = noise_sigma(matched, sel)
    extra = float(np.sqrt(max(sig_s**2 - sig_t**2, 0.0)))
    if noise is None:
        noise_sel = np.random.default_rng(seed).normal(0.0, 1.0, size=int(sel.sum())).astype(np.float32)
    else:
        noise_sel = noise[sel]
    fill = matched[sel] + (extra * noise_sel if extra > 0 else 0.0)
    fill = np.clip(fill, float(s.min()), float(s.max()))
    out[sel] = out[sel] + w[sel] * (fill - out[sel])
    return out, {"replaced_voxels": float(sel.sum()), "noise_subject": sig_s, "noise_added": extra}
