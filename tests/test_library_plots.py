"""The feature library page's plots (``library.plots``) on their own: Cohen's d against hand-computed values, comorbid
scans in both groups, the brain map painting each atlas region with its d (offline AAL from mricron-data), and one-line
refusals. The page itself: tests/test_feature_library_page.py."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import library_data
from conftest import missing
from incloud_kernel.errors import ValidationError
from incloud_kernel.library import plots


def rows() -> pd.DataFrame:
    """library_data's cohort as the long rows a query returns."""
    out = []
    for n, person in enumerate(library_data.PEOPLE):
        frame = library_data.rows_for(person, n)
        out.append(frame.assign(project=person.project, diagnosis=";".join(person.diagnosis), series=n))
    return pd.concat(out, ignore_index=True)


def test_cohens_d_uses_the_pooled_standard_deviation() -> None:
    assert plots.cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)  # means 2 vs 3, both SD 1
    # unequal sizes: pooled variance ((3-1)*1 + (4-1)*var) / 5
    b = [0.0, 2.0, 4.0, 6.0]
    pooled = math.sqrt((2 * 1.0 + 3 * np.var(b, ddof=1)) / 5)
    assert plots.cohens_d([4, 5, 6], b) == pytest.approx((5 - 3) / pooled)
    assert math.isnan(plots.cohens_d([1], [1, 2])) and math.isnan(plots.cohens_d([1, 1], [1, 1]))


def test_effect_sizes_per_region_count_comorbid_scans_in_both_groups() -> None:
    data = rows()
    table = plots.effect_sizes(data, "SCZ", "HC", atlas="aal", feature="gmv")
    assert set(table["region"]) == set(library_data.AAL)
    scz = {p.label for p in library_data.PEOPLE if "SCZ" in p.diagnosis}
    assert set(table["n_group"]) == {len(scz)} and set(table["n_control"]) == {6}  # B03 (BD;SCZ) is in SCZ
    hippo = data[(data["region"] == "Hippocampus_L") & (data["atlas"] == "aal")]
    a = hippo[hippo["diagnosis"].str.contains("SCZ")]["value"]
    b = hippo[hippo["diagnosis"] == "HC"]["value"]
    assert table.set_index("region").loc["Hippocampus_L", "d"] == pytest.approx(plots.cohens_d(a, b))
    assert (table["d"] < 0).all()  # library_data's SCZ scans have 7 % less grey matter
    assert list(table["d"].abs()) == sorted(table["d"].abs(), reverse=True)  # largest first
    with pytest.raises(ValidationError, match="no listed scan has diagnosis MDD"):
        plots.effect_sizes(data, "MDD", "HC", atlas="aal", feature="gmv")
    with pytest.raises(ValidationError, match="several atlas names"):
        plots.effect_sizes(data, "SCZ", "HC")


def test_region_figure_has_one_box_per_diagnosis() -> None:
    fig = plots.region_figure(rows(), "Hippocampus_L", atlas="aal", feature="gmv")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["HC\nn = 6", "BD\nn = 3", "SCZ\nn = 12"]  # controls first
    assert plots.png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValidationError, match="no listed value for region Nowhere"):
        plots.region_figure(rows(), "Nowhere", atlas="aal", feature="gmv")


def test_brain_map_paints_each_region_with_its_d() -> None:
    from incloud_kernel.features.atlases import available_atlases, load_atlas

    if "aal" not in available_atlases():
        missing("mricron-data's AAL atlas (/usr/share/mricron/templates)")
    effects = {"Hippocampus_L": -0.8, "Precentral_R": 0.5, "Not_a_region": 3.0}
    image, unknown = plots.atlas_image(effects, "aal")
    atlas = load_atlas("aal")
    labels = np.asarray(atlas.image.dataobj)
    values = np.asarray(image.dataobj)
    number = {name: value for value, name in atlas.labels.items()}
    assert unknown == ["Not_a_region"]
    assert np.allclose(values[labels == number["Hippocampus_L"]], -0.8)
    assert np.allclose(values[labels == number["Precentral_R"]], 0.5)
    assert np.count_nonzero(values) == np.count_nonzero(np.isin(labels, [number["Hippocampus_L"],
                                                                         number["Precentral_R"]]))
    assert plots.png(plots.brain_map_figure(effects, "aal")).startswith(b"\x89PNG")
    with pytest.raises(ValidationError, match="no brain map for atlas jhu"):
        plots.brain_map_figure({"Fornix": 1.0}, "jhu")
    with pytest.raises(ValidationError, match="no region of atlas aal"):
        plots.brain_map_figure({"Fornix": 1.0}, "aal")
