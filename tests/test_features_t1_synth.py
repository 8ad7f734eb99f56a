"""Planted grey-matter loss recovered from the pixels by the T1w features (issue 15 "done when"): the same
synthetic participant rendered without and with regional atrophy and cortical thinning (synth.atrophy), both
through the whole ``T1Features`` pipeline at 1 mm (the full-size synthetic cohort's T1 grid, ``--small`` being
2 mm, and a clinical MPRAGE's); the regional GM-volume change must match the planted one within 2 percentage
points and the regional thickness change the planted thinning within 0.2 mm. ``bench/eval_planted_t1.py`` runs
the same case at any grid and says why a region misses (the registration's share, the segmentation's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from incloud_kernel.synth import atrophy  # noqa: E402

from incloud_kernel.features.atlases import Atlas  # noqa: E402
from incloud_kernel.features.t1 import T1Features  # noqa: E402

REGIONS = ("hippocampus_left", "posterior_cingulate", "visual_cortex")
EFFECTS = (("hippocampus_left", "atrophy", 20.0), ("posterior_cingulate", "thinning", 1.0),
           ("visual_cortex", "thinning", 0.5))


def planted_atlas() -> Atlas:
    """The planted regions (synth's MNI ellipsoids) as an atlas, so the pipeline reports them by name."""
    image, labels = atrophy.regions_label_image(REGIONS)
    return Atlas(name="planted", image=image, labels=labels, licence="synthetic", kind="cortical")


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, list]:
    import SimpleITK as sitk

    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites
    from incloud_kernel.synth.structural import render_t1

    folder: Path = tmp_path_factory.mktemp("planted")
    participant = Participant.random(np.random.default_rng([0, 2]), [])
    site = make_sites(1, 0)[0]
    atlas = planted_atlas()
    tables, truth = {}, []
    for tag, effects in (("before", []), ("after", [atrophy.TissueEffect(*e) for e in EFFECTS])):
        participant.tissue_effects = effects
        t1 = render_t1(participant, site, MM, np.random.default_rng(5))  # same noise: only the edit differs
        if effects:
            truth = atrophy.planted_truth(participant, t1)
        path = folder / f"{tag}.nii.gz"
        sitk.WriteImage(t1, str(path))
        table = T1Features(atlas=atlas, n4_shrink_mm=8.0).fit(path).transform()  # 8 mm: the planted bias is quadratic
        tables[tag] = table[table.atlas == "planted"].set_index(["region", "feature"]).value.to_dict()
    return tables["before"], tables["after"], truth


def _truth(truth: list, region: str) -> dict:
    return next(t for t in truth if t["region"] == region)


#: Measured (docs/features_t1.md, session 9), truth / 1 mm / 2 mm: hippocampus -12.23 / -13.23 / -12.71 %,
#: posterior cingulate -14.28 / -15.16 / -13.52 % and 0.796 / 0.662 / 1.057 mm, visual cortex -2.68 / -4.27 /
#: -2.82 % and 0.396 / 0.379 / 0.451 mm. At 2 mm the posterior cingulate's 0.8 mm of thinning (under half a
#: voxel) reads 0.26 mm too deep; the test runs at 1 mm, where every figure is met. Until session 9 the
#: generator placed its regions through the package's affine alone, which an independent registration (ANTs
#: SyN) and ours both put 3-4 mm elsewhere on the hippocampus (Dice 0.72-0.76): see synth.atrophy.
MM = 1.0


@pytest.mark.parametrize("region", REGIONS)
def test_planted_atrophy_is_recovered_within_2_points(measured: tuple, region: str) -> None:
    before, after, truth = measured
    t = _truth(truth, region)
    got = (after[(region, "gm_volume")] / before[(region, "gm_volume")] - 1.0) * 100.0
    assert abs(got - t["percent"]) < 2.0, (region, got, t["percent"])


@pytest.mark.parametrize("region", ["posterior_cingulate", "visual_cortex"])
def test_planted_thinning_is_recovered_within_0_2_mm(measured: tuple, region: str) -> None:
    """The truth is the mean of the generator's depth field over the region's cortex (synth.atrophy), not the
    planted ``amount``: the thinning tapers off around the region's core."""
    before, after, truth = measured
    t = _truth(truth, region)
    got = before[(region, "thickness")] - after[(region, "thickness")]
    assert abs(got - t["thinning_mm"]) < 0.2, (region, got, t["thinning_mm"])
