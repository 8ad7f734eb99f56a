"""Planted grey-matter loss recovered from the pixels by the T1w features (issue 15 "done when"): the same
synthetic participant rendered without and with regional atrophy and cortical thinning (synth.atrophy), both
through the whole ``T1Features`` pipeline; the regional GM-volume change must match the planted one within
2 percentage points and the regional thickness change the planted thinning within 0.2 mm."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

atrophy = pytest.importorskip("incloud_kernel.synth.atrophy", reason="synth.atrophy (branch synthfx) not merged")

from incloud_kernel.features.atlases import Atlas  # noqa: E402
from incloud_kernel.features.t1 import T1Features  # noqa: E402

REGIONS = ("hippocampus_left", "posterior_cingulate", "visual_cortex")
EFFECTS = (("hippocampus_left", "atrophy", 20.0), ("posterior_cingulate", "thinning", 1.0),
           ("visual_cortex", "thinning", 0.5))


def planted_atlas() -> Atlas:
    """The planted regions (synth's MNI ellipsoids) as an atlas, so the pipeline reports them by name."""
    masks = [np.asarray(atrophy.region_mask_mni(r).dataobj) > 0 for r in REGIONS]
    ref = atrophy.region_mask_mni(REGIONS[0])
    labels = np.zeros(ref.shape, np.int16)
    for i, m in enumerate(masks):
        labels[m] = i + 1
    return Atlas(name="planted", image=nib.Nifti1Image(labels, ref.affine),
                 labels={i + 1: r for i, r in enumerate(REGIONS)}, licence="synthetic", kind="cortical")


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
        t1 = render_t1(participant, site, 2.0, np.random.default_rng(5))  # same noise: only the edit differs
        if effects:
            truth = atrophy.planted_truth(participant, t1)
        path = folder / f"{tag}.nii.gz"
        sitk.WriteImage(t1, str(path))
        table = T1Features(atlas=atlas).fit(path).transform()
        tables[tag] = table[table.atlas == "planted"].set_index(["region", "feature"]).value.to_dict()
    return tables["before"], tables["after"], truth


def test_planted_atrophy_is_recovered_within_2_points(measured: tuple) -> None:
    before, after, truth = measured
    for t in truth:
        got = (after[(t["region"], "gm_volume")] / before[(t["region"], "gm_volume")] - 1.0) * 100.0
        assert abs(got - t["percent"]) < 2.0, (t["region"], got, t["percent"])


def test_planted_thinning_is_recovered_within_0_2_mm(measured: tuple) -> None:
    before, after, truth = measured
    for t in truth:
        if t["kind"] != "thinning":
            continue
        got = before[(t["region"], "thickness")] - after[(t["region"], "thickness")]
        assert abs(got - t["thinning_mm"]) < 0.2, (t["region"], got, t["thinning_mm"])
