"""BOLD quality indices as MRIQC 24.0.2 defines them (``mriqc/qc/functional.py``, ``mriqc/interfaces/
functional.py`` and the nipype/AFNI tools its workflow calls): tSNR, DVARS (standardised, raw, voxelwise),
FD (Power, 50 mm sphere), GSR x/y, AOR, AQI, GCOR, plus SNR, FBER, EFC and FWHM of the mean EPI.

Our own numpy/SimpleITK implementation of the published definitions (no AFNI binaries). Per-volume FD and
DVARS go to a TSV so that thresholds can be changed later without realigning again (``outliers.py``).
Never writes anything but that TSV, and only where ``out_dir`` says.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from incloud_kernel.qc import spatial
from incloud_kernel.qc.images import ImageLike, QCInputError, load
from incloud_kernel.qc.masks import epi_mask
from incloud_kernel.qc.motion import PARAMS, can_realign, fd_summary, framewise_displacement, realign

#: MRIQC's default FD threshold (mm) for ``fd_num`` / ``fd_perc``.
FD_THRESHOLD = 0.2
#: Columns of the per-volume TSV (one row per volume; "n/a" where a value needs the previous volume).
TSV_COLUMNS = ("framewise_displacement", "dvars_std", "dvars_nstd", "dvars_vstd", "aor", "aqi") + PARAMS


def tsnr_map(data: np.ndarray) -> np.ndarray:
    """Temporal SNR per voxel: mean over time / SD over time (ddof 0), 0 where SD <= 1e-3 (nipype ``TSNR``,
    as MRIQC runs it on the realigned series without detrending; Krueger 2001)."""
    mean = data.mean(axis=-1)
    sd = data.std(axis=-1)
    out = np.zeros_like(mean)
    ok = sd > 1.0e-3
    out[ok] = mean[ok] / sd[ok]
    return out


def _ar1(x: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row by the Yule-Walker equation (biased autocovariances of the demeaned
    series), the estimate nipype takes from nitime's ``AR_est_YW`` for DVARS."""
    x = x - x.mean(axis=1, keepdims=True)
    r0 = (x * x).sum(axis=1)
    r1 = (x[:, 1:] * x[:, :-1]).sum(axis=1)
    return np.divide(r1, r0, out=np.zeros_like(r0), where=r0 > 0)


def dvars(data: np.ndarray, mask: np.ndarray, intensity_normalization: float = 1000.0) -> np.ndarray:
    """DVARS per volume 1..t-1 as (standardised, raw, voxelwise-standardised) columns (nipype
    ``compute_dvars``, which MRIQC's ``ComputeDVARS`` calls; Power 2012, Nichols 2013).

    In-mask series are scaled so their grand median is ``intensity_normalization``; the raw DVARS is the RMS
    over voxels of the temporal difference; the standardised one divides it by the mean predicted SD of the
    difference, sqrt(2 (1 - AR1)) times each voxel's robust SD (IQR / 1.349, lower interpolation); the
    voxelwise one standardises each voxel's difference by its own predicted SD before the RMS. Zero-variance
    voxels are dropped.
    """
    m = data[mask > 0].astype(np.float64)
    if intensity_normalization:
        m = m / np.median(m) * intensity_normalization
    sd = (np.percentile(m, 75, axis=1, method="lower") - np.percentile(m, 25, axis=1, method="lower")) / 1.349
    keep = sd > 0
    m, sd = m[keep], sd[keep]
    if m.shape[0] == 0 or m.shape[1] < 2:
        return np.zeros((max(data.shape[-1] - 1, 0), 3))
    diff_sd = np.sqrt(np.clip(2.0 * (1.0 - _ar1(m)), 0, None)) * sd
    diff = np.diff(m, axis=1)
    nstd = np.sqrt((diff ** 2).mean(axis=0))
    std = nstd / diff_sd.mean() if diff_sd.mean() > 0 else np.zeros_like(nstd)
    ok = diff_sd > 0
    vstd = np.sqrt(((diff[ok] / diff_sd[ok, None]) ** 2).mean(axis=0)) if ok.any() else np.zeros_like(nstd)
    return np.column_stack([std, nstd, vstd])


def gsr(mean_epi: np.ndarray, mask: np.ndarray, direction: str) -> float:
    """Ghost-to-signal ratio along ``direction`` ("x" or "y", canonical RAS axes) (Giannelli 2010; MRIQC
    ``gsr``): the brain mask shifted by half the field of view, minus the brain, is the ghost region; the
    rest of the background is non-ghost; GSR = (mean ghost - mean non-ghost) / median brain."""
    axis = {"x": 0, "y": 1, "z": 2}[direction]
    brain = (mask > 0).astype(np.int8)
    ghost = np.roll(brain, brain.shape[axis] // 2, axis=axis) * (1 - brain)
    labels = ghost + 2 * (1 - ghost - brain)
    if not (labels == 1).any() or not (labels == 2).any():
        return 0.0
    g = float(mean_epi[labels == 1].mean() - mean_epi[labels == 2].mean())
    return g / float(np.median(mean_epi[labels == 0]))


def outlier_fraction(data: np.ndarray, mask: np.ndarray, qthr: float = 0.001) -> np.ndarray:
    """Per volume, the fraction of in-mask voxels whose value is an outlier of its own time series (AFNI
    ``3dToutcount -fraction``, default ``-polort 0``): |x - median| > alpha sqrt(pi/2) MAD_raw with alpha the
    upper-tail Gaussian quantile of qthr / t (t = number of volumes), MAD_raw the unscaled median absolute
    deviation. MRIQC's AOR is the mean of this series."""
    m = data[mask > 0].astype(np.float64)
    med = np.median(m, axis=1, keepdims=True)
    dev = np.abs(m - med)
    mad_raw = np.median(dev, axis=1, keepdims=True)
    alpha = stats.norm.isf(qthr / m.shape[1]) * np.sqrt(np.pi / 2.0)
    return ((dev > alpha * mad_raw) & (mad_raw > 0)).mean(axis=0)


def quality_index(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per volume, 1 - Spearman correlation with the voxelwise median volume inside ``mask`` (AFNI
    ``3dTqual``, which MRIQC runs with an automask; we use the EPI brain mask). MRIQC's AQI is the mean."""
    m = data[mask > 0].astype(np.float64)
    ref = stats.rankdata(np.median(m, axis=1))
    ranks = np.apply_along_axis(stats.rankdata, 0, m)
    out = np.empty(m.shape[1])
    for t in range(m.shape[1]):
        c = np.corrcoef(ref, ranks[:, t])[0, 1]
        out[t] = 1.0 - (c if np.isfinite(c) else 0.0)
    return out


def gcor(data: np.ndarray, mask: np.ndarray) -> float:
    """Global correlation (Saad 2013; AFNI ``@compute_gcor`` as MRIQC calls it): each in-mask series
    demeaned and scaled to unit length, GCOR = |mean of those unit series|^2, the average correlation over
    every pair of voxels."""
    m = data[mask > 0].astype(np.float64)
    m = m - m.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(m, axis=1)
    m = m[norm > 0] / norm[norm > 0, None]
    if m.shape[0] == 0:
        return 0.0
    g = m.mean(axis=0)
    return float(g @ g)


def timeseries_path(path: str | Path, out_dir: str | Path) -> Path:
    """Where :func:`compute_bold` writes the per-volume table of ``path``: ``<entities>_desc-qc_timeseries.tsv``
    in ``out_dir`` (the BIDS suffix ``_bold`` is replaced)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith("_bold"):
        name = name[: -len("_bold")]
    return Path(out_dir) / f"{name}_desc-qc_timeseries.tsv"


def write_timeseries(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write the per-volume table (tab-separated, "n/a" for missing) atomically (temp file then rename)."""
    n = len(next(iter(columns.values())))
    lines = ["\t".join(columns)]
    for i in range(n):
        lines.append("\t".join("n/a" if not np.isfinite(c[i]) else f"{c[i]:.6g}" for c in columns.values()))
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def compute_bold(img: ImageLike, *, fd_threshold: float = FD_THRESHOLD, fd_radius: float = 50.0,
                 out_dir: str | Path | None = None) -> dict[str, float]:
    """Every BOLD index of one run. ``img``: 4D NIfTI path or nibabel image (at least 2 volumes).

    Steps as MRIQC's functional workflow: realign every volume to volume 0 (rigid, :mod:`.motion`), mean
    EPI and its brain mask (``median_otsu``), then the indices. With ``out_dir`` and a path input, the
    per-volume table goes to :func:`timeseries_path`. Keys: ``tsnr``, ``dvars_std``, ``dvars_nstd``,
    ``dvars_vstd``, ``fd_mean``, ``fd_num``, ``fd_perc``, ``gsr_x``, ``gsr_y``, ``aor``, ``aqi``, ``gcor``,
    ``snr``, ``fber``, ``efc``, ``fwhm_avg`` (voxels), ``motion_estimated`` (0: too small to realign),
    ``size_t``. Raises ``QCInputError``.
    """
    im = load(img, ndim=4)
    if im.data.shape[3] < 2:
        raise QCInputError(f"{im.name}: a BOLD run needs at least 2 volumes")
    data = np.clip(im.data, 0, None)
    mask0 = epi_mask(data[..., 0])
    params, hmc = realign(data, im.affine, mask=mask0)
    mean = hmc.mean(axis=-1)
    mask = epi_mask(mean)
    if mask.sum() < 100 and mask.size >= 1000:
        raise QCInputError(f"{im.name}: fewer than 100 brain voxels found")
    fd = framewise_displacement(params, fd_radius)
    dv = dvars(hmc, mask)
    aor_t = outlier_fraction(hmc, mask)
    aqi_t = quality_index(hmc, mask)
    fg = spatial.summary_stats(mean, mask.astype(np.float32))
    out: dict[str, float] = {
        "tsnr": float(np.median(tsnr_map(hmc)[mask])),
        "dvars_std": float(dv[:, 0].mean()), "dvars_nstd": float(dv[:, 1].mean()),
        "dvars_vstd": float(dv[:, 2].mean()),
        **fd_summary(fd, fd_threshold),
        "motion_estimated": float(can_realign(data.shape)),
        "gsr_x": gsr(mean, mask, "x"), "gsr_y": gsr(mean, mask, "y"),
        "aor": float(aor_t.mean()), "aqi": float(aqi_t.mean()), "gcor": gcor(hmc, mask),
        "snr": spatial.snr(fg["median"], fg["stdv"], fg["n"]),
        "fber": spatial.fber(mean, mask.astype(np.uint8)), "efc": spatial.efc(mean),
        "fwhm_avg": spatial.fwhm_classic(mean, mask)[3], "size_t": float(data.shape[3]),
    }
    if out_dir is not None and isinstance(img, (str, Path)):
        nan = np.array([np.nan])
        columns = {"framewise_displacement": np.concatenate([nan, fd])}
        for i, key in enumerate(("dvars_std", "dvars_nstd", "dvars_vstd")):
            columns[key] = np.concatenate([nan, dv[:, i]])
        columns["aor"], columns["aqi"] = aor_t, aqi_t
        columns.update({name: params[:, i] for i, name in enumerate(PARAMS)})
        write_timeseries(timeseries_path(img, out_dir), columns)
    return out
