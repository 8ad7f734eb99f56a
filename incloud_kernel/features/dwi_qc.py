"""QC pictures of the DWI feature extraction for the review dashboard, as the T1w (``t1_qc``) and BOLD stages
write theirs: what a reviewer needs to accept or reject one series' FA/MD rows.

- ``tracts_png``: FA in MNI space, six axial slices, each white-matter atlas label (JHU by default) outlined in
  its own colour: the bright FA tracts (corpus callosum, internal capsule, corona radiata) must sit inside their
  outlines, or the regional means are of the wrong tissue;
- ``registration_png``: the mean b=0 resampled into MNI space through the whole chain (b=0 -> T1w -> MNI, or
  b=0 -> MNI), under the template's brain outline (red) and white-matter boundary (yellow);
- ``motion_png``: per volume, the displacement of a 100 mm cube's corners (mm), the rotation (degrees) and the
  stretch/shear part of the fitted transform (% away from a rigid one: eddy currents, or a bad fit), b=0
  volumes marked, against each volume's b-value.

Pictures carry no header value and no identifier (only the pipeline's words), are drawn with matplotlib's Agg
backend and nilearn's plotting, and this module writes only the PNG paths it is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Axial cuts (MNI z, mm) of the tracts picture: brainstem/cerebellar peduncles to the centrum semiovale.
TRACT_CUTS = (-30, -14, 0, 12, 24, 36)


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Each label's one-voxel outline in the axial plane (the label value on its border voxels, 0 elsewhere):
    a filled overlay would hide the FA underneath."""
    edge = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            edge |= labels != np.roll(labels, shift, axis=axis)
    return np.where(edge & (labels > 0), labels, 0).astype(np.int16)


def tracts_png(path: Path, fa_mni: Any, labels_on_grid: np.ndarray, atlas: str) -> Path:
    """FA (MNI) with ``labels_on_grid`` (the atlas on the FA's grid) outlined, six axial slices."""
    import nibabel as nib

    _agg()
    from matplotlib.colors import ListedColormap
    from nilearn import plotting

    edges = label_edges(np.asarray(labels_on_grid))
    rng = np.random.default_rng(0)  # fixed colours: the same tract looks the same in every series' picture
    colours = ListedColormap(np.c_[rng.uniform(0.35, 1.0, (256, 3)), np.ones(256)])
    display = plotting.plot_img(fa_mni, display_mode="z", cut_coords=TRACT_CUTS, cmap="gray", vmin=0.0, vmax=0.8,
                                title=f"FA in MNI with {atlas} tracts outlined: bright tracts inside their outlines",
                                draw_cross=False, annotate=True, black_bg=True, colorbar=False)
    display.add_overlay(nib.Nifti1Image(edges.astype(np.float32), fa_mni.affine), cmap=colours, vmin=1, vmax=255,
                        threshold=0.5, transparency=0.9)
    display.savefig(str(path), dpi=90)
    display.close()
    return Path(path)


def registration_png(path: Path, b0_mni: Any, route: str) -> Path:
    """The mean b=0 in MNI under the template's brain outline (red) and white-matter boundary (yellow)."""
    _agg()
    from nilearn import plotting
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_wm_template

    how = "via T1w" if route == "t1" else "direct"
    display = plotting.plot_anat(b0_mni, display_mode="ortho", cut_coords=(0, -18, 12), draw_cross=False,
                                 annotate=True, black_bg=True, dim=-0.2,
                                 title=f"b=0 in MNI ({how}): brain red, WM yellow")
    display.add_contours(load_mni152_brain_mask(resolution=2), levels=[0.5], colors="r", linewidths=1.0)
    display.add_contours(load_mni152_wm_template(resolution=2), levels=[0.5], colors="y", linewidths=0.7)
    display.savefig(str(path), dpi=90)
    display.close()
    return Path(path)


def transform_parts(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per volume (4x4 LPS matrices): the rotation angle (degrees) and the largest stretch or shear of the
    linear part away from a rotation, in % (the polar decomposition's symmetric factor's eigenvalues - 1)."""
    angles, stretch = [], []
    for m in matrices:
        u, s, vt = np.linalg.svd(m[:3, :3])
        rot = u @ vt
        angles.append(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))
        stretch.append(100.0 * float(np.max(np.abs(s - 1.0))))
    return np.asarray(angles), np.asarray(stretch)


def motion_png(path: Path, bvals: np.ndarray, matrices: np.ndarray, displacement_mm: np.ndarray,
               b0_threshold: float = 50.0) -> Path:
    """Per-volume displacement (mm), rotation (degrees) and stretch (%) of the correction, b=0 volumes marked."""
    _agg()
    from matplotlib.figure import Figure

    angles, stretch = transform_parts(np.asarray(matrices))
    volumes = np.arange(len(bvals))
    b0 = np.asarray(bvals) <= b0_threshold
    fig = Figure(figsize=(9, 5.2), dpi=90)
    # (values, label, colour, smallest top of the axis: sub-threshold jitter is not drawn as a mountain)
    panels = ((displacement_mm, "displacement (mm)", "#1d4ed8", 1.0), (angles, "rotation (deg)", "#6d28d9", 1.0),
              (stretch, "stretch/shear (%)", "#b45309", 2.0))
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (values, label, colour, floor) in zip(axes, panels):
        ax.plot(volumes, values, color=colour, linewidth=1.1, marker=".", markersize=4)
        ax.plot(volumes[b0], np.asarray(values)[b0], "o", color="#16a34a", markersize=5, label="b=0")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0.0, top=max(float(np.max(values)) * 1.15 if len(values) else 0.0, floor))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[0].set_title(f"correction per volume ({len(bvals)} volumes, {int(b0.sum())} b=0; b-values "
                      f"{', '.join(f'{b:g}' for b in sorted(set(np.round(np.asarray(bvals)[~b0], -1))))})",
                      fontsize=9)
    axes[-1].set_xlabel("volume", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def native_png(path: Path, fa: Any, mask: np.ndarray) -> Path:
    """FA in the series' own space (a field of view too small to register: no MNI pictures)."""
    from incloud_kernel.features.t1_qc import _centre, _figure

    data = np.asarray(fa.dataobj, np.float32)
    fig = _figure(data, np.asarray(fa.header.get_zooms()[:3]), _centre(mask), "FA (native space; too small a "
                  "field of view to register)")
    fig.savefig(path, facecolor="black")
    return Path(path)


__all__ = ["TRACT_CUTS", "label_edges", "motion_png", "native_png", "registration_png", "tracts_png",
           "transform_parts"]
