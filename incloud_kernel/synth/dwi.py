"""Diffusion-weighted series: b=0 plus N directions at b=1000 s/mm2 from a tensor field with known FA and MD.

Each voxel mixes grey matter, white matter (its corpus callosum part oriented left-right, the rest
foot-head), CSF (isotropic free water) and non-brain tissue, with the tissue fractions of the participant's
anatomy; each tissue has one tensor, so FA and MD per region are exact in pure voxels. A ``TractEffect`` plants
a known FA decrease and MD increase in the white matter of one JHU white-matter label (its MNI region mapped
into the head through the participant's own chain, so the pipeline must find it from the pixels). B-values and gradient
directions go in the standard attributes DiffusionBValue (0018,9087) and DiffusionGradientOrientation (0018,9089)
(patient LPS frame), which dcm2niix reads. Never writes anything but the series folder it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from incloud_kernel.synth import headers, writer
from incloud_kernel.synth.anatomy import load_templates
from incloud_kernel.synth.deform import Participant, grid, sample, to_mni
from incloud_kernel.synth.sites import Site
from incloud_kernel.synth.structural import AXIAL, region_fractions, rician

B_VALUE = 1000.0
#: tissue -> (FA, MD mm2/s, b=0 signal, principal direction in LPS)
TISSUES: dict[str, tuple[float, float, float, tuple[float, float, float]]] = {
    "corpus_callosum": (0.75, 0.80e-3, 0.50, (1.0, 0.0, 0.0)),
    "wm": (0.55, 0.75e-3, 0.50, (0.0, 0.0, 1.0)),
    "gm": (0.12, 0.85e-3, 0.65, (0.0, 0.0, 1.0)),
    "csf": (0.0, 3.0e-3, 1.00, (0.0, 0.0, 1.0)),
    "nonbrain": (0.0, 1.0e-3, 0.35, (0.0, 0.0, 1.0)),
}


@dataclass(frozen=True)
class TractEffect:
    """FA times ``fa_factor`` and MD times ``md_factor`` (both tensors' shape kept axially symmetric) in the
    white matter (corpus callosum included) of the JHU white-matter label ``region`` (mricron-data's name),
    dilated by ``margin_mm`` so the label's own voxels are wholly affected even after a registration error of
    that size (the effect is "in the tract", not only in its core)."""

    region: str = "Superior_corona_radiata_L"
    fa_factor: float = 0.80
    md_factor: float = 1.10
    margin_mm: float = 3.0

    @property
    def percent(self) -> dict[str, float]:
        return {"fa": round((self.fa_factor - 1) * 100, 6), "md": round((self.md_factor - 1) * 100, 6)}


@lru_cache(maxsize=4)
def tract_image(region: str, margin_mm: float) -> sitk.Image:
    """The JHU label ``region`` (MNI, 1 mm) dilated by ``margin_mm``, as a 0/1 float SimpleITK image (LPS)."""
    from scipy import ndimage

    from incloud_kernel.deface.geometry import to_sitk
    from incloud_kernel.features.atlases import load_atlas

    atlas = load_atlas("jhu-wm")
    value = next((k for k, name in atlas.labels.items() if name == region), None)
    if value is None:
        raise ValueError(f"no JHU white-matter label named {region!r}")
    labels = np.asarray(atlas.image.dataobj)
    mask = labels == value
    steps = int(round(margin_mm / float(min(atlas.image.header.get_zooms()[:3]))))
    if steps:
        mask = ndimage.binary_dilation(mask, iterations=steps)
    return to_sitk(mask.astype(np.float32), atlas.image.affine)


def directions(n: int) -> np.ndarray:
    """``n`` well-spread unit vectors on a hemisphere (Fibonacci lattice), LPS."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # hemisphere z in (0, 1]
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def tensor(fa: float, md: float, direction: tuple[float, float, float]) -> np.ndarray:
    """The axially symmetric tensor (mm2/s) with this FA, MD and principal direction."""
    a = fa * np.sqrt(3.0 / (9.0 - 6.0 * fa * fa))
    l1, l2 = md * (1 + 2 * a), md * (1 - a)
    e = np.asarray(direction, float) / np.linalg.norm(direction)
    return l2 * np.eye(3) + (l1 - l2) * np.outer(e, e)


def fsl_bvecs(bvecs_lps: np.ndarray, affine_ras: np.ndarray, manufacturer: str = "SIEMENS") -> np.ndarray:
    """The FSL-convention bvecs (image axes, x flipped for a positive-determinant affine) that dcm2niix writes
    for these LPS gradient directions and a NIfTI affine. For GE and Canon, dcm2niix (v1.0.2026) reads the
    standard attribute with x and y negated relative to Siemens/Philips (verified in tests/test_synth_dicom.py)."""
    flip = np.array([1.0, 1.0, 1.0]) if manufacturer.upper().startswith(("GE", "CANON")) else np.array([-1.0, -1.0, 1.0])
    ras = np.asarray(bvecs_lps, float) * flip
    axes = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    out = ras @ axes
    if np.linalg.det(affine_ras[:3, :3]) > 0:
        out[:, 0] *= -1
    return out


def render_dwi(participant: Participant, site: Site, *, voxel_mm: float, matrix: int, slices: int, n_dirs: int,
               rng: np.random.Generator, tract: TractEffect | None = None, gradients: np.ndarray | None = None,
               ) -> tuple[sitk.Image, np.ndarray, dict[str, Any]]:
    """(grid, signal (volumes, z, y, x), truth) of one DWI series; ``tract`` plants its FA/MD change;
    ``gradients`` (n_dirs, 3) LPS unit vectors replace the default directions in the signal only (the truth
    keeps the default ones: a test plants head rotation as "the anatomy saw another gradient")."""
    t = load_templates()
    ref = grid((matrix, matrix, slices), (voxel_mm,) * 3, AXIAL, participant.brain_center())
    head_points = participant.points(ref)
    head = np.clip(sample(t.head, head_points) / np.float32(430.0), 0, 1.5)
    mni_points = to_mni(head_points)
    del head_points
    gm, wm, csf = (sample(img, mni_points) for img in (t.gm, t.wm, t.csf))
    in_tract = sample(tract_image(tract.region, tract.margin_mm), mni_points) if tract else None
    del mni_points
    cc = np.minimum(region_fractions(participant, ref, "corpus_callosum"), wm)
    brain = np.clip(gm + wm + csf, 0, 1)
    fractions = {"corpus_callosum": cc, "wm": wm - cc, "gm": gm, "csf": csf, "nonbrain": head * (1 - brain)}
    tissues = dict(TISSUES)
    if tract is not None:
        for name in ("corpus_callosum", "wm"):
            fa, md, s0, e = TISSUES[name]
            tissues[f"{name}_tract"] = (fa * tract.fa_factor, md * tract.md_factor, s0, e)
            fractions[f"{name}_tract"] = fractions[name] * in_tract
            fractions[name] = fractions[name] * (1 - in_tract)
    bvals = np.array([0.0] + [B_VALUE] * n_dirs)
    bvecs = np.vstack([[0.0, 0.0, 0.0], directions(n_dirs)])
    seen = bvecs if gradients is None else np.vstack([[0.0, 0.0, 0.0], gradients])
    # signal(volume, voxel) = sum over tissues of attenuation(volume, tissue) * s0(tissue) * fraction(tissue, voxel)
    weights = np.stack([s0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", seen, tensor(fa, md, e), seen))
                        for fa, md, s0, e in tissues.values()], 1).astype(np.float32)  # (volumes, tissues)
    tissue = np.stack([np.asarray(fractions[name], np.float32).ravel() for name in tissues])  # (tissues, voxels)
    data = (weights @ tissue).reshape((len(bvals),) + gm.shape)
    bias = site.bias_field(ref.GetSize()).transpose(2, 1, 0)
    sigma = site.noise * 0.5
    data *= bias[None]
    out = rician(data, sigma, rng, 3000.0)
    truth = {
        "b_value": B_VALUE, "bvals": bvals.tolist(), "bvecs_lps": np.round(bvecs, 6).tolist(),
        "voxel_mm": voxel_mm, "matrix": [matrix, matrix, slices],
        "regions": {name: {"fa": fa, "md_mm2_s": md, "eigenvalues": np.linalg.eigvalsh(tensor(fa, md, e))[::-1].tolist(),
                           "principal_direction_lps": list(e)} for name, (fa, md, _, e) in tissues.items()},
        "tract_effect": None if tract is None else {"atlas": "jhu-wm", "region": tract.region,
                                                    "margin_mm": tract.margin_mm, "percent": tract.percent},
        "region_definition": "tissue fractions of the MNI152 2009c maps; corpus_callosum is the white matter "
                             "inside incloud_kernel.synth.anatomy.REGIONS['corpus_callosum']",
    }
    return ref, out, truth


def write_dwi(study_dir: Path, study_base: Dataset, ctx: headers.StudyContext, participant: Participant,
              site: Site, number: int, clock: float, ts: str, *, small: bool, directions: int | None,
              rng: np.random.Generator, reference: tuple[str, str] | None,
              enhanced: bool = False, tract: TractEffect | None = None) -> tuple[Any, dict[str, Any]]:
    """Write the DWI series (one file per slice per volume, or with ``enhanced`` one Enhanced MR multi-frame
    file with an MR Diffusion Sequence per frame) and return (SeriesTruth, dwi truth); ``tract`` plants an
    FA/MD change (recorded in the truth's ``tract_effect``)."""
    from incloud_kernel.synth.cohort import SeriesTruth

    voxel, matrix, slices = (4.0, 48, 28) if small else (2.5, 88, 54)
    n_dirs = directions or (30 if small else 32)
    ref, data, truth = render_dwi(participant, site, voxel_mm=voxel, matrix=matrix, slices=slices, n_dirs=n_dirs,
                                  rng=rng, tract=tract)
    idn = ctx.identity
    base, suid, start = headers.start_series(ctx, study_base, number, clock, "ep2d_diff_b1000")
    headers.mr_image_attributes(
        base, site=site, scanning_sequence="EP", sequence_variant="SK\\SP", acquisition_type="2D", tr_ms=8000,
        te_ms=85, ti_ms=None, flip_deg=90, echo_train=matrix, sequence_name="ep_b1000", slice_thickness=voxel,
        spacing_between=voxel, matrix=(matrix, matrix), phase_dir="COL", bandwidth=1700,
        image_type=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"])
    base.AcquisitionDate = idn.study_date
    base.ContentDate = idn.study_date
    base.WindowCenter = "1000"
    base.WindowWidth = "2000"
    iop, spacing, positions, _ = writer.geometry(ref)
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    folder = study_dir / f"series{number:03d}"
    if enhanced:
        from incloud_kernel.synth import enhanced as enh

        volumes = len(truth["bvals"])
        base.PixelSpacing, base.ImageOrientationPatient, base.ContentTime = spacing, iop, start
        shared = enh.to_enhanced(base, dimension_uid=ctx.uids("dimension", number), flavor="DIFFUSION",
                                 contrast="DIFFUSION", datetime0=idn.study_date + start, duration_ms=volumes * 8000.0,
                                 diffusion=True)
        frames = enh.per_frame_groups(
            positions, volumes, lambda v, k: idn.study_date + headers.time_plus(idn.study_time, clock + v * 8.0 + k * 8.0 / slices),
            8000.0 / slices, diffusion=[(b, g if b > 0 else None) for b, g in zip(truth["bvals"], truth["bvecs_lps"])])
        iuids = [ctx.uids("instance", number, 0)]
        writer.write_multiframe(folder / "IM00001.dcm", base, data.reshape(-1, matrix, matrix),
                                sop_class_uid=headers.ENHANCED_MR_STORAGE, instance_uid=iuids[0],
                                shared_groups=shared, per_frame_groups=frames, transfer_syntax=ts, reference=reference)
        sop = headers.ENHANCED_MR_STORAGE
    else:
        instances = []
        for v, (b, g) in enumerate(zip(truth["bvals"], truth["bvecs_lps"])):
            acq = headers.time_plus(idn.study_time, clock + v * 8.0)
            for k in range(slices):
                attrs = {
                    "ImagePositionPatient": positions[k], "ImageOrientationPatient": iop, "PixelSpacing": spacing,
                    "SliceLocation": f"{float(np.dot(normal, positions[k])):.4f}", "AcquisitionNumber": v + 1,
                    "AcquisitionTime": acq, "ContentTime": acq, "DiffusionBValue": float(b),
                    "DiffusionDirectionality": "DIRECTIONAL" if b > 0 else "NONE",
                }
                if b > 0:
                    attrs["DiffusionGradientOrientation"] = [float(x) for x in g]
                instances.append(writer.Instance(data[v, k], attrs))
        iuids = [ctx.uids("instance", number, k) for k in range(len(instances))]
        writer.write_series(folder, base, instances, sop_class_uid=headers.MR_IMAGE_STORAGE, instance_uids=iuids,
                            transfer_syntax=ts, reference=reference)
        sop = headers.MR_IMAGE_STORAGE
    s = SeriesTruth(kind="dwi", number=number, series_instance_uid=suid, description="ep2d_diff_b1000",
                    path=str(folder), instance_uids=iuids, transfer_syntax=ts, sop_class_uid=sop,
                    shape=[matrix, matrix, slices, len(truth["bvals"])], voxel_mm=[voxel] * 3)
    return s, truth
