"""A synthetic cohort of feature tables with planted diagnostic patterns and site effects, to validate CADS.

``cohort(n, seed=...)`` draws healthy controls (HC) and two patient groups with known, different patterns:

- **SCZ**: grey-matter volume loss in frontal and hippocampal regions, and weaker fronto-temporal connectivity;
- **BD**: volume loss in cingulate and amygdala regions, and stronger cingulo-limbic connectivity;

on top of normal ageing (volume falls with age, faster after 60; spread grows with age), a sex difference, and
per-site multiplicative and additive scanner effects. ``PLANTED`` names the columns each diagnosis changes, so
a validation can count how many planted regions the normative z-scores flag (sensitivity) and how many others
they flag (false-flag rate). Columns follow the library's wide shape (``atlas/feature/region``), regions are AAL
names (so a brain map can paint them) and connectivity pairs ``A__B`` as the BOLD pipeline writes them.

Synthetic values only, never a real person's: no identity, labels like ``S00042``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

#: AAL regions of the synthetic volume features (their mean volume in mm3 in a 40-year-old man).
REGIONS: dict[str, float] = {
    "Precentral_L": 16500, "Precentral_R": 16200, "Frontal_Sup_L": 21000, "Frontal_Sup_R": 22500,
    "Frontal_Mid_L": 25500, "Frontal_Mid_R": 25700, "Frontal_Inf_Tri_L": 11100, "Frontal_Inf_Tri_R": 9400,
    "Cingulum_Ant_L": 7400, "Cingulum_Ant_R": 6900, "Cingulum_Mid_L": 8800, "Cingulum_Mid_R": 9800,
    "Hippocampus_L": 3900, "Hippocampus_R": 4050, "Amygdala_L": 1000, "Amygdala_R": 1100,
    "Calcarine_L": 9600, "Calcarine_R": 8300, "Postcentral_L": 15500, "Postcentral_R": 14600,
    "Parietal_Sup_L": 9000, "Parietal_Sup_R": 9400, "Temporal_Sup_L": 10800, "Temporal_Sup_R": 14600,
    "Temporal_Mid_L": 20700, "Temporal_Mid_R": 18900, "Putamen_L": 4300, "Putamen_R": 4500,
    "Thalamus_L": 4200, "Thalamus_R": 4000, "Precuneus_L": 14100, "Precuneus_R": 13200,
}
#: Regions whose connectivity is simulated (every pair).
FC_REGIONS = ("Frontal_Sup_L", "Frontal_Mid_R", "Temporal_Sup_L", "Temporal_Mid_R", "Cingulum_Ant_L",
              "Amygdala_R", "Hippocampus_L", "Precuneus_R")
DIAGNOSES = ("HC", "SCZ", "BD")
SITES = ("SiteA Prisma 3T", "SiteB Skyra 3T", "SiteC Achieva 3T", "SiteD Discovery 3T")


def gmv(region: str) -> str:
    return f"aal/gmv/{region}"


def fc(a: str, b: str) -> str:
    return f"aal/connectivity/{a}__{b}"


#: diagnosis -> {column: effect}; volumes: multiplicative loss (0.88 = 12 % smaller), connectivity: added z.
EFFECTS: dict[str, dict[str, float]] = {
    "SCZ": {gmv("Frontal_Sup_L"): 0.88, gmv("Frontal_Sup_R"): 0.89, gmv("Frontal_Mid_L"): 0.90,
            gmv("Hippocampus_L"): 0.88, gmv("Hippocampus_R"): 0.89,
            fc("Frontal_Sup_L", "Temporal_Sup_L"): -0.30, fc("Frontal_Mid_R", "Temporal_Mid_R"): -0.30},
    "BD": {gmv("Cingulum_Ant_L"): 0.88, gmv("Cingulum_Ant_R"): 0.89, gmv("Amygdala_L"): 0.88,
           gmv("Amygdala_R"): 0.89,
           fc("Cingulum_Ant_L", "Amygdala_R"): 0.30, fc("Cingulum_Ant_L", "Hippocampus_L"): 0.30},
}
PLANTED: dict[str, list[str]] = {d: list(e) for d, e in EFFECTS.items()}


def feature_columns() -> list[str]:
    pairs = [fc(a, b) for i, a in enumerate(FC_REGIONS) for b in FC_REGIONS[i + 1:]]
    return [gmv(r) for r in REGIONS] + pairs


@dataclass(frozen=True)
class SiteEffect:
    """A scanner's bias: per column a multiplicative factor (volumes) or an offset (connectivity)."""

    scale: dict[str, float]
    shift: dict[str, float]


def site_effects(seed: int = 7, sites: tuple[str, ...] = SITES,
                 volumes: Sequence[str] | None = None) -> dict[str, SiteEffect]:
    """Fixed site biases (the same for every cohort drawn with this seed, so cohorts can be pooled); ``volumes``:
    the volume columns (default those of ``REGIONS``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for site in sites:
        global_scale = rng.normal(1, 0.04)
        scale = {c: float(global_scale * rng.normal(1, 0.02)) for c in (volumes or [gmv(r) for r in REGIONS])}
        shift = {c: float(rng.normal(0, 0.06)) for c in feature_columns() if "/connectivity/" in c}
        out[site] = SiteEffect(scale, shift)
    return out


def cohort(n: int, *, seed: int = 0, mix: tuple[float, float, float] = (0.5, 0.25, 0.25),
           sites: tuple[str, ...] = SITES, site_seed: int = 7, age: tuple[float, float] = (18, 80),
           start: int = 0, volumes: Mapping[str, float] | None = None,
           planted: Mapping[str, Mapping[str, float]] | None = None, connectivity: bool = True,
           noise: float = 0.05) -> pd.DataFrame:
    """``n`` scans: participant, sex, age, site, diagnosis and every feature column (wide shape).

    ``volumes`` (column -> mean in a 40-year-old man) and ``planted`` (diagnosis -> {column: factor}) draw the
    volumes on other columns than the AAL ``REGIONS`` with ``EFFECTS`` (e.g. the regions of another atlas, for a
    reference cohort named like a site's own features); ``connectivity=False`` leaves the connectivity out;
    ``noise``: the volumes' coefficient of variation between people at 40."""
    rng = np.random.default_rng(seed)
    means = dict(volumes) if volumes is not None else {gmv(r): float(m) for r, m in REGIONS.items()}
    planted = EFFECTS if planted is None else planted
    effects = site_effects(site_seed, sites, list(means))
    diagnosis = rng.choice(DIAGNOSES, size=n, p=list(mix))
    site = rng.choice(list(sites), size=n)
    sex = rng.choice(["M", "F"], size=n)
    ages = np.round(rng.uniform(*age, size=n), 1)
    decade = (ages - 40) / 10
    ageing = 1 - 0.025 * decade - 0.012 * np.clip(ages - 60, 0, None) / 10 * decade.clip(0)
    spread = 1 + 0.015 * np.abs(ages - 40)  # larger spread in the old and the young: heteroscedastic noise
    female = sex == "F"
    data: dict[str, np.ndarray] = {}
    for column, mean in means.items():
        value = mean * ageing * np.where(female, 0.92, 1.0) * (1 + noise * spread * rng.standard_normal(n))
        for d, eff in planted.items():
            if column in eff:
                value = np.where(diagnosis == d, value * eff[column], value)
        value = value * np.array([effects[s].scale[column] for s in site])
        data[column] = value
    for i, a in enumerate(FC_REGIONS if connectivity else ()):
        for b in FC_REGIONS[i + 1:]:
            column = fc(a, b)
            value = 0.35 - 0.015 * decade + 0.12 * spread * rng.standard_normal(n)
            for d, eff in EFFECTS.items():
                if column in eff:
                    value = np.where(diagnosis == d, value + eff[column], value)
            data[column] = value + np.array([effects[s].shift[column] for s in site])
    frame = pd.DataFrame({"participant": [f"S{start + k:05d}" for k in range(n)], "sex": sex, "age": ages,
                          "site": site, "diagnosis": diagnosis})
    return pd.concat([frame, pd.DataFrame(data)], axis=1)


def long_rows(frame: pd.DataFrame, index: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Row ``index`` of a cohort as the long-format rows a feature stage writes (``features.rows.COLUMNS``);
    ``columns``: the feature columns (default ``feature_columns()``)."""
    row = frame.iloc[index]
    out = []
    for column in columns or feature_columns():
        atlas, feature, region = column.split("/", 2)
        out.append({"atlas": atlas, "region": region, "feature": feature, "value": float(row[column]),
                    "unit": "z" if feature == "connectivity" else "mm3"})
    return pd.DataFrame(out).assign(participant=row["participant"], session="1", pipeline="features", version="1")


__all__ = ["REGIONS", "FC_REGIONS", "DIAGNOSES", "SITES", "EFFECTS", "PLANTED", "cohort", "feature_columns",
           "gmv", "fc", "long_rows", "site_effects"]
