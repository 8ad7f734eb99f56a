"""Drawing a CADS report: the brain map of z-scores, the probability chart, and the PDF for the clinical record.

``brain_map(report)`` paints each volume feature's z-score into its atlas region (the atlas most of the volume
features are in: AAL, Harvard-Oxford, ... as ``features.atlases`` loads them) over nilearn's packaged MNI152
template, with flagged regions outlined by the colour scale's ends; ``pdf(report, path)`` writes one A4 page
(matplotlib ``PdfPages``): header with the pseudonym, scan and QC status, the brain map, the table of flagged
regions with z and centiles, the probabilities with their ranges, the model version and its validated
performance, the warnings and the statement that the report supports and does not replace clinical judgement.

Must never: download anything (no ``fetch_*``), or write anything but the report's own pseudonymous content.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

#: Features the brain map can paint (``atlas/feature/region``), in order of preference: one kind is painted, the
#: first the report holds, since a region has one colour (a volume z and a thickness z of one region would
#: overwrite each other).
MAP_FEATURES = ("gmv", "gm_volume", "volume", "thickness")
MAP_ATLAS = "aal"
#: How a heading names a feature kind.
FEATURE_WORDS = {"gmv": "grey-matter volume", "gm_volume": "grey-matter volume", "volume": "volume",
                 "thickness": "cortical thickness", "connectivity": "connectivity", "fa": "FA", "md": "MD"}
#: |z| below which the map shows no colour (the flag threshold is in the caption and the table).
MAP_FLOOR = 1.0


def map_atlas(report: dict[str, Any]) -> str:
    """The atlas the map paints: the one most of the report's volume features are in (the T1 pipeline's default
    is Harvard-Oxford, the synthetic cohorts' AAL), ``MAP_ATLAS`` when there is none."""
    from collections import Counter

    atlases = Counter(r["feature"].split("/", 2)[0] for r in report["regions"]
                      if r["feature"].count("/") == 2 and r["feature"].split("/", 2)[1] in MAP_FEATURES)
    return atlases.most_common(1)[0][0] if atlases else MAP_ATLAS


def _kinds(report: dict[str, Any]) -> list[str]:
    return sorted({r["feature"].split("/")[1] for r in report["regions"] if r["feature"].count("/") == 2})


def map_feature(report: dict[str, Any]) -> str | None:
    """The one feature kind the map paints: the first of ``MAP_FEATURES`` the report holds (None: nothing)."""
    kinds = _kinds(report)
    return next((k for k in MAP_FEATURES if k in kinds), None)


def _z_image(report: dict[str, Any]) -> Any:
    import nibabel as nib

    from incloud_kernel.features.atlases import load_atlas

    chosen, kind = map_atlas(report), map_feature(report)
    atlas = load_atlas(chosen)
    labels = _labels(atlas)
    by_name = {name: value for value, name in atlas.labels.items()}
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.float32)  # label value -> z (0: no colour)
    for region in report["regions"]:
        atlas_name, feature, name = (region["feature"].split("/", 2) + ["", ""])[:3]
        if atlas_name == chosen and feature == kind and name in by_name and region["z"] is not None:
            lookup[by_name[name]] = region["z"]
    return nib.Nifti1Image(lookup[labels], atlas.image.affine)


_LABELS: dict[str, np.ndarray] = {}


def _labels(atlas: Any) -> np.ndarray:
    """The atlas's label array, read once per process (a report paints it with one table look-up)."""
    if atlas.name not in _LABELS:
        _LABELS[atlas.name] = np.asarray(atlas.image.dataobj).astype(np.int32)
    return _LABELS[atlas.name]


def draw_brain_map(report: dict[str, Any], figure: Any, rect: tuple[float, float, float, float]) -> None:
    """The z-score map in ``rect`` (figure fraction) of ``figure``."""
    from nilearn import plotting
    from nilearn.datasets import load_mni152_template

    ax = figure.add_axes(rect)
    threshold = float(report["threshold"])
    plotting.plot_stat_map(_z_image(report), bg_img=load_mni152_template(resolution=2), axes=ax,
                           display_mode="z", cut_coords=(-20, -8, 4, 16, 30, 48), threshold=MAP_FLOOR,
                           vmax=max(4.0, threshold + 1), cmap="RdBu_r", colorbar=True, annotate=False,
                           draw_cross=False, black_bg=False, resampling_interpolation="nearest")


def brain_map_png(report: dict[str, Any], dpi: int = 90) -> bytes:
    """The brain map alone as PNG (for the dashboard)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 2.2))
    draw_brain_map(report, figure, (0, 0, 1, 1))
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def map_heading(report: dict[str, Any]) -> str:
    """The brain map's heading: the one kind the map paints (``map_feature``) and, when the report holds other
    kinds (thickness beside volume, connectivity, FA, ...), that those are in the table and not on the map, so
    the heading never claims the flags are all of the painted kind."""
    painted = map_feature(report)
    words = lambda names: " and ".join(FEATURE_WORDS.get(k, k) for k in names)  # noqa: E731
    others = [k for k in _kinds(report) if k != painted]
    head = (f"Brain map of {FEATURE_WORDS.get(painted, painted) if painted else 'regional volume'} z-scores "
            "against healthy controls of the same age, sex and scanner")
    return head + (f" ({words(others)}: in the table below, not on the map)" if others else "")


def _fmt(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def performance_line(report: dict[str, Any]) -> str:
    model = report["model"]
    held, lso = model["validated"].get("heldout"), model["validated"].get("leave_site_out")
    sources = ", ".join(f"{p['scans']} of other projects" if p["code"] is None else
                        f"{p['scans']} of {p['code']}" + (f" ({p['name']})" if p["name"] else "")
                        for p in model.get("training_projects", []))
    parts = [f"model v{model['version']} ({model['kind']}, trained on {model['trained_on']} scans"
             + (f": {sources}" if sources else "") + ")"]
    if model.get("note"):
        parts.append(f"note: {model['note']}")
    for name, m in (("held-out", held), ("leave-site-out", lso)):
        if m:
            parts.append(f"{name}: balanced accuracy {_fmt(m['balanced_accuracy'])} (chance {_fmt(m['chance'])}), "
                         f"AUC {_fmt(m['auc'])}, Brier {_fmt(m['brier'])}, calibration error "
                         f"{_fmt(m['calibration_error'])}, n={m['n']}")
    return "; ".join(parts)


def pdf(report: dict[str, Any], path: str | Path) -> Path:
    """The report as a one-page A4 PDF at ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from incloud_kernel.archive.storage import replacing

    target = Path(path)
    figure = Figure(figsize=(8.27, 11.69))
    text = figure.text
    scan = report["scan"]
    text(0.05, 0.965, "INCloud computer-aided diagnosis report", fontsize=15, weight="bold")
    text(0.05, 0.945, f"Participant {report['pseudonym']}   project {report['project']}   session "
                      f"{report['session']}   series {report['series']}", fontsize=9.5)
    age = "n/a" if scan["age"] is None else f"{scan['age']:.0f}"
    text(0.05, 0.930, f"Scan: {scan['datatype']}/{scan['suffix']} on {scan['scanner']}; age {age}, sex "
                      f"{scan['sex']}; QC status: {scan['qc']}; features {scan['pipeline']}", fontsize=9)
    text(0.05, 0.915, f"Report of {report['created_at']} by model version {report['model']['version']}",
         fontsize=9)
    text(0.05, 0.893, map_heading(report), fontsize=9)
    text(0.05, 0.880, f"(blue smaller, red larger than expected; coloured beyond |z| > {MAP_FLOOR:g})", fontsize=8)
    draw_brain_map(report, figure, (0.03, 0.695, 0.94, 0.18))

    flagged = report["flagged"]
    text(0.05, 0.675, f"Flagged features: {len(flagged)} of {report['n_features']} beyond |z| > "
                      f"{report['threshold']:g}  (expected by chance in a healthy person: "
                      f"{report['expected_false_flags']:.1f})", fontsize=10, weight="bold")
    rows = [[r["feature"], _fmt(r["z"]), _fmt(r["centile"], 1)] for r in flagged[:14]] or [["none", "", ""]]
    height = 0.0165 * (len(rows) + 1)
    ax = figure.add_axes((0.05, 0.665 - height, 0.9, height))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["feature (atlas/feature/region)", "z", "centile"],
                     colWidths=[0.7, 0.15, 0.15], bbox=(0, 0, 1, 1), cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    top = 0.665 - height - 0.012
    if len(flagged) > 14:
        text(0.05, top, f"... and {len(flagged) - 14} more (full table in the dashboard)", fontsize=8)
        top -= 0.015
    text(0.05, top - 0.01, "Probabilities per category (bars: range over the calibration folds' models)",
         fontsize=10, weight="bold")
    bars = 0.03 * len(report["probabilities"]) + 0.03
    ax = figure.add_axes((0.2, top - 0.025 - bars, 0.7, bars))
    probs = report["probabilities"]
    names = [p["category"] for p in probs][::-1]
    values = np.array([p["probability"] for p in probs][::-1])
    low = np.array([p["low"] for p in probs][::-1])
    high = np.array([p["high"] for p in probs][::-1])
    ax.barh(names, values, color="#4a7ab5", xerr=np.vstack([values - low, high - values]), capsize=4)
    for k, v in enumerate(values):
        inside = v > 0.75
        ax.text(v - 0.03 if inside else v + 0.03, k, f"{v:.2f} (range {low[k]:.2f}-{high[k]:.2f})", va="center",
                ha="right" if inside else "left", fontsize=8, color="white" if inside else "black")
    ax.set_xlim(0, 1)
    ax.set_xlabel("calibrated probability", fontsize=8)
    ax.tick_params(labelsize=8)

    y = top - 0.025 - bars - 0.05
    text(0.05, y, "Model and validated performance", fontsize=10, weight="bold")
    import textwrap

    for line in textwrap.wrap(performance_line(report), 120):
        y -= 0.016
        text(0.05, y, line, fontsize=8)
    y -= 0.024
    text(0.05, y, "Warnings", fontsize=10, weight="bold")
    for warning in report["warnings"] or ["none"]:
        for line in textwrap.wrap(warning, 120):
            y -= 0.016
            text(0.05, y, line, fontsize=8, color="#a00000" if report["warnings"] else "black")
    y -= 0.03
    for line in textwrap.wrap(report["statement"], 95):
        text(0.05, y, line, fontsize=10, weight="bold")
        y -= 0.018
    with replacing(target) as tmp:
        with PdfPages(tmp) as pages:
            info = pages.infodict()
            info["Title"] = f"CADS report {report['pseudonym']} series {report['series']}"
            info["Subject"] = f"model version {report['model']['version']}"
            pages.savefig(figure)
    return target


__all__ = ["brain_map_png", "draw_brain_map", "map_feature", "map_heading", "pdf", "performance_line"]
