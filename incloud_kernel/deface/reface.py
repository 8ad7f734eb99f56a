"""Reface a head volume: fit the average head, replace face and ears with its surface, keep every other voxel.

Inside the template's replaced zone (face, ears, cheeks, jaw; ``Template.zone``) every voxel, air or tissue,
comes from the template placed by the fit, so the subject's skin geometry there is the template's (where
the subject's face protrudes beyond the template's it becomes air, where the template's protrudes it
becomes tissue); the template's intensities are matched to the subject's (air and tissue separately) and
given the subject's noise. The fit is placed by the cranium alone (``fit_registration``).

Estimator-style API in the manner of nilearn: :class:`Refacer` stores its parameters unchanged, ``fit``
registers the template (or takes a registration from another series of the session), ``transform`` returns a
*new* nibabel image with the input's dtype, header and affine. Voxels whose replacement weight is 0 (outside
the face/ear region, and everywhere in the protected brain region) are copied bit for bit from the stored
(unscaled) data. Failures raise :class:`incloud_kernel.deface.safety.DefaceQuarantine`; this module must never
return an image whose face was not replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from incloud_kernel.config import DefaceSection
from incloud_kernel.deface import safety
from incloud_kernel.deface.blend import blend, weights
from incloud_kernel.deface.brainmask import brain_distance, sigma_max, template_distances
from incloud_kernel.deface.geometry import block_downsample
from incloud_kernel.deface.headmask import head_mask, skin_threshold
from incloud_kernel.deface.register import (
    BSPLINE_MAX_MM,
    Registration,
    orientation_scores,
    refine_bspline,
    register_affine,
    resample_to,
    score_registration,
    warp_displacement,
)
from incloud_kernel.deface.template import Template, load_template

ImageLike = nib.spatialimages.SpatialImage | str | Path


def load_image(img: ImageLike) -> nib.spatialimages.SpatialImage:
    """A nibabel image from a path or an image (nilearn's ``check_niimg`` contract, without copying)."""
    if isinstance(img, (str, Path)):
        try:
            return nib.load(str(img))
        except Exception as exc:  # nibabel raises many types for unreadable files
            raise safety.DefaceQuarantine("unreadable", f"{Path(img).name} is not a readable image ({type(exc).__name__})") from None
    return img


def stored_data(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The voxel values as stored on disk (no scaling applied), so that untouched voxels stay bit-identical."""
    dataobj = img.dataobj
    if hasattr(dataobj, "get_unscaled"):
        return np.asarray(dataobj.get_unscaled())
    return np.asarray(dataobj)


@dataclass
class RefaceResult:
    """What :func:`reface_array` did. ``box`` is the sub-volume (tuple of slices) holding every changed voxel,
    ``box_weights`` the replacement weights there (0 = untouched, 1 = template only)."""

    data: np.ndarray
    registration: Registration
    box: tuple[slice, slice, slice]
    box_weights: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    def weights(self) -> np.ndarray:
        """Replacement weights on the whole grid (float32)."""
        w = np.zeros(self.data.shape[:3], dtype=np.float32)
        w[self.box] = self.box_weights
        return w


def _set_threads(threads: int | None) -> None:
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


#: The cranium refinement runs to a finer step than the whole-head fit, so that it ends at the same optimum
#: from the slightly different starts two faces of one head give (at the whole-head fit's 1e-2 and 60
#: iterations, two faces' placements differed by up to 0.1 in their matrices and kept 0.34 of the identity).
REFINE_MIN_STEP, REFINE_ITERATIONS = 1e-3, 150

#: Whether the template's intensities are matched to the subject's on the box's unreplaced voxels (brain,
#: skull, scalp: the same for two faces of one head) rather than on the replaced face region. Off: it took
#: the worst pairs' identity kept from 0.29 to 0.11, but the template's thin eyelids fell below the skin
#: threshold (the renders show bare eyeballs) and the QC's own-face-kept rose from 0.37 to 0.72
#: (docs/deface.md, session 7).
MATCH_OUTSIDE = False

#: Where the template's intensities are matched to the subject's by default: on the *scalp* of the cranium
#: (issue 12, session 8; ``scalp_reference``): unreplaced voxels inside the template's cranium bit within
#: ``SCALP_MM`` of the placed template's skin, on either side (skin, fat and the air just outside; not the eyes,
#: which lie in the replaced zone, nor brain, skull or the face being replaced). Two scans that differ only in
#: their faces share those voxels, so they get the same map (the face-region map carried each face's own
#: tissue into the template surface). Off: the map on the replaced region (sessions 6-7).
MATCH_SCALP = True
SCALP_MM = 4.0

#: Whether the coarse B-spline refinement (issue 12 item 2) runs after the cranium's affine by default; see
#: docs/deface.md for the measurement behind the choice.
NONLINEAR = False


def fit_registration(
    data: np.ndarray, affine: np.ndarray, *, template: Template | None = None, min_score: float = 0.8,
    init: np.ndarray | None = None, seed: int = 0, nonlinear: bool = NONLINEAR,
) -> Registration:
    """Register the template to a 3D volume and check the fit; raises DefaceQuarantine when unsafe.

    ``nonlinear``: after the cranium's affine, fit a coarse B-spline on the cranium too (``Registration.warp``);
    a warp moving any head point by more than ``BSPLINE_MAX_MM`` is dropped (the affine placement is kept)."""
    t = template or load_template()
    safety.check_volume(data.shape, affine)
    small, small_aff = block_downsample(data, affine, 4.0)
    hm = head_mask(small)
    if hm.any() and (~hm).any():
        air = float(np.median(small[~hm]))
        contrast = float(np.median(small[hm])) / air if air > 0 else float("inf")
    else:
        contrast = 0.0
    safety.check_head(float(hm.mean()) if hm.size else 0.0, contrast)
    if init is None:
        matrix = register_affine(data, affine, t.data, t.affine, seed=seed)
    else:
        matrix = np.asarray(init, dtype=float)
    safety.check_transform(matrix)
    reg = score_registration(data, affine, t.head, t.features, t.affine, matrix)
    safety.check_registration(reg.score, min_score, reg.face_in_view, reg.face_tissue)
    found, turned = orientation_scores(data, affine, t.data, t.affine, t.head, matrix)
    reg.details.update(correlation=found, turned_correlation=turned)
    safety.check_orientation(found, turned)
    if init is None:
        # The whole-head fit above decides whether there is a head with a face in view. Where the template
        # goes is then refined on the cranium alone (the brain and 15 mm of skull and scalp around it, not the
        # face): the placed template face must not depend on the face it replaces, or two scans differing only
        # in their faces would get two differently placed template faces (identity kept through the fit).
        placed = register_affine(data, affine, t.data, t.affine, init=matrix, moving_mask=t.cranium, seed=seed,
                                 min_step=REFINE_MIN_STEP, iterations=REFINE_ITERATIONS)
        safety.check_transform(placed)
        reg.checked, reg.subject_to_template = matrix, placed
        reg.details["refinement_mm"] = float(np.abs(placed[:3, 3] - matrix[:3, 3]).max())
        if nonlinear:
            warp = refine_bspline(data, affine, t.data, t.affine, placed, moving_mask=t.cranium, seed=seed)
            moved = warp_displacement(warp, data.shape, affine)
            reg.details["warp_mm"] = moved
            if moved <= BSPLINE_MAX_MM:
                reg.warp = warp
    return reg


_THRESHOLDS: dict[int, float] = {}


#: The template level that becomes the subject's skin level (times the template's ``skin_threshold``, 43 of its
#: 90th percentile 288: 99). The average head's face is blurred: at its own skin level it shows a haze and a
#: goggle-like ridge in front of the face with the eyes open, at half of it a flat plate; at about 100 it is a
#: smooth face with closed eyelids, where the earlier face-region map put it on the MNI152 head (98.5-105,
#: varying with the face, which was the identity it kept). Session 8, renders in docs/deface.md.
TEMPLATE_FACE_LEVEL = 2.3
#: Where the subject's tissue class starts (times its skin threshold): template values at or above the
#: template's face level are mapped onto the subject's scalp values from here up, those below it onto the
#: subject's air, so nothing of the template lands between 1x and 2x the skin threshold and a surface drawn
#: anywhere between 15 % and 30 % of the 90th percentile (the eval's renders, tests/test_deface.py's) is the
#: template's face level. Without it the template's haze and goggle ridge (levels 43-99) showed at 30 %.
TISSUE_START = 2.0


def template_face_level(t: Template) -> float:
    """The template level that becomes the subject's skin level: ``TEMPLATE_FACE_LEVEL`` times its
    ``skin_threshold`` (computed once per template); its surface at this level is the face refacing shows."""
    if id(t) not in _THRESHOLDS:
        _THRESHOLDS[id(t)] = TEMPLATE_FACE_LEVEL * skin_threshold(t.data)
    return _THRESHOLDS[id(t)]


def scalp_reference(t: Template, shape: tuple[int, ...], affine: np.ndarray, subject_to_template: np.ndarray,
                    kept: np.ndarray, tmpl: np.ndarray, *, warp=None, shell_mm: float | None = None) -> np.ndarray:
    """Voxels (boolean, on the box grid) the intensity map is taken on: in ``kept`` (the caller passes the
    placed cranium bit's unreplaced voxels), within ``shell_mm`` (default ``SCALP_MM``) of the placed
    template's skin on either side, template in view.

    The shell is placed by the registration (the cranium fit), never found on the subject's own face, and
    ``kept`` lies around the brain: two scans of one head that differ only in their faces select the same
    voxels with the same values (all unreplaced voxels of the box would include those behind the jaw at the
    bottom of the box, which differed between two planted faces and moved the map)."""
    shell_mm = SCALP_MM if shell_mm is None else shell_mm
    inside = resample_to(t.head.astype(np.float32), t.affine, shape, affine, subject_to_template, order=1,
                         cval=0.0, warp=warp) >= 0.5
    vox = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    near = (ndimage.distance_transform_edt(inside, sampling=vox) <= shell_mm) & (
        ndimage.distance_transform_edt(~inside, sampling=vox) <= shell_mm)
    return near & kept & np.isfinite(tmpl)


def _box(shape: tuple[int, ...], affine: np.ndarray, reg: Registration, t: Template, pad_mm: float = 4.0):
    """Index box of the subject grid covering the warped face+ears region and ``pad_mm`` around it (the ramp),
    or None when it lies out of view."""
    vox = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if reg.warp is not None:  # the zone is placed through the warp: widen the box by its largest shift
        pad_mm += reg.details.get("warp_mm", BSPLINE_MAX_MM)
    pad = int(np.ceil(pad_mm * sigma_max(reg.subject_to_template) / float(vox.min()))) + 1
    pts = np.argwhere(t.zone[::3, ::3, ::3]) * 3
    to_subject_vox = np.linalg.inv(affine) @ np.linalg.inv(reg.subject_to_template) @ t.affine
    ijk = pts @ to_subject_vox[:3, :3].T + to_subject_vox[:3, 3]
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - pad - 3, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + pad + 4, np.array(shape[:3]))
    if (hi <= lo).any():
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def reface_array(
    raw: np.ndarray,
    affine: np.ndarray,
    *,
    registration: Registration | None = None,
    protect_mm: float = DefaceSection.protect_mm,
    margin_mm: float = DefaceSection.margin_mm,
    ramp_mm: float = DefaceSection.ramp_mm,
    min_score: float = DefaceSection.min_registration_score,
    seed: int = 0,
    template: Template | None = None,
) -> RefaceResult:
    """Reface stored voxel values ``raw`` (3D, or 4D with one volume) on the grid ``affine`` (RAS mm).

    ``protect_mm`` is the brain dilation that stays bit-identical, ``margin_mm`` extra room for registration
    error, ``ramp_mm`` the blending width. Returns the new array (same dtype and shape) and what was done.
    """
    t = template or load_template()
    safety.check_volume(raw.shape, affine)
    vol = raw.reshape(raw.shape[:3]) if raw.ndim > 3 else raw
    data = np.asarray(vol, dtype=np.float32)
    if registration is None:
        registration = fit_registration(data, affine, template=t, min_score=min_score, seed=seed)
    box = _box(vol.shape, affine, registration, t, pad_mm=ramp_mm + 2.0)
    if box is None:
        raise safety.DefaceQuarantine("no-face", "the face region lies outside the field of view")
    sub_shape = tuple(s.stop - s.start for s in box)
    sub_aff = affine @ np.array([[1, 0, 0, box[0].start], [0, 1, 0, box[1].start], [0, 0, 1, box[2].start],
                                 [0, 0, 0, 1]], dtype=float)
    m = registration.subject_to_template
    _, _, signed_t, grid = template_distances(t)
    # template mm -> subject mm: divide by the largest stretch (conservative for the protected side only)
    warp = registration.warp
    signed = resample_to(signed_t, grid, sub_shape, sub_aff, m, order=1, cval=-60.0, warp=warp) / sigma_max(m)
    to_brain = brain_distance(sub_shape, sub_aff, m, t)
    if warp is not None:  # protected where either placement (affine, or affine after the warp) says so
        to_brain = np.minimum(to_brain, brain_distance(sub_shape, sub_aff, m, t, warp=warp))
    w = weights(signed, to_brain, protect_mm=protect_mm + margin_mm, ramp_mm=ramp_mm)
    if not (w >= 0.5).any():
        raise safety.DefaceQuarantine("no-face", "no face voxel could be replaced outside the protected brain region")
    tmpl = resample_to(t.data, t.affine, sub_shape, sub_aff, m, order=1, cval=np.nan, warp=warp)
    subject = data[box]
    # noise keyed to the voxel grid, not to the order of the replaced voxels: when two scans of one head select
    # a few voxels more or less (their fits differ by hundredths of a mm), an order-keyed draw shifts every
    # later voxel's noise, and the surface of the template face differs by noise alone (session 7: most of the
    # identity left on the worst pairs).
    noise = np.random.default_rng(seed).standard_normal(vol.shape[:3], dtype=np.float32)[box]
    reference = None
    if MATCH_OUTSIDE:
        reference = (w == 0) & np.isfinite(tmpl)
    elif MATCH_SCALP:
        kept = resample_to(t.cranium.astype(np.float32), t.affine, sub_shape, sub_aff, m, order=1, cval=0.0,
                           warp=warp) >= 0.5
        reference = scalp_reference(t, sub_shape, sub_aff, m, kept & (w == 0), tmpl, warp=warp)
    # Air and tissue split at the skin level, not at ``head_threshold``: that one sits at the air's noise level
    # (0.2-0.3 of up to 300 on the MNI152 head) and moved from 0.21 to 0.34 between two planted faces of one
    # head, which moved every tissue quantile and lifted one face's template skin by 2.7 (session 8).
    s_skin = skin_threshold(data)
    fused, stats = blend(subject, tmpl, w, seed=seed,
                         thresholds=(s_skin, template_face_level(t), TISSUE_START * s_skin),
                         noise=noise, reference=reference)
    out = np.array(vol, copy=True)
    region = out[box]
    sel = w > 0
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        region[sel] = np.clip(np.rint(fused[sel]), info.min, info.max).astype(out.dtype)
    else:
        region[sel] = fused[sel].astype(out.dtype)
    stats.update(changed_voxels=float((region != vol[box]).sum()), score=registration.score)
    return RefaceResult(data=out.reshape(raw.shape), registration=registration, box=box, box_weights=w, stats=stats)


def _scaling(img: nib.spatialimages.SpatialImage) -> tuple[float, float] | None:
    """(slope, intercept) the stored values are scaled by, or None when they are used as they are."""
    proxy = img.dataobj
    slope = getattr(proxy, "slope", None)
    inter = getattr(proxy, "inter", None)
    if slope is None:
        hdr = img.header
        slope, inter = hdr.get_slope_inter() if hasattr(hdr, "get_slope_inter") else (None, None)
    if slope is None or not np.isfinite(slope):
        return None
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if float(slope) == 1.0 and inter == 0.0:
        return None
    return float(slope), inter


def new_image_like(img: nib.spatialimages.SpatialImage, raw: np.ndarray) -> nib.spatialimages.SpatialImage:
    """A new image of the same class and header with ``raw`` as its *stored* values.

    Unscaled inputs: the array is kept as it is (dtype of the input's stored data). Scaled inputs (scl_slope /
    scl_inter): the result is a proxied image over an in-memory file with the same on-disk dtype and the same
    slope and intercept, so ``get_fdata()`` gives scaled values and :func:`save_image` writes the stored
    integers back unchanged (nibabel's own ``save`` would re-derive the scaling and alter every voxel).
    """
    header = img.header.copy()
    scaling = _scaling(img)
    if scaling is None:
        new = img.__class__(raw, img.affine, header)
        new.set_data_dtype(raw.dtype)
        return new
    import io

    from nibabel.fileholders import FileHolder

    tmp = img.__class__(raw, img.affine, header)
    tmp.set_data_dtype(raw.dtype)
    tmp.header.set_slope_inter(*scaling)
    bio = io.BytesIO()
    fmap = {key: FileHolder(fileobj=bio) for key in tmp.file_map}
    tmp.to_file_map(fmap)
    bio.seek(0)
    return img.__class__.from_file_map({key: FileHolder(fileobj=bio) for key in tmp.file_map})


def save_image(img: nib.spatialimages.SpatialImage, path: str | Path) -> None:
    """Save a refaced image keeping the stored dtype, values and scaling (bit-identical untouched voxels)."""
    scaling = _scaling(img)
    if scaling is None:
        nib.save(img, str(path))
        return
    out = img.__class__(stored_data(img), img.affine, img.header.copy())
    out.set_data_dtype(img.get_data_dtype())
    out.header.set_slope_inter(*scaling)
    nib.save(out, str(path))


class Refacer:
    """Replace face and ears of head images with the average head; brain region bit-identical.

    Parameters are stored unchanged (scikit-learn convention); ``None`` means "from the site configuration".
    ``fit(img)`` registers the template (sets ``registration_``); ``transform(img)`` refaces ``img`` using that
    registration, which is valid for any image in the same scanner coordinates (another series of the
    session); ``fit_transform`` does both. Images are nibabel images or paths.
    """

    def __init__(self, *, protect_mm: float | None = None, margin_mm: float | None = None,
                 ramp_mm: float | None = None, min_score: float | None = None, threads: int | None = None,
                 seed: int = 0, nonlinear: bool = NONLINEAR) -> None:
        self.protect_mm = protect_mm
        self.margin_mm = margin_mm
        self.ramp_mm = ramp_mm
        self.min_score = min_score
        self.threads = threads
        self.seed = seed
        self.nonlinear = nonlinear

    def _params(self) -> dict[str, Any]:
        from incloud_kernel.config import get_config

        cfg = get_config().deface
        return {
            "protect_mm": cfg.protect_mm if self.protect_mm is None else self.protect_mm,
            "margin_mm": cfg.margin_mm if self.margin_mm is None else self.margin_mm,
            "ramp_mm": cfg.ramp_mm if self.ramp_mm is None else self.ramp_mm,
            "min_score": cfg.min_registration_score if self.min_score is None else self.min_score,
            "threads": cfg.threads if self.threads is None else self.threads,
        }

    def fit(self, img: ImageLike) -> "Refacer":
        p = self._params()
        _set_threads(p["threads"])
        image = load_image(img)
        safety.check_volume(image.shape, image.affine)
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
        self.registration_ = fit_registration(data, image.affine, min_score=p["min_score"], seed=self.seed,
                                             nonlinear=self.nonlinear)
        self._fitted = id(image)
        return self

    def transform(self, img: ImageLike) -> nib.spatialimages.SpatialImage:
        p = self._params()
        _set_threads(p["threads"])
        image = load_image(img)
        reg = getattr(self, "registration_", None)
        if reg is None:
            raise safety.DefaceQuarantine("not-fitted", "Refacer.transform called before fit")
        raw = stored_data(image)
        safety.check_volume(raw.shape, image.affine)
        check = reg
        if getattr(self, "_fitted", None) != id(image):
            # another image (series) in the same scanner space: score the shared fit on it before use
            data = np.asarray(raw, dtype=np.float32).reshape(raw.shape[:3])
            t = load_template()
            check = score_registration(data, image.affine, t.head, t.features, t.affine, reg.check_matrix)
            safety.check_registration(check.score, p["min_score"], check.face_in_view, check.face_tissue)
            check.subject_to_template, check.checked, check.warp = reg.subject_to_template, reg.checked, reg.warp
            check.details.update({k: v for k, v in reg.details.items() if k == "warp_mm"})
        self.result_ = reface_array(raw, image.affine, registration=check, protect_mm=p["protect_mm"],
                                    margin_mm=p["margin_mm"], ramp_mm=p["ramp_mm"], min_score=p["min_score"],
                                    seed=self.seed)
        return new_image_like(image, self.result_.data)

    def fit_transform(self, img: ImageLike) -> nib.spatialimages.SpatialImage:
        image = load_image(img)
        return self.fit(image).transform(image)


def reface_image(img: ImageLike, **params: Any) -> nib.spatialimages.SpatialImage:
    """Reface one image (nibabel image or path) and return the new nibabel image; see :class:`Refacer`."""
    return Refacer(**params).fit_transform(img)
