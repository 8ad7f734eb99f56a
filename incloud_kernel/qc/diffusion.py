"""DWI quality indices: SNR per shell in the corpus callosum as MRIQC 24.0.2 defines it (``cc_snr`` in
``mriqc/qc/diffusion.py``) and head motion (rigid realignment of every volume, Power FD summary as for BOLD).

The b-values and b-vectors (FSL format, voxel axes) are the ``.bval``/``.bvec`` files beside the NIfTI, as
dcm2niix writes them into the archive. Tensor fit with dipy; no FSL/ANTs binaries. Never writes files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from incloud_kernel.qc.images import ImageLike, QCInputError, load
from incloud_kernel.qc.masks import epi_mask, mad
from incloud_kernel.qc.motion import can_realign, fd_summary, framewise_displacement, realign

#: b-values at or below this (s/mm2) are b=0 volumes (MRIQC's ``bval_thres``).
B0_THRESHOLD = 50.0
#: Fewest corpus-callosum voxels MRIQC accepts (``MIN_NUM_CC_MASK``); below it we fall back to white matter.
MIN_CC_VOXELS = 5


def gradient_files(path: str | Path) -> tuple[Path, Path]:
    """The ``.bval`` and ``.bvec`` beside a DWI NIfTI (same name without ``.nii``/``.nii.gz``)."""
    p = Path(path)
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.name[:-4] if p.name.endswith(".nii") else p.stem
    return p.with_name(stem + ".bval"), p.with_name(stem + ".bvec")


def read_gradients(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(bvals (n,), bvecs (n, 3)) from the files beside ``path``; raises ``QCInputError`` when missing."""
    bval, bvec = gradient_files(path)
    if not bval.is_file() or not bvec.is_file():
        raise QCInputError(f"{Path(path).name}: no .bval/.bvec beside the image")
    bvals = np.loadtxt(bval, ndmin=1).ravel()
    bvecs = np.loadtxt(bvec, ndmin=2)
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    return bvals, bvecs


def shells(bvals: np.ndarray, rounding: float = 100.0) -> np.ndarray:
    """Shell b-values (sorted, b=0 excluded): the b-values rounded to ``rounding`` s/mm2."""
    b = np.round(np.asarray(bvals, dtype=float) / rounding) * rounding
    return np.unique(b[np.asarray(bvals) > B0_THRESHOLD])


def world_axes(affine: np.ndarray) -> np.ndarray:
    """For world x, y, z (RAS), the voxel axis closest to it (b-vectors are in voxel axes)."""
    return np.argmax(np.abs(np.asarray(affine)[:3, :3]), axis=1)


def cc_mask(fa: np.ndarray, evec1: np.ndarray, brain: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Corpus callosum: anisotropic (FA >= 0.35) voxels whose principal direction is left-right (colour FA red
    >= 0.4, green and blue <= 0.25: MRIQC ``CCSegmentation`` defaults) within 20 % of the brain's width of
    its mid-sagittal plane."""
    rgb = np.abs(evec1[..., axes]) * fa[..., None]
    cc = brain & (fa >= 0.35) & (rgb[..., 0] >= 0.4) & (rgb[..., 1] <= 0.25) & (rgb[..., 2] <= 0.25)
    ii = np.argwhere(brain)[:, axes[0]]
    if ii.size:
        mid, half = (ii.min() + ii.max()) / 2.0, (ii.max() - ii.min()) * 0.2
        idx = np.arange(brain.shape[axes[0]])
        keep = np.abs(idx - mid) <= max(half, 1.0)
        shape = [1, 1, 1]
        shape[axes[0]] = -1
        cc &= keep.reshape(shape)
    return cc


def cc_snr(b0: np.ndarray, shell_data: list[np.ndarray], shell_bvecs: list[np.ndarray], roi: np.ndarray,
           axes: np.ndarray) -> dict[str, float]:
    """MRIQC ``cc_snr``: noise = MAD of the b=0 signal in the ROI; shell 0 SNR = mean b=0 / noise; for each
    shell the worst case is the volume whose gradient is closest to left-right (strongest attenuation in the
    callosum), the best case the mean of those closest to anterior-posterior and foot-head."""
    noise = mad(b0[roi])
    out = {"snr_cc_shell0": float(b0[roi].mean() / noise) if noise > 0 else 0.0}
    eye = np.eye(3)
    for i, (data, vecs) in enumerate(zip(shell_data, shell_bvecs), start=1):
        world = vecs[:, axes]  # gradient components along the voxel axes nearest world x, y, z
        pick = [int(np.argmin(np.minimum(((world - e) ** 2).sum(1), ((world + e) ** 2).sum(1)))) for e in eye]
        vals = data[roi]
        worst = vals[:, pick[0]].mean()
        best = 0.5 * (vals[:, pick[1]].mean() + vals[:, pick[2]].mean())
        out[f"snr_cc_shell{i}_worst"] = float(worst / noise) if noise > 0 else 0.0
        out[f"snr_cc_shell{i}_best"] = float(best / noise) if noise > 0 else 0.0
    return out


def compute_dwi(img: ImageLike, *, bvals: np.ndarray | None = None, bvecs: np.ndarray | None = None,
                fd_threshold: float = 0.2, fd_radius: float = 50.0) -> dict[str, float]:
    """SNR per shell and motion of one DWI series (4D path or nibabel image; gradients from the files beside
    a path unless given). Keys: ``snr_cc_shell0``, ``snr_cc_shell<i>_worst``/``_best`` and ``bval_shell<i>``
    for each shell i (ascending b), ``cc_roi`` (2 = corpus callosum, 1 = white matter fallback, 0 = brain),
    ``fd_mean``, ``fd_num``, ``fd_perc``, ``motion_estimated`` (0 for volumes too small to realign), ``size_t``. Raises ``QCInputError``."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    if bvals is None or bvecs is None:
        if not isinstance(img, (str, Path)):
            raise QCInputError("a DWI image given in memory needs bvals and bvecs")
        bvals, bvecs = read_gradients(img)
    im = load(img, ndim=4, canonical=False)
    data = np.clip(im.data, 0, None)
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    if len(bvals) != data.shape[3] or bvecs.shape != (data.shape[3], 3):
        raise QCInputError(f"{im.name}: {data.shape[3]} volumes but {len(bvals)} b-values")
    is_b0 = bvals <= B0_THRESHOLD
    if not is_b0.any():
        raise QCInputError(f"{im.name}: no b=0 volume")
    b0_ref = data[..., is_b0].mean(axis=-1)
    brain = epi_mask(b0_ref)
    # b=0 volumes to their mean, diffusion-weighted volumes to theirs: each registration then compares
    # images of similar contrast (one b=0 reference for all adds 0.3-0.4 mm of spurious FD on still data)
    params = np.zeros((data.shape[3], 6))
    hmc = np.empty_like(data)
    for group in (is_b0, ~is_b0):
        if group.any():
            ref = data[..., group].mean(axis=-1)
            params[group], hmc[..., group] = realign(data[..., group], im.affine, reference=ref, mask=brain,
                                                     metric="mattes")
    fd = framewise_displacement(params, fd_radius)
    b0 = hmc[..., is_b0].mean(axis=-1)
    norms = np.linalg.norm(bvecs, axis=1, keepdims=True)
    unit = np.divide(bvecs, norms, out=np.zeros_like(bvecs), where=norms > 0)
    gtab = gradient_table(bvals, bvecs=np.where(is_b0[:, None], 0.0, unit), b0_threshold=B0_THRESHOLD)
    fit = TensorModel(gtab).fit(hmc, mask=brain)
    fa = np.nan_to_num(fit.fa)
    axes = world_axes(im.affine)
    roi, code = cc_mask(fa, np.nan_to_num(fit.evecs[..., 0]), brain, axes), 2.0
    if roi.sum() < MIN_CC_VOXELS:
        roi, code = brain & (fa >= 0.2), 1.0
    if roi.sum() < MIN_CC_VOXELS:
        roi, code = brain, 0.0
    rounded = np.round(bvals / 100.0) * 100.0
    shell_values = shells(bvals)
    data_per_shell = [hmc[..., (rounded == b) & ~is_b0] for b in shell_values]
    vecs_per_shell = [unit[(rounded == b) & ~is_b0] for b in shell_values]
    out = cc_snr(b0, data_per_shell, vecs_per_shell, roi, axes)
    out.update({f"bval_shell{i}": float(b) for i, b in enumerate(shell_values, start=1)})
    out["cc_roi"] = code
    out.update(fd_summary(fd, fd_threshold))
    out["motion_estimated"] = float(can_realign(data.shape))
    out["size_t"] = float(data.shape[3])
    return out
