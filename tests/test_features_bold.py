"""The BOLD feature pipeline from pixels (issue 15 item 2, item 6, "Done when" bullets 1 and 3).

A synthetic participant's resting run (head motion, interleaved slice timing, thermal noise) with a 0.03 Hz
signal planted in ONE AAL region: ``BoldFeatures`` (no T1w: the EPI is registered to the MNI152 template
directly) must find ALFF and fALFF raised there (z across regions > 2, the highest of all) and nowhere else
(the regional mean of the z-scored map is above 1 there and below 1 in every other region). The T1w route is checked on a
session whose T1w is the MNI152 template itself (identity T1w->MNI transform) and whose EPI sits a few mm
away. Real BOLD that ships in installed packages runs through (or, with too few volumes, stops with one line).
4 mm grids and 80-100 volumes keep it to about a minute per run.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bold_features_data import template_anatomy, template_bold
from test_qc_real import _file  # an installed package's data file, reported through ``missing`` when absent

from incloud_kernel.errors import ValidationError
from incloud_kernel.features.bold import ROUTE_EPI, ROUTE_T1W, Anatomy, BoldFeatures, BoldStage
from incloud_kernel.features.rows import COLUMNS
from incloud_kernel.pipeline.stage import StageInput

REGION = "Precuneus_L"


def _z(frame: pd.DataFrame, feature: str) -> pd.Series:
    values = frame[frame.feature == feature].set_index("region")["value"]
    return (values - values.mean()) / values.std()


def _regional(frame: pd.DataFrame, feature: str) -> pd.Series:
    return frame[frame.feature == feature].set_index("region")["value"]


def _assert_planted_found(frame: pd.DataFrame, region: str) -> None:
    for feature in ("alff", "falff"):
        z = _z(frame, feature)
        assert z[region] > 2 and z.idxmax() == region, (feature, z.sort_values().tail(3).round(2).to_dict())
        zmap = _regional(frame, f"z{feature}")
        others = zmap.drop(region)
        assert zmap[region] > 1.0 > others.max(), (feature, zmap[region], others.idxmax(), others.max())


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bold_inputs import planted_bold

    return planted_bold(tmp_path_factory.mktemp("bold"), region=REGION, volumes=80, amplitude=0.05,
                        max_motion=(0.5, 0.5))


def test_planted_signal_found_from_pixels_without_t1w(planted_run: tuple[Path, dict, dict]) -> None:
    path, sidecar, truth = planted_run
    est = BoldFeatures(atlas="aal")
    frame = est.fit(path, sidecar=sidecar).transform(path, sidecar=sidecar)
    assert est.route_ == ROUTE_EPI and est.slice_timing_applied_
    _assert_planted_found(frame, REGION)
    assert _z(frame, "reho")[REGION] > 2  # the shared signal makes the neighbourhood concordant too
    # realignment: the range of each estimated parameter matches the planted motion's (degrees vs radians)
    planted = np.asarray(truth["motion"])
    est_range = np.ptp(est.motion_.params, axis=0) * np.array([180 / np.pi] * 3 + [1] * 3)
    assert np.allclose(est_range, np.ptp(planted, axis=0), atol=0.25), (est_range, np.ptp(planted, axis=0))
    # the rows: long format, every region once per feature, connectivity as A__B pairs of Fisher z
    assert list(frame.columns) == ["atlas", "region", "feature", "value", "unit"]
    assert set(frame.feature) >= {"alff", "falff", "reho", "zalff", "malff", "connectivity"}
    assert not frame.duplicated(["region", "feature"]).any()
    c = est.connectivity_
    assert c.shape[0] == c.shape[1] > 50 and np.allclose(c.to_numpy(), c.to_numpy().T)
    assert len(frame[frame.feature == "connectivity"]) == c.shape[0] * (c.shape[0] - 1) // 2


def test_t1w_route_through_the_t1_stage_outputs(tmp_path: Path) -> None:
    """The stage given the session's T1 stage outputs (``session_upstream``) coregisters to the T1w and
    normalises through its transform; the planted region is found and the rows say ``features``."""
    outputs = template_anatomy(tmp_path / "t1")
    assert Anatomy.from_outputs(outputs) is not None
    path, _ = template_bold(tmp_path, "Frontal_Sup_L", volumes=100)
    inputs = StageInput(series_id=3, participant="01", session="1", datatype="func", suffix="bold",
                        entities={"task": "rest"}, files={"nii.gz": path, "json": path.with_suffix("").with_suffix(
                            ".json")}, session_upstream={"t1features": outputs})
    out = tmp_path / "out"
    out.mkdir()
    written = BoldStage(slice_timing=False).run(inputs, out)
    prov = json.loads(written["func/task-rest_desc-boldfeatures_bold.json"].read_text())
    assert prov["route"] == ROUTE_T1W and prov["wm_voxels"] > 50 and prov["csf_voxels"] > 5
    # the coregistration finds the planted shift (EPI point -> T1w point = EPI point - shift): RAS (2, -1.5, 1)
    # is LPS (-2, 1.5, 1)
    assert np.allclose(prov["registration"]["epi_to_t1w_rigid"][3:], [2.0, -1.5, -1.0], atol=1.0), prov
    rows = pd.read_csv(written["func/task-rest_desc-features_bold.tsv"], sep="\t")
    assert set(rows.pipeline) == {"features"}
    _assert_planted_found(rows, "Frontal_Sup_L")


def test_anatomy_needs_every_t1_output(tmp_path: Path) -> None:
    names = {"anat/desc-preproc_T1w.nii.gz": tmp_path / "a", "anat/desc-brain_mask.nii.gz": tmp_path / "b"}
    assert Anatomy.from_outputs(names) is None


def test_stage_writes_maps_rows_matrix_and_route(planted_run: tuple[Path, dict, dict], tmp_path: Path) -> None:
    path, sidecar, _ = planted_run
    stage = BoldStage(voxel_mm=4, connectivity_rows=False)
    inputs = StageInput(series_id=7, participant="01", session="1", datatype="func", suffix="bold",
                        entities={"task": "rest"}, files={"nii.gz": path, "json": path.with_name(
                            path.name.replace(".nii.gz", ".json"))})
    out = tmp_path / "out"
    out.mkdir()
    outputs = stage.run(inputs, out)
    names = set(outputs)
    space = "space-MNI152NLin2009aSym"
    for key in ("alff", "zalff", "malff", "falff", "zfalff", "mfalff", "reho", "zreho", "mreho"):
        assert f"func/task-rest_{space}_desc-{key}_boldmap.nii.gz" in names
    rows = pd.read_csv(outputs["func/task-rest_desc-features_bold.tsv"], sep="\t", dtype={"participant": str,
                                                                                          "session": str})
    assert tuple(rows.columns) == COLUMNS and set(rows.participant) == {"01"} and set(rows.pipeline) == {
        "features+epi2mni"}
    assert "connectivity" not in set(rows.feature)
    matrix = pd.read_csv(outputs[f"func/task-rest_{space}_desc-aalFisherz_relmat.tsv"], sep="\t", index_col=0)
    assert matrix.shape[0] == matrix.shape[1] and (np.diag(matrix.to_numpy()) == 0).all()
    prov = json.loads(outputs["func/task-rest_desc-boldfeatures_bold.json"].read_text())
    assert prov["route"] == ROUTE_EPI and prov["slice_timing_applied"] is True and prov["volumes"] == 80
    conf = pd.read_csv(outputs["func/task-rest_desc-confounds_timeseries.tsv"], sep="\t")
    assert len(conf) == 80 and {"white_matter", "csf", "rot_x_derivative1_power2"} <= set(conf.columns)
    img = nib.load(outputs[f"func/task-rest_{space}_desc-zalff_boldmap.nii.gz"])
    assert img.shape == stage_grid_shape(img) and np.isfinite(img.get_fdata()).all()
    assert outputs[f"func/task-rest_{space}_desc-normalisation_bold.png"].stat().st_size > 5000


def stage_grid_shape(img: nib.Nifti1Image) -> tuple[int, ...]:
    """The 4 mm MNI grid cropped to the brain is what the maps are on (3-D)."""
    assert abs(img.affine[0, 0]) == 4.0
    return img.shape[:3]


@pytest.mark.parametrize("options", [{}, {"alff_method": "cpac", "global_signal": True}])
def test_real_bold_nibabel_functional_runs_through(options: dict) -> None:
    """nibabel's functional.nii: 20 volumes of a 3-slice partial field of view (4 x 4 x 8 mm). (nilearn and
    dipy ship no 4-D BOLD in their package data: dipy's 4-D files are DWI or tiny test arrays.)"""
    path = _file("nibabel", "tests", "data", "functional.nii")
    est = BoldFeatures(atlas="aal", **options)
    frame = est.fit_transform(path)
    assert est.route_ == ROUTE_EPI and not est.slice_timing_applied_
    assert len(frame) > 0 and np.isfinite(frame.value).all()
    assert ("global_signal" in est.confounds_) == bool(options.get("global_signal"))


def test_real_bold_too_short_is_one_line(tmp_path: Path) -> None:
    """nibabel's example4d.nii.gz has 2 volumes: a clear one-line refusal, not a traceback."""
    path = _file("nibabel", "tests", "data", "example4d.nii.gz")
    with pytest.raises(ValidationError, match="needs at least|need at least") as info:
        BoldFeatures().fit(path)
    assert "\n" not in str(info.value)


def test_parameters_are_stored_unchanged_and_validated() -> None:
    est = BoldFeatures(band=(0.01, 0.1), alff_method="cpac")
    assert est.get_params()["band"] == (0.01, 0.1) and est.set_params(global_signal=True).global_signal
    with pytest.raises(ValidationError):
        BoldFeatures(alff_method="rest")._check()
    with pytest.raises(ValidationError, match="not fitted"):
        BoldFeatures().transform("x")
