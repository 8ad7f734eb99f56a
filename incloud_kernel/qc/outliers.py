"""Group outlier flags from stored per-subject QC values, recomputable with new thresholds at any time.

Everything here reads what ``compute`` already stored (the index dicts and the per-volume TSVs of BOLD runs)
and never touches an image: changing the FD threshold or the outlier rule re-derives ``fd_num``/``fd_perc``
and the flags in milliseconds, without re-running any subject (asked for by MRIQC users, whose FD threshold is
fixed at run time). It must never write anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from incloud_kernel.qc.motion import fd_summary


def read_timeseries(path: str | Path) -> pd.DataFrame:
    """The per-volume table written by ``functional.compute_bold`` ("n/a" read as NaN)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def fd_from_timeseries(path: str | Path, threshold: float) -> dict[str, float]:
    """``fd_mean``, ``fd_num``, ``fd_perc`` of one run for a new FD ``threshold`` (mm), from its stored TSV."""
    fd = read_timeseries(path)["framewise_displacement"].to_numpy(dtype=float)
    return fd_summary(fd[np.isfinite(fd)], threshold)


def iqr_flags(table: pd.DataFrame, columns: list[str] | None = None, k: float = 1.5) -> pd.DataFrame:
    """Tukey's fences per column over the group: a value below Q1 - k IQR or above Q3 + k IQR is flagged
    (the rule of MRIQC's group reports' box plots). One boolean column per index and ``any``."""
    cols = columns or [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    flags = pd.DataFrame(index=table.index)
    for c in cols:
        v = table[c].astype(float)
        q1, q3 = np.nanpercentile(v, 25), np.nanpercentile(v, 75)
        flags[c] = (v < q1 - k * (q3 - q1)) | (v > q3 + k * (q3 - q1))
    flags["any"] = flags[cols].any(axis=1) if cols else False
    return flags


def threshold_flags(table: pd.DataFrame, limits: Mapping[str, tuple[float | None, float | None]]) -> pd.DataFrame:
    """Absolute limits per index: ``{"fd_mean": (None, 0.5), "tsnr": (40, None)}`` flags values outside
    [low, high] (None: no bound). One boolean column per limited index and ``any``."""
    flags = pd.DataFrame(index=table.index)
    for c, (low, high) in limits.items():
        v = table[c].astype(float)
        f = pd.Series(False, index=table.index)
        if low is not None:
            f |= v < low
        if high is not None:
            f |= v > high
        flags[c] = f
    flags["any"] = flags.any(axis=1) if len(limits) else False
    return flags


def group_flags(iqms: Mapping[str, Mapping[str, float]], timeseries: Mapping[str, str | Path] | None = None, *,
                fd_threshold: float | None = None, k: float = 1.5,
                limits: Mapping[str, tuple[float | None, float | None]] | None = None) -> pd.DataFrame:
    """Flags for a group, from stored values only.

    ``iqms``: run id -> the dict ``compute`` returned; ``timeseries``: run id -> its per-volume TSV (BOLD).
    With ``fd_threshold`` the FD counts are re-derived from the TSVs first. Returns the table of indices
    (recomputed ones included) joined with ``flag_<index>`` columns (Tukey fences with ``k``, or the absolute
    ``limits`` where given) and ``flag_any``.
    """
    table = pd.DataFrame.from_dict({k_: dict(v) for k_, v in iqms.items()}, orient="index")
    if fd_threshold is not None and timeseries:
        for run, tsv in timeseries.items():
            for key, value in fd_from_timeseries(tsv, fd_threshold).items():
                table.loc[run, key] = value
    flags = threshold_flags(table, limits) if limits else iqr_flags(table, k=k)
    return table.join(flags.add_prefix("flag_"))
