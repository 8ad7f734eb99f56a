"""Group outlier flags recomputed with a new threshold from stored per-subject values, without re-running
any subject (issue 14 item 5), and the entry point the pipeline engine calls."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qc_images import synth_bold

import incloud_kernel.qc.functional as functional
from incloud_kernel.errors import ValidationError
from incloud_kernel.qc import compute
from incloud_kernel.qc.outliers import fd_from_timeseries, group_flags, iqr_flags, read_timeseries


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Three runs computed once (one still, two moving), their index dicts and TSVs kept, images deleted."""
    root = tmp_path_factory.mktemp("runs")
    iqms, tsvs = {}, {}
    for seed, still in ((11, True), (12, False), (13, False)):
        path, _, _ = synth_bold(root, seed=seed, volumes=12, still=still, matrix=40, slices=24)
        run = path.name
        iqms[run] = compute(path, "func", "bold", out_dir=root / "derivatives")
        tsvs[run] = functional.timeseries_path(path, root / "derivatives")
        path.unlink()  # nothing left to re-run: any recomputation must come from the stored values
    return iqms, tsvs


def test_timeseries_tsv_has_one_row_per_volume(stored: tuple[dict, dict]) -> None:
    _, tsvs = stored
    table = read_timeseries(next(iter(tsvs.values())))
    assert len(table) == 12 and list(table.columns) == list(functional.TSV_COLUMNS)
    assert np.isnan(table["framewise_displacement"][0]) and table["framewise_displacement"][1:].notna().all()
    assert (table["dvars_nstd"][1:] > 0).all()


def test_new_fd_threshold_from_stored_values_only(stored: tuple[dict, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    iqms, tsvs = stored

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a subject was re-run")

    monkeypatch.setattr(functional, "compute_bold", forbidden)
    monkeypatch.setattr(functional, "realign", forbidden)
    for run, tsv in tsvs.items():
        fd = read_timeseries(tsv)["framewise_displacement"].dropna().to_numpy()
        assert fd_from_timeseries(tsv, 0.2)["fd_num"] == iqms[run]["fd_num"]  # same as computed at run time
        for threshold in (0.05, 0.5):
            again = fd_from_timeseries(tsv, threshold)
            assert again["fd_num"] == (fd > threshold).sum()
            assert again["fd_perc"] == pytest.approx(100.0 * (fd > threshold).sum() / 12)
            assert again["fd_mean"] == pytest.approx(iqms[run]["fd_mean"], rel=1e-4)
    loose = group_flags(iqms, tsvs, fd_threshold=10.0, limits={"fd_num": (None, 0)})
    strict = group_flags(iqms, tsvs, fd_threshold=0.08, limits={"fd_num": (None, 0)})
    still = next(r for r in iqms if r.startswith("sub-11"))
    assert not loose["flag_any"].any()
    assert strict["flag_fd_num"].sum() >= 2 and not strict.loc[still, "flag_fd_num"]


def test_tukey_fences_follow_k() -> None:
    table = pd.DataFrame({"tsnr": [50, 52, 51, 49, 53, 20]}, index=list("abcdef"))
    assert iqr_flags(table, k=1.5)["tsnr"].tolist() == [False] * 5 + [True]
    assert not iqr_flags(table, k=20.0)["any"].any()


def test_unknown_series_and_parameters_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no QC indices for anat/FLAIR"):
        compute(tmp_path / "x.nii.gz", "anat", "FLAIR")
    with pytest.raises(ValidationError, match="unknown QC parameter"):
        compute(tmp_path / "x.nii.gz", "func", "bold", fd_thresh=0.3)
    bad = tmp_path / "sub-01_bold.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValidationError) as err:
        compute(bad, "func", "bold")
    assert "\n" not in str(err.value) and "sub-01_bold.nii.gz" in str(err.value)


def test_an_image_the_libraries_reject_is_a_one_line_error(tmp_path: Path) -> None:
    """A constant BOLD run (nothing to register or mask) ends in QCInputError, not a library traceback."""
    import nibabel as nib

    path = tmp_path / "sub-02_task-rest_bold.nii.gz"
    nib.Nifti1Image(np.full((20, 20, 12, 4), 100, np.int16), np.eye(4)).to_filename(path)
    with pytest.raises(ValidationError) as err:
        compute(path, "func", "bold")
    assert "\n" not in str(err.value)
