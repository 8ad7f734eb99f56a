"""Regional values per atlas region and the long-format feature table (issue 15 item 5), on real atlases.

Maps are built on grids other than the atlas's (3 mm, shifted, some with permuted axes) with a constant per
region, assigned by an independent nearest-neighbour lookup (world -> atlas voxel, rounded), so a regional
mean must give back the constant and a volume the voxel count times the voxel volume."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import missing
from incloud_kernel.errors import NotFound, ValidationError
from incloud_kernel.features import atlases, rows


def _atlas(name: str) -> atlases.Atlas:
    try:
        return atlases.load_atlas(name)
    except NotFound as exc:
        missing(str(exc))
        raise


def _grid(step: float = 3.0, axes: str = "RAS") -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid covering the MNI brain, shifted by a quarter voxel off every atlas grid (no rounding ties)."""
    shape = (int(180 / step), int(216 / step), int(180 / step))
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = [-90.25, -126.25, -72.25]
    if axes == "LAS":  # voxel order flipped left-right, as FSL's grids
        affine[0, 0], affine[0, 3] = -step, 90.25
    return shape, affine


def _labels_by_lookup(atlas: atlases.Atlas, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The atlas label under each voxel centre of the grid: world -> atlas voxel, rounded (0 outside)."""
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(atlas.image.affine), world)).astype(int)
    data = np.asarray(atlas.image.dataobj)
    inside = np.all((vox >= 0) & (vox < data.shape), axis=1)
    out = np.zeros(len(vox), dtype=np.int64)
    out[inside] = data[tuple(vox[inside].T)]
    return out.reshape(shape)


@pytest.mark.parametrize("name,axes", [("aal", "RAS"), ("harvardoxford-cortical", "LAS"),
                                       ("desikan-killiany", "RAS"), ("jhu-wm-2mm", "LAS")])
def test_regional_mean_recovers_a_constant_per_region(name: str, axes: str) -> None:
    atlas = _atlas(name)
    shape, affine = _grid(3.0, axes)
    labels = _labels_by_lookup(atlas, shape, affine)
    constant = {v: 0.5 + 7.0 * v for v in atlas.labels}
    data = np.vectorize(lambda v: constant.get(int(v), 0.0))(labels).astype(np.float32)
    means = rows.regional(nib.Nifti1Image(data, affine), atlas)
    present = {atlas.labels[v] for v in np.unique(labels) if v}
    assert set(means) == present and len(present) >= 0.8 * len(atlas.labels)
    for value, region in atlas.labels.items():
        if region in means:
            assert means[region] == pytest.approx(constant[value], rel=1e-6)


def test_volume_is_voxel_count_times_voxel_volume(tmp_path: Path) -> None:
    atlas = _atlas("aal")
    shape, affine = _grid(3.0)
    labels = _labels_by_lookup(atlas, shape, affine)
    path = tmp_path / "ones.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), affine), path)  # a path, as a stage passes it
    volumes = rows.regional(path, atlas, reduce="volume")
    halves = rows.regional(nib.Nifti1Image(np.full(shape, 0.5, np.float32), affine), atlas, reduce="volume")
    for value, region in atlas.labels.items():
        count = int((labels == value).sum())
        if count:
            assert volumes[region] == pytest.approx(count * 27.0)  # 3 mm voxels: 27 mm3
            assert halves[region] == pytest.approx(count * 13.5)  # a probability map: its expected volume
        else:
            assert region not in volumes


def test_mask_and_non_finite_voxels_are_left_out_and_empty_regions_have_no_value() -> None:
    atlas = _atlas("aal")
    shape, affine = _grid(3.0)
    labels = _labels_by_lookup(atlas, shape, affine)
    data = np.where(labels > 0, 2.0, 0.0).astype(np.float32)
    precentral_l = next(v for v, n in atlas.labels.items() if n == "Precentral_L")
    where = np.argwhere(labels == precentral_l)
    data[tuple(where[0])] = np.nan
    data[tuple(where[1])] = 1000.0  # masked out below
    mask = np.ones(shape, dtype=np.uint8)
    mask[tuple(where[1])] = 0
    mask[:, :, shape[2] // 2:] = 0  # the upper half of the grid: regions only there get no value
    means = rows.regional(nib.Nifti1Image(data, affine), atlas, mask=mask)
    assert means["Precentral_L"] == pytest.approx(2.0)
    top_only = {atlas.labels[v] for v in np.unique(labels[:, :, shape[2] // 2:]) if v} - {
        atlas.labels.get(v) for v in np.unique(labels[:, :, : shape[2] // 2])}
    assert top_only and not (top_only & set(means))
    with pytest.raises(ValidationError, match="mask shape"):
        rows.regional(nib.Nifti1Image(data, affine), atlas, mask=np.ones((2, 2, 2)))
    with pytest.raises(ValidationError, match="unknown reduction"):
        rows.regional(nib.Nifti1Image(data, affine), atlas, reduce="median")


def test_feature_table_is_long_format_without_non_finite_rows() -> None:
    flat = rows.feature_table({"A": 1.5, "B": float("nan")}, atlas="aal", feature="gmv", unit="mm3")
    assert list(flat.columns) == ["atlas", "region", "feature", "value", "unit"]
    assert flat.to_dict("records") == [{"atlas": "aal", "region": "A", "feature": "gmv", "value": 1.5,
                                        "unit": "mm3"}]
    nested = rows.feature_table({"fa": {"A": 0.4}, "md": {"A": 0.0008, "B": float("inf")}}, atlas="jhu-wm",
                                unit={"fa": "1", "md": "mm2/s"})
    assert sorted(zip(nested.feature, nested.region, nested.unit)) == [("fa", "A", "1"), ("md", "A", "mm2/s")]
    with pytest.raises(ValidationError):
        rows.feature_table({"A": 1.0}, atlas="aal", unit="mm3")


def _frame() -> pd.DataFrame:
    table = rows.feature_table({"A": 1.25, "B": 2.0}, atlas="aal", feature="gmv", unit="mm3")
    return rows.with_context(table, participant="P01", session="1", series=7, pipeline="features", version="1")


def test_write_rows_writes_columns_in_order_and_reads_back(tmp_path: Path) -> None:
    path = rows.write_rows(_frame(), tmp_path / "sub-P01_desc-features.tsv")
    back = pd.read_csv(path, sep="\t", dtype=str)
    assert tuple(back.columns) == rows.COLUMNS
    assert back.to_dict("records")[0] == {"participant": "P01", "session": "1", "series": "7",
                                          "pipeline": "features", "version": "1", "atlas": "aal", "region": "A",
                                          "feature": "gmv", "value": "1.25", "unit": "mm3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_failed_write_leaves_the_old_table_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore
    target = tmp_path / "features.tsv"
    target.write_text("old complete table\n")

    def broken_fsync(fd: int) -> None:  # the disk fails after the rows were written to the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        rows.write_rows(_frame(), target)
    assert target.read_text() == "old complete table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["features.tsv"]  # no temporary file left behind
    monkeypatch.undo()
    with pytest.raises(ValidationError, match="lacks column"):
        rows.write_rows(_frame().drop(columns=["unit"]), tmp_path / "new.tsv")
    assert not (tmp_path / "new.tsv").exists() and len(list(tmp_path.iterdir())) == 1


def test_a_bad_image_is_one_line(tmp_path: Path) -> None:
    atlas = _atlas("jhu-wm-2mm")
    shape, affine = _grid(3.0)
    bad = [tmp_path / "missing.nii.gz", nib.Nifti1Image(np.zeros((*shape, 2), np.float32), affine)]
    (tmp_path / "text.nii.gz").write_text("not an image")
    bad.append(tmp_path / "text.nii.gz")
    for image in bad:
        with pytest.raises(ValidationError, match="not a 3D image") as err:
            rows.regional(image, atlas)
        assert "\n" not in str(err.value)
