"""The feature library's one-click plots: a region's values across diagnoses, and effect sizes per region as a brain map.

Input is the long rows a query or an export returns (``library.query``: scan attributes plus ``atlas, region,
feature, value``); output is a matplotlib ``Figure`` (``png`` turns it into bytes for a page). The query page
(``voila_apps/feature_library.ipynb``) calls these, and a notebook can too. The brain map paints each atlas region
with its Cohen's d on nilearn's own MNI152 template, with the atlases that ship offline
(``features.atlases``): nothing here downloads, reads the archive or the library's files, or asks for more rows
than it was given (permissions were applied by the query that produced them).
"""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Iterable, Mapping

from incloud_kernel.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    import pandas as pd
    from matplotlib.figure import Figure

#: A scan listed without a diagnosis code is shown in this group.
NO_CODE = "none"
#: Colours of the page (docs/dashboards.md): one per group in order, controls grey.
PALETTE = ("#1d4ed8", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#b91c1c")
CONTROL_COLOUR = "#8792a8"


def by_diagnosis(rows: "pd.DataFrame") -> "pd.DataFrame":
    """The rows with one ``group`` per diagnosis code: a scan with codes ``BD;SCZ`` appears once in each (a
    comorbid scan belongs to both groups), a scan without codes in ``NO_CODE``."""
    codes = rows["diagnosis"].fillna("").astype(str).str.split(";")
    out = rows.assign(group=[[c.strip() for c in cs if c.strip()] or [NO_CODE] for cs in codes])
    return out.explode("group", ignore_index=True)


def _one(rows: "pd.DataFrame", column: str, wanted: str | None) -> "pd.DataFrame":
    """Rows of ``wanted`` in ``column``; with None, the column must hold one value (else: which one?)."""
    if wanted is not None:
        return rows[rows[column] == wanted]
    values = sorted(rows[column].dropna().unique())
    if len(values) > 1:
        raise ValidationError(f"the rows hold several {column} names ({', '.join(values[:5])}): choose one")
    return rows


def select(rows: "pd.DataFrame", atlas: str | None = None, feature: str | None = None) -> "pd.DataFrame":
    """The rows of one atlas and one feature (each may be omitted when the rows hold only one)."""
    return _one(_one(rows, "atlas", atlas), "feature", feature)


def cohens_d(group: Iterable[float], control: Iterable[float]) -> float:
    """Cohen's d of ``group`` minus ``control`` with the pooled standard deviation (n - 1 in each); NaN when a
    side has fewer than two values or both have no spread."""
    import numpy as np

    a, b = np.asarray(list(group), dtype=float), np.asarray(list(control), dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def effect_sizes(rows: "pd.DataFrame", group: str, control: str = "HC", *, atlas: str | None = None,
                 feature: str | None = None) -> "pd.DataFrame":
    """Cohen's d of diagnosis ``group`` against ``control`` per region of one atlas and feature: columns
    ``region, d, n_group, n_control, mean_group, mean_control``, largest |d| first. A scan counts once per
    region (the first of several pipeline versions is not chosen for you: filter ``version`` in the query)."""
    import pandas as pd

    if group == control:
        raise ValidationError("the group and the controls must be different diagnoses")
    chosen = by_diagnosis(select(rows, atlas, feature))
    found = set(chosen["group"])
    for name, what in ((group, "group"), (control, "control group")):
        if name not in found:
            raise ValidationError(f"no listed scan has diagnosis {name} (the {what})")
    out = []
    for region, values in chosen.groupby("region", sort=True):
        a = values.loc[values["group"] == group, "value"].astype(float)
        b = values.loc[values["group"] == control, "value"].astype(float)
        out.append({"region": region, "d": cohens_d(a, b), "n_group": int(a.notna().sum()),
                    "n_control": int(b.notna().sum()), "mean_group": float(a.mean()) if len(a) else math.nan,
                    "mean_control": float(b.mean()) if len(b) else math.nan})
    table = pd.DataFrame(out, columns=["region", "d", "n_group", "n_control", "mean_group", "mean_control"])
    return table.sort_values("d", key=lambda d: -d.abs(), na_position="last", kind="stable").reset_index(drop=True)


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend in a kernel

    fig = Figure(figsize=(width, height), dpi=110)
    fig.patch.set_facecolor("white")
    return fig


def _style(ax) -> None:  # type: ignore[no-untyped-def]
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#c4ccd8")
    ax.tick_params(colors="#3b4558", labelsize=9)
    ax.yaxis.label.set_color("#3b4558")
    ax.grid(axis="y", color="#eef1f6", linewidth=0.8)
    ax.set_axisbelow(True)


def region_figure(rows: "pd.DataFrame", region: str, *, atlas: str | None = None, feature: str | None = None,
                  control: str = "HC") -> "Figure":
    """One region's values per diagnosis: a box per group with every scan as a dot (controls first, in grey)."""
    import numpy as np

    chosen = select(rows, atlas, feature)
    chosen = by_diagnosis(chosen[chosen["region"] == region])
    if chosen.empty:
        raise ValidationError(f"no listed value for region {region}")
    names = sorted(chosen["group"].unique(), key=lambda g: (g != control, g == NO_CODE, g))
    data = [chosen.loc[chosen["group"] == g, "value"].astype(float).dropna().to_numpy() for g in names]
    colours = [CONTROL_COLOUR if g == control else PALETTE[i % len(PALETTE)] for i, g in enumerate(names)]
    fig = _figure(max(4.2, 1.2 * len(names) + 1.8), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    boxes = ax.boxplot(data, widths=0.55, patch_artist=True, showfliers=False,
                       medianprops={"color": "#1d2433", "linewidth": 1.6},
                       whiskerprops={"color": "#8792a8"}, capprops={"color": "#8792a8"})
    for patch, colour in zip(boxes["boxes"], colours):
        patch.set(facecolor=colour + "33", edgecolor=colour, linewidth=1.2)
    jitter = np.random.default_rng(0)  # the same picture for the same rows
    for k, (values, colour) in enumerate(zip(data, colours), start=1):
        ax.scatter(k + jitter.uniform(-0.14, 0.14, len(values)), values, s=18, color=colour, alpha=0.85,
                   edgecolors="white", linewidths=0.5, zorder=3)
    ax.set_xticks(range(1, len(names) + 1), [f"{g}\nn = {len(v)}" for g, v in zip(names, data)])
    unit = next((u for u in chosen.get("unit", []) if isinstance(u, str) and u), "")
    name = f"{chosen['atlas'].iloc[0]} {chosen['feature'].iloc[0]}"
    ax.set_ylabel(f"{name}" + (f" ({unit})" if unit else ""))
    ax.set_title(region, loc="left", fontsize=11, color="#1d2433", fontweight="bold")
    _style(ax)
    fig.tight_layout()
    return fig


def atlas_image(effects: Mapping[str, float], atlas: str) -> tuple["nib.Nifti1Image", list[str]]:
    """The atlas's label image with each region named in ``effects`` filled with its value (0 elsewhere), and the
    names it does not know. Atlases are those of ``features.atlases`` (offline); a region matches by its name."""
    import nibabel as nib
    import numpy as np

    from incloud_kernel.errors import NotFound
    from incloud_kernel.features.atlases import load_atlas

    try:
        loaded = load_atlas(atlas)
    except NotFound as exc:
        raise ValidationError(f"no brain map for atlas {atlas}: {exc}") from None
    by_name = {name: value for value, name in loaded.labels.items()}
    labels = np.asarray(loaded.image.dataobj)
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    unknown = []
    for region, d in effects.items():
        if region not in by_name:
            unknown.append(region)
        elif d is not None and math.isfinite(d):
            lookup[by_name[region]] = d
    return nib.Nifti1Image(lookup[labels], loaded.image.affine), unknown


def brain_map_figure(effects: Mapping[str, float], atlas: str, *, title: str = "") -> "Figure":
    """``effects`` (region -> Cohen's d) painted on the atlas's regions over nilearn's MNI152 template (shipped
    in the nilearn wheel), axial slices, blue for lower and red for higher than controls, on one symmetric
    scale. ValidationError when the atlas is unknown here or names none of the regions."""
    from nilearn import plotting

    image, unknown = atlas_image(effects, atlas)
    if len(unknown) == len(effects):
        raise ValidationError(f"no region of atlas {atlas} in these rows")
    finite = [abs(v) for v in effects.values() if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0) or 1.0
    fig = _figure(10.0, 2.6)
    plotting.plot_stat_map(image, display_mode="z", cut_coords=(-20, -6, 8, 22, 36, 52), figure=fig,
                           cmap="RdBu_r", vmax=round(top + 0.05, 1), symmetric_cbar=True, threshold=1e-6,
                           annotate=True, black_bg=False, draw_cross=False, colorbar=True,
                           title=title or None)
    return fig


def png(fig: "Figure") -> bytes:
    """The figure as PNG bytes (for an ipywidgets Image)."""
    out = io.BytesIO()
    fig.savefig(out, format="png", facecolor=fig.get_facecolor(), bbox_inches="tight")
    return out.getvalue()


__all__ = ["NO_CODE", "by_diagnosis", "select", "cohens_d", "effect_sizes", "region_figure", "atlas_image",
           "brain_map_figure", "png"]
