"""CADS item 2: the diagnostic classifier on the synthetic cohort: leave-site-out balanced accuracy clearly above
chance with its calibration error, probabilities with ranges that sum to one, an out-of-distribution warning for
scans unlike the training data, chance-level accuracy when the labels carry no information, one-line refusals."""
from __future__ import annotations

import numpy as np
import pytest

from incloud_kernel.cads import synthetic
from incloud_kernel.cads.classifier import DiagnosticModel, leave_site_out
from incloud_kernel.cads.metrics import calibration_error, evaluate, not_worse
from incloud_kernel.errors import ValidationError


def test_leave_site_out_balanced_accuracy_is_clearly_above_chance_and_calibration_is_reported() -> None:
    cohort = synthetic.cohort(360, seed=21)
    result = leave_site_out(cohort, cohort["diagnosis"], kind="linear")
    pooled = result["pooled"]
    print(f"leave-site-out (linear, 360 scans, 4 sites): balanced accuracy {pooled['balanced_accuracy']:.3f} "
          f"(chance {pooled['chance']:.3f}), AUC {pooled['auc']:.3f}, Brier {pooled['brier']:.3f}, "
          f"calibration error {pooled['calibration_error']:.3f}")
    assert set(result["sites"]) == set(synthetic.SITES) and result["classes"] == ["BD", "HC", "SCZ"]
    assert pooled["balanced_accuracy"] > pooled["chance"] + 0.3 and pooled["auc"] > 0.85
    assert 0 <= pooled["calibration_error"] < 0.2
    for site, metrics in result["sites"].items():
        assert metrics["balanced_accuracy"] > metrics["chance"], site


def test_probabilities_ranges_and_the_out_of_distribution_warning() -> None:
    train, test = synthetic.cohort(300, seed=22), synthetic.cohort(40, seed=23)
    model = DiagnosticModel("ensemble").fit(train, train["diagnosis"])
    predictions = model.predict(test)
    for p in predictions:
        assert sum(p.probability.values()) == pytest.approx(1, abs=1e-6)
        assert all(p.low[c] <= p.probability[c] + 1e-9 and p.probability[c] <= p.high[c] + 1e-9
                   for c in model.classes_)
    assert sum(bool(p.warnings) for p in predictions) <= 2  # scans like the training data are not warned about
    odd = test.head(3).copy()
    columns = synthetic.feature_columns()
    odd[columns] = odd[columns] * 1.6  # a scan processed wrongly: every volume 60 % too large
    odd.loc[odd.index[1], "site"] = "SiteZ Unknown 7T"
    odd.loc[odd.index[2], "age"] = 95.0
    warned = model.predict(odd)
    assert all(any("outside the training distribution" in w for w in p.warnings) for p in warned)
    assert any("scanner not in the training data" in w for w in warned[1].warnings)
    assert any("age 95 outside the training range" in w for w in warned[2].warnings)


def test_shuffled_labels_give_chance_and_bad_training_sets_are_refused() -> None:
    train, test = synthetic.cohort(300, seed=24), synthetic.cohort(200, seed=25)
    shuffled = np.random.default_rng(0).permutation(train["diagnosis"].to_numpy())
    score = DiagnosticModel("linear").fit(train, shuffled).score(test, test["diagnosis"])
    assert score["balanced_accuracy"] < score["chance"] + 0.12
    with pytest.raises(ValidationError, match="healthy controls"):
        DiagnosticModel().fit(train, ["SCZ"] * len(train))
    with pytest.raises(ValidationError, match="kind must be"):
        DiagnosticModel("svm")
    with pytest.raises(ValidationError, match="two sites"):
        leave_site_out(train.assign(site="one"), train["diagnosis"])


def test_metrics() -> None:
    classes = ["A", "B"]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = evaluate(["A", "B", "B", "B"], proba, classes)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(1.0)
    assert m["brier"] == pytest.approx(np.mean([0.02, 0.08, 0.72, 0.18]))
    assert calibration_error(np.array(["A", "A"]), np.array([[1.0, 0.0], [1.0, 0.0]]), classes) == 0
    current = {"balanced_accuracy": 0.8, "auc": 0.9, "brier": 0.2, "calibration_error": 0.05}
    assert not_worse(dict(current, brier=0.21), current, 0.02) == []
    assert not_worse(dict(current, brier=0.25, auc=0.8), current, 0.02) == ["auc", "brier"]
