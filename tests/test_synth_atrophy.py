"""Planted grey-matter loss (synth.atrophy): the ground truth must describe the anatomy, not the sampling grid,
and thinning must be a smooth depth field (issue 15: planted effects a pipeline can be held to)."""
from __future__ import annotations

import numpy as np
import pytest

from incloud_kernel.synth import atrophy


@pytest.fixture(scope="module")
def participant():  # type: ignore[no-untyped-def]
    from incloud_kernel.synth.deform import Participant

    p = Participant.random(np.random.default_rng([0, 2]), [])
    p.tissue_effects = [atrophy.TissueEffect("hippocampus_left", "atrophy", 20.0),
                        atrophy.TissueEffect("posterior_cingulate", "thinning", 1.0)]
    return p


def test_truth_does_not_move_with_a_half_voxel_shift_of_the_grid(participant) -> None:  # type: ignore[no-untyped-def]
    """The same anatomy on two 2 mm grids half a voxel apart: point samples on the grid alone gave the
    hippocampus -13.2 % and -7.9 %; integrated at 0.5 mm the truth agrees to a few hundredths of a point."""
    from incloud_kernel.synth.structural import t1_grid

    ref = t1_grid(participant, 2.0)
    shifted = t1_grid(participant, 2.0)
    shifted.SetOrigin((np.asarray(ref.GetOrigin()) + 1.0).tolist())
    a, b = atrophy.planted_truth(participant, ref), atrophy.planted_truth(participant, shifted)
    for x, y in zip(a, b):
        assert x["percent"] == pytest.approx(y["percent"], abs=0.2), (x, y)
        assert x["gm_ml_before"] == pytest.approx(y["gm_ml_before"], rel=0.01), (x, y)
        assert x["percent"] < -5.0


def test_thinning_is_a_smooth_field_full_at_the_core_none_past_the_taper(participant) -> None:  # type: ignore[no-untyped-def]
    effect = participant.tissue_effects[1]
    sl, removed = atrophy._removed(effect)
    _, _, delta, _, rho = atrophy._depths(effect.region, atrophy.TAPER[1])
    gm = atrophy.head_tissue().labels[sl] == atrophy.GM
    core = gm & (rho <= atrophy.TAPER[0])
    np.testing.assert_allclose(removed[core], np.clip(effect.amount - (delta[core] - 1.0), 0.0, 1.0), atol=1e-6)
    assert removed[gm & (rho > 1.0) & (rho < 1.25)].sum() > 10  # the taper goes on past the ellipsoid
    assert removed[rho >= atrophy.TAPER[1]].max() == 0.0
    w = atrophy.taper_weight(np.array([0.0, 0.5, 1.0, 1.5, 2.0]))
    np.testing.assert_allclose(w, [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_atrophy_is_the_same_tapered_field_and_takes_its_percentage_inside_the_ellipsoid(participant) -> None:  # type: ignore[no-untyped-def]
    """Atrophy tapers like thinning (no step at the ellipsoid a registration must hit to the voxel), at the core
    depth that removes the planted share of the grey matter inside the ellipsoid."""
    effect = participant.tissue_effects[0]
    sl, removed = atrophy._removed(effect)
    _, _, _, p_gm, rho = atrophy._depths(effect.region, atrophy.TAPER[1])
    inside = rho <= 1.0
    share = float((removed[inside] * p_gm[inside]).sum() / p_gm[inside].sum())
    assert share == pytest.approx(effect.amount / 100.0, abs=1e-3)
    assert removed[(rho > 1.0) & (rho < 1.25)].sum() > 10
    assert removed[rho >= atrophy.TAPER[1]].max() == 0.0
    assert removed[rho <= atrophy.TAPER[0]].max() == 1.0


def test_thinning_truth_is_the_mean_planted_depth_over_the_region(participant) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.synth.structural import t1_grid

    truth = atrophy.planted_truth(participant, t1_grid(participant, 2.0))
    thin = next(t for t in truth if t["kind"] == "thinning")
    # the field is 1 mm inside rho 0.5 and 0.5 mm on the ellipsoid: the region's mean lies between
    assert 0.5 * participant.scale < thin["thinning_mm"] < 1.0 * participant.scale
    assert next(t for t in truth if t["kind"] == "atrophy")["thinning_mm"] == 0.0
