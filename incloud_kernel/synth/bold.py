"""BOLD EPI series: T2*-like contrast, simulated head motion, slice timing and planted low-frequency signals.

Each volume is the participant's static EPI image (rendered once on a grid twice as fine) pulled through that
volume's rigid head motion, plus a 0.01-0.08 Hz signal in chosen regions and thermal noise. Motion parameters
use SimpleITK's ``Euler3DTransform`` convention about ``motion_center_lps``: the transform maps a point of
volume 0 to the same anatomy in volume t (what registering volume t to volume 0 recovers); angles in degrees,
translations in mm, LPS. Slice timing is interleaved and written as per-slice AcquisitionTime (what dcm2niix
reads for Siemens 2D; other vendors' converters get the same times from it). Never writes anything but the series folder it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from incloud_kernel.synth import headers, writer
from incloud_kernel.synth.anatomy import load_templates
from incloud_kernel.synth.deform import Participant, grid, resample, sample, to_mni
from incloud_kernel.synth.sites import Site
from incloud_kernel.synth.structural import AXIAL, region_fractions, rician

TR_S = 2.0
#: Fine-grid voxels rendered beyond the field of view on each side (4 = one 4 mm voxel at ``small``).
FINE_MARGIN = 4
#: Planted signals: region -> (frequency Hz, amplitude as a fraction of the baseline).
SIGNALS: dict[str, tuple[float, float]] = {
    "posterior_cingulate": (0.03, 0.03),
    "medial_prefrontal": (0.03, 0.03),
    "visual_cortex": (0.05, 0.03),
}


@dataclass(frozen=True)
class PlantedSignal:
    """A sinusoid of ``frequency_hz`` and ``amplitude`` (fraction of the static EPI) planted where ``mask`` is
    non-zero: ``mask`` is an MNI-space image (SimpleITK, LPS; values 0-1, e.g. one atlas region's label as 0/1)
    sampled through the participant's head-to-MNI chain, so the signal follows the anatomy the feature
    pipeline will parcellate; without a mask, ``name`` is one of ``anatomy.REGIONS``."""

    name: str
    frequency_hz: float
    amplitude: float
    mask: sitk.Image | None = None


def default_signals() -> list[PlantedSignal]:
    """The QC cohort's planted signals (``SIGNALS``)."""
    return [PlantedSignal(r, f, a) for r, (f, a) in SIGNALS.items()]


def motion_parameters(volumes: int, rng: np.random.Generator, max_mm: float = 1.5,
                      max_deg: float = 1.5) -> np.ndarray:
    """(volumes, 6) smooth random motion [rx, ry, rz deg, tx, ty, tz mm], zero at volume 0, within the maxima."""
    steps = rng.normal(0.0, 1.0, (volumes, 6))
    steps[0] = 0.0
    walk = np.cumsum(steps, axis=0)
    kernel = np.hanning(7)
    kernel /= kernel.sum()
    smooth = np.stack([np.convolve(np.pad(walk[:, i], 3, mode="edge"), kernel, "valid") for i in range(6)], 1)
    smooth -= smooth[0]
    peak = np.abs(smooth).max(0)
    limits = np.array([max_deg] * 3 + [max_mm] * 3) * rng.uniform(0.5, 1.0, 6)
    return smooth / np.where(peak > 0, peak, 1.0) * limits


def euler(params: np.ndarray, center: np.ndarray) -> sitk.Euler3DTransform:
    """The Euler3D transform of one row of ``motion_parameters`` about ``center`` (LPS mm)."""
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in center])
    t.SetRotation(*np.deg2rad(params[:3]))
    t.SetTranslation([float(v) for v in params[3:]])
    return t


def slice_times(n_slices: int, tr: float = TR_S) -> list[float]:
    """Interleaved ascending (odd slices first, as Siemens for an even count: 2, 4, ... then 1, 3, ...)."""
    order = list(range(1, n_slices, 2)) + list(range(0, n_slices, 2)) if n_slices % 2 == 0 else \
        list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    times = [0.0] * n_slices
    for rank, k in enumerate(order):
        times[k] = round(rank * tr / n_slices, 4)
    return times


def render_bold(participant: Participant, site: Site, *, voxel_mm: float, matrix: int, slices: int, volumes: int,
                rng: np.random.Generator, signals: Sequence[PlantedSignal] | None = None,
                max_motion: tuple[float, float] = (1.5, 1.5)) -> tuple[sitk.Image, np.ndarray, dict[str, Any]]:
    """(reference grid, uint16 array (volumes, z, y, x), truth dict). ``signals`` defaults to
    ``default_signals()``; an empty list plants none. ``max_motion`` (mm, degrees) bounds the head motion."""
    signals = default_signals() if signals is None else list(signals)
    t = load_templates()
    center = participant.brain_center()
    ref = grid((matrix, matrix, slices), (voxel_mm,) * 3, AXIAL, center)
    # the fine grid overlaps the acquired field of view by FINE_MARGIN fine voxels on every side, so head motion
    # brings anatomy (not zeros) into the edge slices
    m = 2 * FINE_MARGIN
    fine = grid((matrix * 2 + m, matrix * 2 + m, slices * 2 + m), (voxel_mm / 2,) * 3, AXIAL, center)
    head_points = participant.points(fine)
    head = sample(t.head, head_points) / np.float32(430.0)
    mni_points = to_mni(head_points)
    del head_points
    gm, wm, csf = (sample(img, mni_points) for img in (t.gm, t.wm, t.csf))
    masks = {s.name: sample(s.mask, mni_points) for s in signals if s.mask is not None}
    del mni_points
    brain = np.clip(gm + wm + csf, 0, 1)
    static = 0.55 * gm + 0.4 * wm + 0.9 * csf + 0.12 * head * (1.0 - brain)
    static = (static ** site.gamma if site.gamma != 1.0 else static).astype(np.float32)
    frames_t = np.arange(volumes) * TR_S
    signal_maps = []
    for planted in signals:
        frac = masks[planted.name] if planted.name in masks else region_fractions(participant, fine, planted.name)
        freq, amp = planted.frequency_hz, planted.amplitude
        course = np.sin(2 * np.pi * freq * frames_t)
        nz = np.argwhere(frac > 0)
        if len(nz):  # keep only the region's bounding box: the per-volume sum then touches few voxels
            box = tuple(slice(int(a), int(b) + 1) for a, b in zip(nz.min(0), nz.max(0)))
            signal_maps.append((box, frac[box] * static[box], amp * course))
    motion = motion_parameters(volumes, rng, max_mm=max_motion[0], max_deg=max_motion[1])
    bias = site.bias_field(ref.GetSize()).transpose(2, 1, 0)
    sigma = site.noise * 0.6
    out = np.empty((volumes, slices, matrix, matrix), np.uint16)
    for v in range(volumes):
        vol = static.copy()
        for box, base, course in signal_maps:
            vol[box] += base * np.float32(course[v])
        fine_img = sitk.GetImageFromArray(vol)
        fine_img.CopyInformation(fine)
        moved = resample(fine_img, ref, euler(motion[v], center).GetInverse())
        out[v] = rician(moved * bias, sigma, rng, 2500.0)
    truth = {
        "tr_s": TR_S, "volumes": volumes, "voxel_mm": voxel_mm, "matrix": [matrix, matrix, slices],
        "slice_timing_s": slice_times(slices), "slice_order": "interleaved ascending (slice axis foot->head)",
        "motion": [[round(float(x), 6) for x in row] for row in motion],
        "motion_convention": "SimpleITK Euler3DTransform [rx, ry, rz deg, tx, ty, tz mm] about motion_center_lps; "
                             "maps volume-0 points to volume-t points (LPS)",
        "motion_center_lps": [float(v) for v in center],
        "signals": {s.name: {"frequency_hz": s.frequency_hz, "amplitude_fraction": s.amplitude} for s in signals},
    }
    return ref, out, truth


def write_bold(study_dir: Path, study_base: Dataset, ctx: headers.StudyContext, participant: Participant,
               site: Site, number: int, clock: float, ts: str, *, small: bool, volumes: int | None,
               rng: np.random.Generator, reference: tuple[str, str] | None,
               enhanced: bool = False) -> tuple[Any, dict[str, Any]]:
    """Write the BOLD series (one file per slice per volume, or with ``enhanced`` one Enhanced MR multi-frame
    file) and return (SeriesTruth, bold truth)."""
    from incloud_kernel.synth.cohort import SeriesTruth

    voxel, matrix, slices = (4.0, 48, 32) if small else (3.5, 64, 40)
    volumes = volumes or (12 if small else 100)
    ref, data, truth = render_bold(participant, site, voxel_mm=voxel, matrix=matrix, slices=slices,
                                   volumes=volumes, rng=rng)
    idn = ctx.identity
    base, suid, start = headers.start_series(ctx, study_base, number, clock, "ep2d_bold_rest")
    headers.mr_image_attributes(
        base, site=site, scanning_sequence="EP", sequence_variant="SK", acquisition_type="2D", tr_ms=TR_S * 1000,
        te_ms=30, ti_ms=None, flip_deg=80, echo_train=matrix, sequence_name="epfid2d1_64", slice_thickness=voxel,
        spacing_between=voxel, matrix=(matrix, matrix), phase_dir="COL", bandwidth=2232,
        image_type=["ORIGINAL", "PRIMARY", "M", "ND"])
    base.AcquisitionDate = idn.study_date
    base.ContentDate = idn.study_date
    base.NumberOfTemporalPositions = volumes
    base.WindowCenter = "1200"
    base.WindowWidth = "2400"
    iop, spacing, positions, _ = writer.geometry(ref)
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    times = truth["slice_timing_s"]
    folder = study_dir / f"series{number:03d}"
    if enhanced:
        from incloud_kernel.synth import enhanced as enh

        base.PixelSpacing, base.ImageOrientationPatient, base.ContentTime = spacing, iop, start
        shared = enh.to_enhanced(base, dimension_uid=ctx.uids("dimension", number), flavor="FMRI",
                                 contrast="T2_STAR", datetime0=idn.study_date + start,
                                 duration_ms=volumes * TR_S * 1000, diffusion=False)
        frames = enh.per_frame_groups(
            positions, volumes, lambda v, k: idn.study_date + headers.time_plus(idn.study_time, clock + v * TR_S + times[k]),
            TR_S * 1000 / slices)
        iuids = [ctx.uids("instance", number, 0)]
        writer.write_multiframe(folder / "IM00001.dcm", base, data.reshape(-1, matrix, matrix),
                                sop_class_uid=headers.ENHANCED_MR_STORAGE, instance_uid=iuids[0],
                                shared_groups=shared, per_frame_groups=frames, transfer_syntax=ts, reference=reference)
        sop = headers.ENHANCED_MR_STORAGE
    else:
        instances = []
        for v in range(volumes):
            for k in range(slices):
                acq = headers.time_plus(idn.study_time, clock + v * TR_S + times[k])
                instances.append(writer.Instance(data[v, k], {
                    "ImagePositionPatient": positions[k], "ImageOrientationPatient": iop, "PixelSpacing": spacing,
                    "SliceLocation": f"{float(np.dot(normal, positions[k])):.4f}",
                    "AcquisitionNumber": v + 1, "TemporalPositionIdentifier": v + 1,
                    "AcquisitionTime": acq, "ContentTime": acq,
                }))
        iuids = [ctx.uids("instance", number, k) for k in range(len(instances))]
        writer.write_series(folder, base, instances, sop_class_uid=headers.MR_IMAGE_STORAGE, instance_uids=iuids,
                            transfer_syntax=ts, reference=reference)
        sop = headers.MR_IMAGE_STORAGE
    s = SeriesTruth(kind="bold", number=number, series_instance_uid=suid, description="ep2d_bold_rest",
                    path=str(folder), instance_uids=iuids, transfer_syntax=ts, sop_class_uid=sop,
                    shape=[matrix, matrix, slices, volumes], voxel_mm=[voxel] * 3)
    return s, truth
