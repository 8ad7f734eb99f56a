"""ComBat harmonisation across scanners (issue 16 item 4): the same numbers as neuroCombat 0.2.12 (run in its own
venv, which numpy 2.4.6 allows there but whose fit/transform is unusable), and planted site effects removed while
a planted age and diagnosis effect is kept; bad input is one line.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import missing
from incloud_kernel.errors import ValidationError
from incloud_kernel.library.combat import ComBat, harmonise

#: The reference environment (scripts/lib/install.sh ensure_combat_reference_venv): neuroCombat, numpy, pandas.
REFERENCE_VENV = Path(os.environ.get("INCLOUD_COMBAT_VENV", "/opt/incloud/combat-venv"))

REFERENCE = """
import json, sys
import numpy as np, pandas as pd
from neuroCombat import neuroCombat
spec = json.load(sys.stdin)
covars = pd.DataFrame(spec["covars"])
out = neuroCombat(dat=np.array(spec["dat"]), covars=covars, batch_col="batch", categorical_cols=["sex"],
                  continuous_cols=["age"], eb=spec["eb"], mean_only=spec["mean_only"])
print(json.dumps(np.asarray(out["data"]).tolist()))
"""


def _planted(seed: int = 7, n_per_site: tuple[int, ...] = (40, 30, 50), features: int = 20):
    """Three scanners with additive and multiplicative effects per feature; age and diagnosis effects kept."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(["siteA", "siteB", "siteC"], n_per_site)
    n = len(sites)
    age = rng.uniform(18, 70, n)
    diagnosis = rng.choice(["HC", "SCZ"], n)
    sex = rng.choice(["F", "M"], n)
    base = rng.uniform(3000, 20000, features)  # regional volumes, mm3
    age_effect = -0.004 * base  # per year
    scz_effect = -0.06 * base
    sd = 0.05 * base
    clean = base + np.outer(age - 40, age_effect) + np.outer(diagnosis == "SCZ", scz_effect) \
        + rng.normal(0, 1, (n, features)) * sd
    shift = {"siteA": 0.0, "siteB": 0.08, "siteC": -0.05}  # additive, a fraction of the base
    scale = {"siteA": 1.0, "siteB": 1.6, "siteC": 0.7}  # multiplicative on the noise
    observed = np.empty_like(clean)
    for s in shift:
        rows = sites == s
        mean = base + np.outer(age[rows] - 40, age_effect) + np.outer(diagnosis[rows] == "SCZ", scz_effect)
        noise = clean[rows] - mean
        observed[rows] = mean + shift[s] * base + scale[s] * noise * rng.uniform(0.9, 1.1, features)
    covariates = pd.DataFrame({"age": age, "diagnosis": diagnosis, "sex": sex})
    return observed, sites, covariates, {"base": base, "age": age_effect, "scz": scz_effect, "sd": sd}


def _effects(data: np.ndarray, covariates: pd.DataFrame, sites: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature: age slope and SCZ difference (least squares with an intercept), and per-site residual means and
    standard deviations."""
    design = np.column_stack([np.ones(len(data)), covariates["age"] - 40, covariates["diagnosis"] == "SCZ"])
    beta, *_ = np.linalg.lstsq(design.astype(float), data, rcond=None)
    residual = data - design.astype(float) @ beta
    return {"age": beta[1], "scz": beta[2],
            "site_mean": np.vstack([residual[sites == s].mean(axis=0) for s in np.unique(sites)]),
            "site_sd": np.vstack([residual[sites == s].std(axis=0) for s in np.unique(sites)])}


def test_planted_site_effects_are_removed_and_biology_is_kept() -> None:
    data, sites, covariates, truth = _planted(n_per_site=(120, 90, 150))
    before = _effects(data, covariates, sites)
    harmonised = ComBat().fit_transform(data, sites, covariates[["age", "diagnosis"]])
    after = _effects(harmonised, covariates, sites)
    sd = truth["sd"]
    # additive: before, some site sits more than 1 noise SD off on every feature; after, all within 0.3 SD
    assert (np.abs(before["site_mean"]).max(axis=0) / sd).min() > 1.0
    assert (np.abs(after["site_mean"]) / sd).max() < 0.3
    # multiplicative: the largest/smallest site SD ratio, ~2.3 planted, comes down to ~1
    ratio_before = before["site_sd"].max(axis=0) / before["site_sd"].min(axis=0)
    ratio_after = after["site_sd"].max(axis=0) / after["site_sd"].min(axis=0)
    assert np.median(ratio_before) > 1.8 and np.median(ratio_after) < 1.15 and ratio_after.max() < 1.3
    # the planted age and diagnosis effects survive (within the sampling error of 360 scans)
    assert np.all(np.abs(after["age"] - truth["age"]) < 0.15 * np.abs(truth["age"]))
    assert np.all(np.abs(after["scz"] - truth["scz"]) < 0.3 * np.abs(truth["scz"]))


def test_transform_harmonises_new_scans_with_their_own_covariates() -> None:
    data, sites, covariates, truth = _planted(seed=11)
    train = np.arange(len(data)) % 3 != 0
    model = ComBat().fit(data[train], sites[train], covariates[train][["age", "diagnosis"]])
    new = model.transform(data[~train], sites[~train], covariates[~train][["age", "diagnosis"]])
    whole = ComBat().fit_transform(data, sites, covariates[["age", "diagnosis"]])
    # the held-out scans land where fitting on everything puts them (same model, estimated from 2/3 of the data)
    assert np.median(np.abs(new - whole[~train]) / truth["sd"]) < 0.15
    frame = pd.DataFrame(data[~train], columns=[f"r{i}" for i in range(data.shape[1])])
    out = model.transform(frame, sites[~train], covariates[~train][["age", "diagnosis"]].reset_index(drop=True))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(frame.columns)
    assert np.allclose(out.to_numpy(), new)


def test_harmonise_a_wide_library_table() -> None:
    data, sites, covariates, _ = _planted(seed=5)
    columns = [f"aal/gmv/R{i}" for i in range(data.shape[1])]
    table = pd.concat([pd.DataFrame({"participant": [f"p{i}" for i in range(len(data))], "scanner": sites}),
                       covariates.reset_index(drop=True), pd.DataFrame(data, columns=columns)], axis=1)
    out, model = harmonise(table, covariates=("age", "diagnosis"))
    expected = ComBat().fit_transform(data, sites, covariates[["age", "diagnosis"]])
    assert np.allclose(out[columns].to_numpy(), expected) and out["participant"].tolist() == table["participant"].tolist()
    again, same = harmonise(table.iloc[:10], covariates=("age", "diagnosis"), model=model)
    assert same is model and np.allclose(again[columns].to_numpy(), expected[:10])
    with pytest.raises(ValidationError, match="no column 'site'"):
        harmonise(table, batch="site")


@pytest.mark.parametrize("eb, mean_only", [(True, False), (False, False), (True, True)])
def test_same_numbers_as_neurocombat_in_its_own_environment(eb: bool, mean_only: bool) -> None:
    python = REFERENCE_VENV / "bin" / "python"
    if not python.exists():
        missing(f"neuroCombat reference venv {REFERENCE_VENV} absent (scripts/lib/install.sh "
                "ensure_combat_reference_venv)")
    data, sites, covariates, _ = _planted(seed=3, n_per_site=(25, 20, 30), features=30)
    spec = {"dat": data.T.tolist(), "eb": eb, "mean_only": mean_only,
            "covars": {"batch": sites.tolist(), "age": covariates["age"].tolist(), "sex": covariates["sex"].tolist()}}
    out = subprocess.run([str(python), "-c", REFERENCE], input=json.dumps(spec), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reference = np.array(json.loads(out.stdout.strip().splitlines()[-1])).T
    ours = ComBat(empirical_bayes=eb, mean_only=mean_only).fit_transform(data, sites, covariates[["age", "sex"]])
    assert ours.shape == reference.shape
    assert np.allclose(ours, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max()), \
        np.abs(ours - reference).max()


def test_bad_input_is_one_line() -> None:
    data, sites, covariates, _ = _planted(n_per_site=(5, 5, 5), features=4)
    cases = [
        (lambda: ComBat().fit(data, sites[:-1]), "one label per sample"),
        (lambda: ComBat().fit(data, np.array(["a"] * 14 + ["b"])), "at least two batches of at least two"),
        (lambda: ComBat().fit(np.where(np.eye(15, 4) > 0, np.nan, data), sites), "complete data"),
        (lambda: ComBat().fit(data, sites, pd.DataFrame({"site_copy": sites})), "confounded"),
        (lambda: ComBat().transform(data, sites), "not fitted"),
        (lambda: ComBat().fit(data, sites).transform(data, np.array(["siteZ"] * 15)), "not seen in fit"),
        (lambda: ComBat().fit(data, sites, covariates[["age"]]).transform(data, sites), "covariate"),
    ]
    for call, words in cases:
        with pytest.raises(ValidationError) as caught:
            call()
        assert words in str(caught.value) and "\n" not in str(caught.value)
