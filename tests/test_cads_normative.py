"""CADS item 1: normative deviations on a synthetic cohort with planted patterns and site effects.

The model is fitted on healthy controls only; on new scans it must flag the planted regions of patients far more
often than other regions, flag healthy controls at about the rate the threshold predicts (the expected count
printed beside the flags), remove site and age effects, and refuse bad input with one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from incloud_kernel.cads import synthetic
from incloud_kernel.cads.normative import NormativeModel, expected_false_flags
from incloud_kernel.errors import ValidationError


@pytest.fixture(scope="module")
def fitted() -> tuple[NormativeModel, pd.DataFrame]:
    train = synthetic.cohort(900, seed=11)
    test = synthetic.cohort(600, seed=12)
    model = NormativeModel().fit(train[train["diagnosis"] == "HC"], synthetic.feature_columns())
    return model, test


def test_planted_regions_are_flagged_and_healthy_false_flags_match_the_expectation(fitted) -> None:  # type: ignore
    model, test = fitted
    dev = model.deviations(test)
    healthy = (test["diagnosis"] == "HC").to_numpy()
    false_rate = dev.flag[healthy].to_numpy().mean()
    expected_rate = dev.expected_false_flags / len(model.features_)
    print(f"healthy controls: false-flag rate {false_rate:.4f} per region (expected {expected_rate:.4f}; "
          f"{dev.expected_false_flags:.2f} of {len(model.features_)} features per person)")
    assert abs(false_rate - expected_rate) < 0.015
    for diagnosis, planted in synthetic.PLANTED.items():
        rows = (test["diagnosis"] == diagnosis).to_numpy()
        others = [c for c in model.features_ if c not in planted]
        sensitivity = dev.flag.loc[rows, planted].to_numpy().mean()
        false_other = dev.flag.loc[rows, others].to_numpy().mean()
        print(f"{diagnosis}: planted regions flagged in {sensitivity:.3f} of patient-region pairs, other regions "
              f"in {false_other:.3f}")
        assert sensitivity > 0.3 and false_other < 0.07
        # the group's most deviant features are exactly the planted ones
        mean_abs = dev.z.loc[rows].mean().abs().sort_values(ascending=False)
        assert set(mean_abs.index[:len(planted)]) == set(planted)
        # and the direction is right: volumes smaller, connectivity as planted
        for column, effect in synthetic.EFFECTS[diagnosis].items():
            assert np.sign(dev.z.loc[rows, column].mean()) == (np.sign(effect - 1) if "/gmv/" in column
                                                                else np.sign(effect))


def test_site_and_age_effects_are_removed(fitted) -> None:  # type: ignore[no-untyped-def]
    model, test = fitted
    healthy = test[test["diagnosis"] == "HC"]
    z = model.transform(healthy)
    column = synthetic.gmv("Precentral_L")
    raw_by_site = healthy.groupby("site")[column].mean()
    assert raw_by_site.max() / raw_by_site.min() > 1.03  # the planted site effect is there in the raw values
    site_means = z.groupby(healthy["site"]).mean().abs().to_numpy()
    # ~75 controls per site: a site's mean z has a standard error of ~0.12; the planted biases are 2-3x that
    assert site_means.mean() < 0.15 and site_means.max() < 0.5
    blind = NormativeModel().fit(healthy.assign(site="one"), model.features_).transform(healthy.assign(site="one"))
    assert blind.groupby(healthy["site"]).mean().abs().to_numpy().mean() > 1.5 * site_means.mean()
    old, young = healthy["age"] > 60, healthy["age"] < 35
    assert abs(z[old].stack().mean()) < 0.15 and abs(z[young].stack().mean()) < 0.15
    # heteroscedastic: z spreads about 1 at both ends although the raw spread grows with distance from 40
    assert 0.85 < z[old].stack().std() < 1.15 and 0.85 < z[young].stack().std() < 1.15
    centiles = model.deviations(healthy).centile.stack()
    assert 40 < centiles.median() < 60 and centiles.between(0, 100).all()


def test_expected_false_flags_and_threshold() -> None:
    assert expected_false_flags(116, 2.0) == pytest.approx(116 * 0.0455, abs=0.01)
    assert expected_false_flags(100, 3.0) == pytest.approx(0.27, abs=0.01)
    cohort = synthetic.cohort(200, seed=1)
    model = NormativeModel(threshold=3.0).fit(cohort[cohort["diagnosis"] == "HC"])
    dev = model.deviations(cohort.head(5))
    assert dev.threshold == 3.0 and (dev.flag == (dev.z.abs() > 3)).all().all()
    table = dev.table(cohort.index[0])
    assert list(table.columns) == ["z", "centile", "flag"] and table["z"].abs().is_monotonic_decreasing


def test_unseen_site_bad_input_and_the_harmonise_hook() -> None:
    cohort = synthetic.cohort(200, seed=2, sites=synthetic.SITES[:2])
    controls = cohort[cohort["diagnosis"] == "HC"]
    model = NormativeModel().fit(controls)
    other = synthetic.cohort(5, seed=3, sites=synthetic.SITES[2:3])
    assert model.unseen_sites(other) == [synthetic.SITES[2]]
    assert np.isfinite(model.transform(other).to_numpy()).all()
    with pytest.raises(ValidationError, match="at least 20 healthy controls"):
        NormativeModel().fit(controls.head(5))
    with pytest.raises(ValidationError, match="column site"):
        NormativeModel().fit(controls.drop(columns="site"))
    with pytest.raises(ValidationError, match="positive"):
        model.deviations(other, threshold=0)

    class Halve:  # stands in for the library's ComBat: called on fit and on transform
        calls: list[str] = []

        def fit_transform(self, features, covariates):  # type: ignore[no-untyped-def]
            self.calls.append("fit")
            return features / 2

        def transform(self, features, covariates):  # type: ignore[no-untyped-def]
            self.calls.append("transform")
            return features / 2

    hooked = NormativeModel(harmonise=Halve()).fit(controls)
    assert np.allclose(hooked.transform(other), model.transform(other), atol=0.05)
    assert Halve.calls == ["fit", "transform"]


def _site_bias(z: pd.DataFrame, sites: pd.Series) -> float:
    """The site effect left in z-scores: the mean over sites and features of |a site's mean z|."""
    return float(z.groupby(sites.to_numpy()).mean().abs().to_numpy().mean())


def test_combat_harmonisation_lowers_the_site_effect_and_keeps_the_planted_diagnosis(fitted) -> None:  # type: ignore
    """Issue 17: the library's ComBat as the ``harmonise=`` hook, fitted on training controls (site as batch, age
    and sex protected), applied to new scans of known sites."""
    from incloud_kernel.cads.normative import harmoniser
    from incloud_kernel.library.combat import SiteHarmoniser

    site_model, test = fitted
    train = synthetic.cohort(900, seed=11)
    controls = train[train["diagnosis"] == "HC"]
    blind = NormativeModel(site_term=False).fit(controls, synthetic.feature_columns())  # no site handling
    combat = harmoniser("combat").fit(controls, synthetic.feature_columns())
    assert isinstance(combat.harmonise, SiteHarmoniser) and not combat.site_term
    healthy = test["diagnosis"] == "HC"
    before = _site_bias(blind.transform(test[healthy]), test.loc[healthy, "site"])
    after = _site_bias(combat.transform(test[healthy]), test.loc[healthy, "site"])
    as_term = _site_bias(site_model.transform(test[healthy]), test.loc[healthy, "site"])
    print(f"controls' mean |site mean z|: {before:.3f} without harmonisation, {after:.3f} with ComBat, "
          f"{as_term:.3f} with the site as a regression term")
    # ~75 controls per site: pure noise gives a mean |site mean z| of ~0.09 (0.8 x its standard error 0.115)
    assert after < 0.15 and after < 0.6 * before
    for diagnosis, planted in synthetic.PLANTED.items():
        rows = test["diagnosis"] == diagnosis
        kept, raw = combat.transform(test[rows])[planted].mean(), blind.transform(test[rows])[planted].mean()
        print(f"{diagnosis}: planted features' mean z {kept.abs().mean():.2f} with ComBat, "
              f"{raw.abs().mean():.2f} without")
        assert (np.sign(kept) == np.sign(raw)).all() and kept.abs().mean() > 0.8 * raw.abs().mean() > 0.8
    # a scan of a scanner ComBat never saw: left as it is and said so, or refused with one line
    other = synthetic.cohort(4, seed=5, sites=("SiteZ Unseen 1.5T",))
    assert combat.unseen_sites(other) == ["SiteZ Unseen 1.5T"] and np.isfinite(combat.transform(other)).all().all()
    features = other[synthetic.feature_columns()]
    assert combat.harmonise.transform(features, other).equals(features.astype(float))
    strict = SiteHarmoniser(unseen="error")
    strict.fit_transform(controls[synthetic.feature_columns()], controls)
    with pytest.raises(ValidationError, match=r"^4 scan\(s\) from a scanner the ComBat harmonisation was not fitted"):
        strict.transform(features, other)
    # a missing value stays missing (a scan without BOLD: no connectivity), the others are harmonised
    gap = test[healthy].head(3).copy()
    column = synthetic.fc("Frontal_Sup_L", "Temporal_Sup_L")
    gap[column] = np.nan
    z = combat.transform(gap.drop(columns=synthetic.gmv("Precentral_L")))
    assert z[column].isna().all() and z[synthetic.gmv("Precentral_L")].isna().all()
    assert np.isfinite(z.drop(columns=[column, synthetic.gmv("Precentral_L")])).all().all()
    with pytest.raises(ValidationError, match="harmonise must be one of combat, site"):
        harmoniser("neuroharmonize")
