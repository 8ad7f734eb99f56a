"""QC pictures of the T1w feature extraction for the review dashboard: registration, segmentation, parcellation.

Each picture is one PNG of three orthogonal slices through the brain's centre (sagittal facing right, i.e.
anterior on the right; coronal and axial in neurological convention, the subject's right on the picture's
right), drawn with matplotlib's Agg backend:

- registration: the T1w resampled into MNI space (through the full warp), with the template's brain outline
  (red) and its grey/white boundary (yellow): a good fit has both lying on the subject's edges;
- segmentation: the bias-corrected T1w with the grey-matter (yellow) and white-matter (cyan) boundaries;
- parcellation: the T1w with the atlas regions (warped back to the T1w) coloured over the grey matter.

Pictures carry no header value and no identifier (only the pipeline's words). This module writes only the PNG
paths it is given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = centre
    return [volume[i, :, :].T, volume[:, j, :].T, volume[:, :, k].T]


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return tuple(int(n // 2) for n in mask.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in np.round(idx.mean(0)))  # type: ignore[return-value]


def _aspects(zooms: np.ndarray) -> list[float]:
    """Display aspect (row mm / column mm) of each view, so anisotropic voxels look right."""
    x, y, z = (float(v) for v in zooms)
    return [z / y, z / x, y / x]


def _figure(background: np.ndarray, zooms: np.ndarray, centre: tuple[int, int, int], title: str,
            contours: list[tuple[np.ndarray, str]] = (), overlay: np.ndarray | None = None) -> "object":
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.4), dpi=90, facecolor="black")
    lo, hi = np.percentile(background[background > 0], [1, 99.5]) if (background > 0).any() else (0, 1)
    names = ("sagittal", "coronal", "axial")
    for n, (bg, aspect) in enumerate(zip(_slices(background, centre), _aspects(zooms))):
        ax = fig.add_subplot(1, 3, n + 1)
        ax.imshow(bg, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if overlay is not None:
            lab = _slices(overlay, centre)[n].astype(float)
            lab = np.ma.masked_where(lab <= 0, lab)
            ax.imshow(lab, cmap="tab20", origin="lower", alpha=0.45, aspect=aspect, interpolation="nearest",
                      vmin=1, vmax=max(float(overlay.max()), 2.0))
        for volume, colour in contours:
            sl = _slices(volume.astype(np.float32), centre)[n]
            if sl.max() > 0.5 > sl.min():
                ax.contour(sl, levels=[0.5], colors=[colour], linewidths=0.8, origin="lower")
        ax.set_title(names[n], color="white", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout()
    return fig


def registration_png(path: Path, t1_in_mni: np.ndarray, mni_mask: np.ndarray, mni_gm: np.ndarray,
                     mni_wm: np.ndarray, zooms: np.ndarray) -> Path:
    """T1w in MNI space with the template brain outline and grey/white boundary."""
    fig = _figure(t1_in_mni, zooms, _centre(mni_mask > 0.5), "registration: T1w in MNI152 2009c, template "
                  "brain (red) and grey/white boundary (yellow)",
                  contours=[(mni_mask > 0.5, "red"), ((mni_wm > mni_gm) & (mni_mask > 0.5), "yellow")])
    fig.savefig(path, facecolor="black")
    return Path(path)


def segmentation_png(path: Path, t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray,
                     zooms: np.ndarray) -> Path:
    """Bias-corrected T1w with grey-matter (outer) and white-matter boundaries and the brain mask."""
    fig = _figure(t1, zooms, _centre(brain), "segmentation: brain mask (red), grey matter (yellow), "
                  "white matter (cyan)", contours=[(brain, "red"), (gm + wm, "yellow"), (wm, "cyan")])
    fig.savefig(path, facecolor="black")
    return Path(path)


def parcellation_png(path: Path, t1: np.ndarray, labels: np.ndarray, gm: np.ndarray, brain: np.ndarray,
                     zooms: np.ndarray, atlas: str) -> Path:
    """T1w with the atlas regions (warped to the T1w) over its grey matter."""
    shown = np.where(gm >= 0.5, labels, 0)
    fig = _figure(t1, zooms, _centre(brain), f"parcellation: {atlas} regions on the grey matter",
                  overlay=shown)
    fig.savefig(path, facecolor="black")
    return Path(path)


__all__ = ["parcellation_png", "registration_png", "segmentation_png"]
