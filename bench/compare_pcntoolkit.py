"""INCloud's normative BLR (incloud_kernel.cads.normative) against PCNtoolkit 1.x's BLR on the same synthetic data.

PCNtoolkit is GPL and pulls in PyMC; it is not an INCloud dependency. It installs with INCloud's pins into a
throwaway venv, where this script runs (INCloud's code on PYTHONPATH, only numpy/pandas/scipy/scikit-learn used):

    /usr/bin/python3 -m venv /tmp/pcn-venv && /tmp/pcn-venv/bin/pip install -c constraints.txt pcntoolkit
    PYTHONPATH=. /tmp/pcn-venv/bin/python bench/compare_pcntoolkit.py [N_TRAIN] [N_FEATURES]

N_FEATURES (default all 60) keeps the planted features and the first others up to that number: PCNtoolkit fits
one feature in ~10-20 s on a loaded machine.

Both fit healthy controls of a training cohort (age by a cubic B-spline with 5 knots, sex, site; heteroscedastic
noise); both score the same test cohort. Printed: fit seconds, the correlation of the two z-scores, the agreement
of |z| > 2 flags, and each one's false-flag rate in healthy controls and sensitivity to the planted regions.
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

from incloud_kernel.cads import synthetic
from incloud_kernel.cads.normative import NormativeModel


def pcn_z(train: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> tuple[pd.DataFrame, float]:
    from pcntoolkit import BLR, BsplineBasisFunction, NormData
    from pcntoolkit import NormativeModel as PCNModel

    def frame(f: pd.DataFrame) -> pd.DataFrame:
        names = {c: f"y{k}" for k, c in enumerate(features)}
        out = f[["age", "site"] + features].rename(columns=names).assign(sexF=(f["sex"] == "F").astype(float))
        return out.assign(sid=np.arange(len(f))).reset_index(drop=True)

    ys = [f"y{k}" for k in range(len(features))]
    fit = NormData.from_dataframe("train", frame(train), covariates=["age", "sexF"], batch_effects=["site"],
                                  response_vars=ys, subject_ids="sid")
    score = NormData.from_dataframe("test", frame(test), covariates=["age", "sexF"], batch_effects=["site"],
                                    response_vars=ys, subject_ids="sid")
    blr = BLR(fixed_effect=True, heteroskedastic=True, basis_function_mean=BsplineBasisFunction(basis_column=0),
              basis_function_var=BsplineBasisFunction(basis_column=0))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PCNModel(blr, savemodel=False, saveresults=False, saveplots=False, evaluate_model=False,
                         save_dir=tmp)
        model.fit(fit)
        seconds = time.perf_counter() - started
        model.predict(score)
    z = score["Z"].to_pandas() if hasattr(score["Z"], "to_pandas") else score["Z"]
    z = pd.DataFrame(np.asarray(z), columns=ys)
    return z.rename(columns={f"y{k}": c for k, c in enumerate(features)}), seconds


def summary(name: str, z: pd.DataFrame, test: pd.DataFrame) -> None:
    flags = z.abs() > 2
    healthy = (test["diagnosis"] == "HC").to_numpy()
    parts = [f"{name}: false-flag rate in controls {flags[healthy].to_numpy().mean():.4f} (expected 0.0455)"]
    for diagnosis, planted in synthetic.PLANTED.items():
        rows = (test["diagnosis"] == diagnosis).to_numpy()
        parts.append(f"{diagnosis} sensitivity {flags.loc[rows, planted].to_numpy().mean():.3f}")
    print("; ".join(parts))


def main(n_train: int = 1000, n_features: int = 60) -> None:
    train, test = synthetic.cohort(n_train, seed=41), synthetic.cohort(600, seed=42)
    controls = train[train["diagnosis"] == "HC"]
    planted = [c for cols in synthetic.PLANTED.values() for c in cols]
    features = planted + [c for c in synthetic.feature_columns() if c not in planted]
    features = features[:max(n_features, len(planted))]
    started = time.perf_counter()
    ours = NormativeModel().fit(controls, features)
    ours_seconds = time.perf_counter() - started
    z_ours = ours.transform(test).reset_index(drop=True)
    z_pcn, pcn_seconds = pcn_z(controls, test, features)
    print(f"{len(controls)} training controls, {len(features)} features, {len(test)} test scans")
    print(f"fit seconds: incloud {ours_seconds:.1f}, pcntoolkit {pcn_seconds:.1f}")
    r = [np.corrcoef(z_ours[c], z_pcn[c])[0, 1] for c in features]
    agree = ((z_ours.abs() > 2) == (z_pcn.abs() > 2)).to_numpy().mean()
    print(f"z correlation per feature: median {np.median(r):.4f}, min {np.min(r):.4f}; |z|>2 flag agreement "
          f"{agree:.4f}; median |z difference| {np.median(np.abs(z_ours - z_pcn).to_numpy()):.3f}")
    summary("incloud", z_ours, test)
    summary("pcntoolkit", z_pcn, test)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
