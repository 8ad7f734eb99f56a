"""T1-weighted 3D (MPRAGE-like) volumes of a synthetic participant, with the site's scanner effects.

The participant's head is pulled from the template head through their transform chain onto a sagittal
1 mm (``small``: 2 mm) grid, then the site's contrast curve, bias field and Rician noise are applied.
Returns SimpleITK images in scanner LPS space; never writes files.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from incloud_kernel.synth.anatomy import REGIONS, load_templates
from incloud_kernel.synth.deform import Participant, axial_twin, grid, sample
from incloud_kernel.synth.sites import Site

#: Sagittal slab: columns run anterior->posterior (+y), rows head->foot (-z), slices right->left... (-x is
#: right-handed with these two; DICOM only needs the two in-plane axes).
SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
#: Axial: columns right->left (+x), rows anterior->posterior (+y), slices foot->head (+z).
AXIAL = np.eye(3)

#: MPRAGE-like field of view (mm): 240 (A-P) x 240 (S-I) x 176 (R-L).
T1_FOV = (240.0, 240.0, 176.0)


def t1_grid(participant: Participant, voxel_mm: float) -> sitk.Image:
    """The sagittal T1 grid centred on the participant's brain."""
    size = tuple(int(round(f / voxel_mm)) for f in T1_FOV)
    return grid(size, (voxel_mm,) * 3, SAGITTAL, participant.brain_center())


def apply_site(img: np.ndarray, site: Site, rng: np.random.Generator, scale: float = 3000.0) -> np.ndarray:
    """Contrast curve, bias field and Rician noise on a template-intensity array (numpy z, y, x).

    Intensities are normalised by the template's white-matter level (~430) before the curve; ``scale`` is the
    stored value of that level. Returns uint16 values in 0..4095.
    """
    norm = np.clip(np.asarray(img, np.float32) / np.float32(430.0), 0.0, None)
    curved = norm ** np.float32(site.gamma) if site.gamma != 1.0 else norm
    biased = curved * site.bias_field(img.shape[::-1]).transpose(2, 1, 0)
    return rician(biased, site.noise, rng, scale)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise (standard deviation ``sigma`` per channel), times
    ``scale``, as uint16 clipped to 0..4095.

    The complex noise comes from Box-Muller (exact Gaussian pairs: radius ``sigma * sqrt(-2 ln u1)``, angle
    ``2 pi u2``), so |s + n| = sqrt(s^2 + r (2 s cos(theta) + r)) needs two uniforms, one log, one cos and one
    sqrt per voxel: about half the time of two ziggurat normals. float32 throughout, in place; independent
    noise for every call (never reused between volumes).
    """
    shape = np.shape(signal)
    r = rng.random(shape, dtype=np.float32)
    np.subtract(np.float32(1.0), r, out=r)  # (0, 1]
    np.log(r, out=r)
    r *= np.float32(-2.0 * sigma * sigma)
    np.sqrt(r, out=r)  # sigma * sqrt(-2 ln u1)
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(2.0 * np.pi)
    np.cos(out, out=out)
    out *= signal
    out *= np.float32(2.0)
    out += r
    out *= r
    out += np.square(signal, dtype=np.float32)
    np.sqrt(out, out=out)
    out *= np.float32(scale)
    np.clip(out, 0, 4095, out=out)
    return out.astype(np.uint16)


def render_t1(participant: Participant, site: Site, voxel_mm: float, rng: np.random.Generator) -> sitk.Image:
    """The participant's T1w volume as a uint16 SimpleITK image on ``t1_grid``; the template head carries the
    participant's planted grey-matter loss (``tissue_effects``) when there is any."""
    ref = t1_grid(participant, voxel_mm)
    t = load_templates()
    source = t.head
    if participant.tissue_effects:
        from incloud_kernel.synth.atrophy import edited_head

        source = edited_head(tuple(participant.tissue_effects))[0]
    twin, to_ref = axial_twin(ref)
    head = to_ref(sample(source, participant.points(twin)))
    out = sitk.GetImageFromArray(apply_site(head, site, rng))
    out.CopyInformation(ref)
    return out


def region_fractions(participant: Participant, ref: sitk.Image, region: str, with_effects: bool = True) -> np.ndarray:
    """Fraction (0-1) of ``region`` in each voxel of ``ref`` (numpy z, y, x).

    Resamples only a box of ``ref`` around the region (its MNI ellipsoid mapped back through the inverse pose
    and template affine, with a 12 mm margin for the warp and the effects), zero elsewhere.
    """
    return region_fractions_both(participant, ref, region, (with_effects,))[0]


def region_fractions_both(participant: Participant, ref: sitk.Image, region: str,
                          with_effects: tuple[bool, ...] = (True, False), anatomical: bool = False) -> list[np.ndarray]:
    """``region_fractions`` for each value of ``with_effects``, from one evaluation of the chain (the effects
    are applied to a copy of the effect-free points). ``anatomical``: the region placed as the planted
    grey-matter loss places it (the affine, then ``head_to_mni.anatomical_mni``; ``synth.atrophy``)."""
    t = load_templates()
    r = REGIONS[region]
    M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
    o = np.asarray(t.head_to_mni.GetTranslation())
    inv_pose = participant.pose().GetInverse()
    signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
    corners_mni = r.center_lps + signs * np.asarray(r.radii) * 1.6
    corners = [inv_pose.TransformPoint(np.linalg.solve(M, c - o).tolist()) for c in corners_mni]
    idx = np.array([ref.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    margin = 12.0 / np.asarray(ref.GetSpacing())
    lo = np.clip(np.floor(idx.min(0) - margin), 0, None).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + margin).astype(int) + 1, np.asarray(ref.GetSize()))
    outs = [np.zeros(ref.GetSize()[::-1], np.float32) for _ in with_effects]
    if np.any(hi <= lo):
        return outs
    sub = sitk.Image([int(v) for v in hi - lo], sitk.sitkFloat32)
    sub.SetSpacing(ref.GetSpacing())
    sub.SetDirection(ref.GetDirection())
    sub.SetOrigin(ref.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    twin, to_ref = axial_twin(sub)
    plain = participant.points(twin, with_effects=False, to_mni=True)
    for out, effects in zip(outs, with_effects):
        pts = plain
        if effects and participant.effects:
            pts = plain.copy() if False in with_effects else plain
            participant.apply_effects(pts, to_mni=True)
        if anatomical:
            from incloud_kernel.head_to_mni import anatomical_mni

            pts = np.moveaxis(anatomical_mni(np.moveaxis(pts, 0, -1)), -1, 0)
        out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = to_ref(sample(t.region(region), pts))
    return outs
