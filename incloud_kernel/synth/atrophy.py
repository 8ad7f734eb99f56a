"""Planted grey-matter loss on the T1 pixels: regional atrophy (a percentage of a region's grey matter) and
cortical thinning (a depth in mm), both as grey matter turned into CSF from the CSF side inward.

The tissue model is the average head's *own* intensity classes (a 3-class Gaussian mixture of its T1 inside the
MNI152 brain placed by ``incloud_kernel.head_to_mni``), so a voxel the effect turns to CSF looked like grey
matter in the image before and looks like CSF after: what a segmentation of the rendered T1 sees. The edit is
made once per effect set on a copy of the template head (template head space, 1 mm) and the participant's T1 is
rendered from that copy through the usual chain; the ground truth is then measured on the participant's own T1
grid (``planted_truth``). This module never writes files and never changes the loaded templates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from incloud_kernel.errors import ValidationError
from incloud_kernel.synth.anatomy import REGIONS, load_templates, physical_grid

if TYPE_CHECKING:  # pragma: no cover
    from incloud_kernel.synth.deform import Participant

CSF, GM, WM = 1, 2, 3
#: Thinning is planted in whole template voxels along the distance map: at most this deep (mm).
MAX_THINNING_MM = 3.0
#: Both effects are a smooth field of depth over the head, not a step at the region's edge: the full planted
#: depth where the region's normalised ellipsoid radius rho (1 on the ellipsoid) is at most the first value,
#: none beyond the second, a raised cosine between. The ramp spans one radius (7-15 mm), two to three times the
#: template cortex's thickness (about 5 mm), so the depth at a grey-matter voxel and at the pial end of the
#: cortical column through it agree (what a voxel-wise thickness measures; with a step at the ellipsoid, columns
#: near its edge ended on unthinned cortex outside it and no definition of "the region's thinning" fitted both).
#: Atrophy took the taper in session 9: real atrophy has no edge at an atlas boundary either, and a region a
#: registration places a little off then reads nearly the same change.
TAPER = (0.5, 1.5)


@dataclass(frozen=True)
class TissueEffect:
    """Grey matter of ``region`` (``anatomy.REGIONS``: its MNI ellipsoid) turned into CSF from the CSF side:
    ``kind="atrophy"`` removes ``amount`` percent of the region's grey-matter voxels (the ones nearest CSF first);
    ``kind="thinning"`` removes the grey matter within ``amount`` mm of CSF (template head mm; partial voxels at
    the front) at the region's core, tapering smoothly to 0 around its edge (``TAPER``). Atrophy is the same
    tapered edit at the core depth that removes ``amount`` percent of the grey matter inside the ellipsoid
    (``removal_depth``)."""

    region: str
    kind: str
    amount: float

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValidationError(f"unknown region {self.region!r}; known: {', '.join(REGIONS)}")
        if self.kind == "atrophy" and not 0.0 < self.amount < 100.0:
            raise ValidationError(f"atrophy of {self.amount} % is outside 0-100")
        if self.kind == "thinning" and not 0.0 < self.amount <= MAX_THINNING_MM:
            raise ValidationError(f"thinning of {self.amount} mm is outside 0-{MAX_THINNING_MM}")
        if self.kind not in ("atrophy", "thinning"):
            raise ValidationError(f"unknown tissue effect {self.kind!r}; choose atrophy or thinning")


@dataclass(frozen=True)
class HeadTissue:
    """The average head's own tissue classes: ``labels`` (numpy z, y, x of ``load_templates().head``; 0
    outside the brain, CSF=1, GM=2, WM=3, the most probable class) and the fitted mixture (``means``, ``sds``,
    ``weights`` of CSF, GM, WM in template intensity units)."""

    labels: np.ndarray
    means: np.ndarray
    sds: np.ndarray
    weights: np.ndarray

    def gm_probability(self, values: np.ndarray) -> np.ndarray:
        """Posterior probability of grey matter for template intensities ``values`` (float32, same shape)."""
        v = np.asarray(values, np.float64)[..., None]
        like = self.weights * np.exp(-0.5 * ((v - self.means) / self.sds) ** 2) / self.sds
        return (like[..., 1] / np.maximum(like.sum(-1), 1e-300)).astype(np.float32)

    @property
    def removed_level(self) -> float:
        """Template intensity a voxel takes when all its grey matter is gone: one SD below the CSF mean, so an
        intensity segmentation calls it CSF, not a grey/CSF mixture."""
        return float(self.means[0] - self.sds[0])


@functools.lru_cache(maxsize=1)
def head_tissue() -> HeadTissue:
    """The average head's tissue classes (``HeadTissue``). The brain is the MNI152 brain placed by the package's
    head-to-MNI transform (fraction >= 0.5) dilated by 3 mm; classes by a 3-component Gaussian mixture of the
    head's intensities there (fixed seed, 20 000 samples). About 5 s, once per process."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    t = load_templates()
    brain_img = sitk.Resample(t.gm + t.wm + t.csf, t.head, t.head_to_mni, sitk.sitkLinear, 0.0)
    # dilated by 3 mm so the CSF around the cortex is in the sample (without it the mixture splits grey matter)
    brain = sitk.GetArrayFromImage(sitk.BinaryDilate(brain_img >= 0.5, [3, 3, 3])) > 0
    values = sitk.GetArrayViewFromImage(t.head)[brain].astype(np.float64)[:, None]
    rng = np.random.default_rng(0)
    sample = values[rng.choice(len(values), min(len(values), 20_000), replace=False)]
    with threadpool_limits(1):  # a 1-D mixture: threads only contend
        gmm = GaussianMixture(3, random_state=0).fit(sample)
    order = np.argsort(gmm.means_.ravel())
    rank = np.empty(3, int)
    rank[order] = np.arange(3)
    labels = np.zeros(brain.shape, np.uint8)
    labels[brain] = rank[gmm.predict(values)] + 1
    return HeadTissue(labels=labels, means=gmm.means_.ravel()[order], sds=np.sqrt(gmm.covariances_.ravel()[order]),
                      weights=gmm.weights_[order])


def taper_weight(rho: np.ndarray) -> np.ndarray:
    """Share (0-1) of an effect's core depth at normalised ellipsoid radius ``rho`` (``TAPER``)."""
    lo, hi = TAPER
    t = np.clip((np.asarray(rho, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def region_rho(region: str, mni_lps: np.ndarray) -> np.ndarray:
    """Normalised radius of MNI LPS points (..., 3) in ``region``'s ellipsoid (1 on its surface)."""
    r = REGIONS[region]
    return np.sqrt(np.square((mni_lps - r.center_lps) / np.asarray(r.radii)).sum(-1))


#: How far (mm) ``head_to_mni.anatomical_mni`` can move a region beyond the affine's placement (its residual
#: is at most 6.7 mm inside the brain): the margin of the crop a region is looked for in.
RESIDUAL_REACH_MM = 8.0


def region_points_mni(head_points: np.ndarray) -> np.ndarray:
    """Template head LPS points (3, ...) -> MNI LPS points (..., 3) where the regions are looked up: the
    package's affine, then the average head's anatomy by ANTs SyN (``head_to_mni.anatomical_mni``)."""
    from incloud_kernel.head_to_mni import anatomical_mni
    from incloud_kernel.synth.deform import to_mni

    return anatomical_mni(np.moveaxis(to_mni(head_points), 0, -1))


@functools.lru_cache(maxsize=None)
def _region_in_head(region: str, reach: float = 1.0) -> tuple[tuple[slice, ...], np.ndarray]:
    """The region's MNI ellipsoid on the template head grid: (crop slices covering ``rho <= reach``, the
    normalised radius ``rho`` of every crop voxel, float32)."""
    t = load_templates()
    r = REGIONS[region]
    m = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
    o = np.asarray(t.head_to_mni.GetTranslation())
    signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
    corners = [np.linalg.solve(m, c - o)
               for c in r.center_lps + signs * (np.asarray(r.radii) * reach + RESIDUAL_REACH_MM)]
    idx = np.array([t.head.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
    size = np.asarray(t.head.GetSize())
    lo = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, size)
    crop = sitk.RegionOfInterest(t.head, [int(v) for v in hi - lo], [int(v) for v in lo])
    rho = region_rho(region, region_points_mni(np.moveaxis(physical_grid(crop), -1, 0)))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1]))  # numpy z, y, x
    return sl, rho.astype(np.float32)


def removal_depth(effect: TissueEffect) -> float:
    """How deep (template mm from the CSF side) ``effect`` removes grey matter at the region's core (less towards
    its edge, ``taper_weight``): ``amount`` for thinning; for atrophy the core depth whose tapered removal takes
    exactly ``amount`` percent of the grey matter inside the ellipsoid (bisection)."""
    if effect.kind == "thinning":
        return float(effect.amount)
    _, gm, delta, p_gm, rho = _depths(effect.region, TAPER[1])
    weight = taper_weight(rho)
    target = float(p_gm.sum()) * effect.amount / 100.0
    lo, hi = 0.0, 40.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float((_fraction(gm, delta, mid * weight) * p_gm).sum()) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _fraction(gm: np.ndarray, delta: np.ndarray, depth: "float | np.ndarray") -> np.ndarray:
    """Share of each voxel removed when grey matter goes to ``depth`` mm (a number, or one per voxel) from the
    CSF side: a voxel whose
    centre lies ``delta`` from the nearest CSF/outside voxel centre spans depths [delta - 1, delta] (the tissue
    boundary lies half a voxel out)."""
    return np.where(gm, np.clip(depth - (delta - 1.0), 0.0, 1.0), 0.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _depths(region: str, reach: float = 1.0) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """(crop slices of the head grid covering ``rho <= reach``, the region's grey-matter voxels there (most
    probable class, inside the ellipsoid), their distance in mm to the nearest CSF/outside voxel centre, the
    grey-matter probability of every region voxel, the crop's normalised radius rho). Template voxels are 1 mm."""
    from scipy import ndimage

    tissue = head_tissue()
    labels = tissue.labels
    sl, rho = _region_in_head(region, reach)
    inside = rho <= 1.0
    pad = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in sl)
    lab = labels[pad]
    inner = tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(sl, pad))
    delta = ndimage.distance_transform_edt(lab >= GM)[inner]
    values = sitk.GetArrayViewFromImage(load_templates().head)[sl]
    p_gm = np.where(inside & (lab[inner] > 0), tissue.gm_probability(values), 0.0)
    return sl, (lab[inner] == GM) & inside, delta, p_gm.astype(np.float32), rho


def _removed(effect: TissueEffect) -> tuple[tuple[slice, ...], np.ndarray]:
    """Fraction (0-1) of each template voxel (crop of the head grid) that ``effect`` turns from grey matter into
    CSF: partial voxels at the removal front, so the planted depth is not rounded to whole voxels. Every
    grey-matter voxel of the taper (inside the ellipsoid or not) is edited to its local depth."""
    sl, _, delta, _, rho = _depths(effect.region, TAPER[1])
    lab = head_tissue().labels[sl]
    return sl, _fraction(lab == GM, delta, removal_depth(effect) * taper_weight(rho))


@functools.lru_cache(maxsize=8)
def edited_head(effects: tuple[TissueEffect, ...]) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(T1 head with the effects, grey-matter probability before, after): float32 images on the template head
    grid, the probabilities only inside the effects' regions (0 elsewhere). A grey-matter voxel losing a share f
    of its depth moves that share of the way to ``HeadTissue.removed_level`` and loses f of its grey-matter
    probability."""
    t = load_templates()
    tissue = head_tissue()
    head = sitk.GetArrayFromImage(t.head)
    gm_before = np.zeros(head.shape, np.float32)
    for e in effects:
        sl, _, _, p_gm, _ = _depths(e.region, TAPER[1])
        gm_before[sl] = np.maximum(gm_before[sl], p_gm)
    gm_after = gm_before.copy()
    done = np.zeros(head.shape, np.float32)  # share already removed (effects overlapping on a voxel)
    for e in effects:
        sl, f = _removed(e)
        f = np.clip(f - done[sl], 0.0, None)
        head[sl] -= f * (head[sl] - tissue.removed_level) / np.maximum(1.0 - done[sl], 1e-6)
        gm_after[sl] -= f * gm_before[sl]
        done[sl] += f
    out = []
    for arr in (head, gm_before, gm_after):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(t.head)
        out.append(img)
    return out[0], out[1], out[2]


#: Spacing (mm, at most) the ground truth is integrated at, whatever the T1 grid: the edit is sub-voxel and
#: the grey-matter posterior is steep, so point samples on the output grid alone alias it (on the hippocampus a
#: half-voxel shift of the grid moved that truth from -9.2 to -12.9 % at 1 mm and from -13.2 to -7.9 % at 2 mm).
TRUTH_STEP_MM = 0.5


def _fine_box(twin: sitk.Image, mask: np.ndarray) -> sitk.Image:
    """The bounding box (one voxel of margin) of ``mask`` (numpy z, y, x of ``twin``) as a grid of sub-voxels of
    at most ``TRUTH_STEP_MM`` tiling those ``twin`` voxels exactly (their centres, not the coarse ones)."""
    idx = np.argwhere(mask)
    size = np.asarray(twin.GetSize())
    lo = np.maximum(idx.min(0)[::-1] - 1, 0)  # x, y, z
    hi = np.minimum(idx.max(0)[::-1] + 2, size)
    spacing = np.asarray(twin.GetSpacing())
    k = np.ceil(spacing / TRUTH_STEP_MM - 1e-9).astype(int)
    fine = spacing / k
    direction = np.array(twin.GetDirection()).reshape(3, 3)
    origin = np.asarray(twin.TransformIndexToPhysicalPoint([int(v) for v in lo])) + direction @ ((fine - spacing) / 2)
    img = sitk.Image([int(v) for v in (hi - lo) * k], sitk.sitkUInt8)
    img.SetSpacing(fine.tolist())
    img.SetDirection(twin.GetDirection())
    img.SetOrigin(origin.tolist())
    return img


def planted_truth(participant: "Participant", ref: sitk.Image) -> list[dict[str, Any]]:
    """Ground truth of ``participant.tissue_effects`` on the T1 grid ``ref``, one dict per effect:

    ``region``, ``kind``, ``amount`` (percent or mm as planted), ``gm_ml_before`` / ``gm_ml_after`` (mL: the
    grey-matter probability, under the template head's own intensity classes, of the noise-free T1 intensity
    at every point of the region, integrated over the ``ref`` voxels at ``TRUTH_STEP_MM`` (each voxel split
    into sub-voxels; their MNI points decide what is in the region), without and with the effects),
    ``percent`` (their change: the truth to recover; for atrophy it is smaller than the planted ``amount``,
    which is counted on the 1 mm template), ``thinning_mm`` (the mean planted depth over the region's cortex:
    the generator's depth field, every thinning effect's ``amount`` x ``taper_weight``, at the same points,
    weighted by their grey-matter probability before the effects, times the participant's head scale: mm in
    the participant; the planted ``amount`` tapers off towards the ellipsoid's edge, so this is less than
    ``amount``; 0 for atrophy), ``percent_on_grid`` (the same change from the ``ref`` voxel centres alone: what
    the rendered pixels hold at their own sample points, aliasing included; a check of the renderer, not the
    number a pipeline is held to) and ``region_mask`` (how the region is defined: the MNI ellipsoid of
    ``anatomy.REGIONS``, centre RAS and radii mm).
    """
    from incloud_kernel.synth.deform import axial_twin, sample

    effects = tuple(participant.tissue_effects)
    if not effects:
        return []
    tissue = head_tissue()
    head, edited = load_templates().head, edited_head(effects)[0]
    twin, _ = axial_twin(ref)  # same voxel centres as ref: sums over them do not depend on the order
    grid_pts = participant.points(twin)
    mni = region_points_mni(grid_pts)  # (z, y, x, 3): where each region is on ref
    out = []
    for e in effects:
        r = REGIONS[e.region]
        inside = region_rho(e.region, mni) <= 1.0
        b = a = mean_depth = on_grid = 0.0
        if inside.any():
            on_ref = grid_pts[:, inside]
            gb = float(tissue.gm_probability(sample(head, on_ref)).sum())
            on_grid = (float(tissue.gm_probability(sample(edited, on_ref)).sum()) / gb - 1.0) * 100.0 if gb else 0.0
            fine = _fine_box(twin, inside)
            pts = participant.points(fine).reshape(3, -1)
            mni_pts = region_points_mni(pts)
            sub = region_rho(e.region, mni_pts) <= 1.0
            pts, mni_pts = pts[:, sub], mni_pts[sub]
            gm_before = tissue.gm_probability(sample(head, pts)).astype(np.float64)
            gm_after = tissue.gm_probability(sample(edited, pts)).astype(np.float64)
            voxel_ml = float(np.prod(fine.GetSpacing())) / 1000.0
            b, a = float(gm_before.sum()) * voxel_ml, float(gm_after.sum()) * voxel_ml
            depth = np.zeros(pts.shape[1], np.float32)  # overlapping thinnings: the deeper (as edited_head)
            for other in effects:
                if other.kind == "thinning":
                    depth = np.maximum(depth, other.amount * taper_weight(region_rho(other.region, mni_pts)))
            mean_depth = float((gm_before * depth).sum() / gm_before.sum()) if gm_before.sum() > 0 else 0.0
        out.append({
            "region": e.region, "kind": e.kind, "amount": e.amount,
            "gm_ml_before": round(b, 4), "gm_ml_after": round(a, 4),
            "percent": round((a / b - 1.0) * 100.0, 4) if b > 0 else 0.0, "percent_on_grid": round(on_grid, 4),
            "thinning_mm": round(mean_depth * participant.scale, 4) if e.kind == "thinning" else 0.0,
            "region_mask": {"center_ras": list(r.center_ras), "radii_mm": list(r.radii), "space": "MNI152"},
        })
    return out


def effects_from_truth(t1_effects: list[dict[str, Any]]) -> list[TissueEffect]:
    """The ``TissueEffect`` list a study's ``truth.t1_effects`` describes (to re-render the same T1 with
    ``Participant.from_truth(...)`` and ``participant.tissue_effects = effects_from_truth(...)``)."""
    return [TissueEffect(e["region"], e["kind"], float(e["amount"])) for e in t1_effects]


def region_mask_mni(region: str, like: Any = None) -> Any:
    """The region's MNI ellipsoid as a nibabel uint8 mask on nilearn's 1 mm MNI152 grid (or ``like``'s grid):
    what a pipeline working in MNI space sums its grey matter over to compare with ``planted_truth``."""
    import nibabel as nib

    from incloud_kernel.synth.anatomy import mni_path

    ref = nib.load(mni_path("t1")) if like is None else like
    shape = ref.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ras = ijk @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    r = REGIONS[region]
    rho = np.square((ras - np.asarray(r.center_ras)) / np.asarray(r.radii)).sum(-1)
    return nib.Nifti1Image((rho <= 1.0).astype(np.uint8), ref.affine)


def regions_label_image(regions: tuple[str, ...]) -> tuple[Any, dict[int, str]]:
    """The ``regions``' MNI ellipsoids as one nibabel int16 label image on nilearn's 1 mm MNI152 grid (value i+1
    for ``regions[i]``; a later region wins where two overlap) and its ``{value: region}`` table: what a
    pipeline is given as an atlas to report the planted regions by name."""
    import nibabel as nib

    ref = region_mask_mni(regions[0])
    labels = np.zeros(ref.shape, np.int16)
    for i, region in enumerate(regions):
        labels[np.asarray(region_mask_mni(region).dataobj) > 0] = i + 1
    return nib.Nifti1Image(labels, ref.affine), {i + 1: r for i, r in enumerate(regions)}

