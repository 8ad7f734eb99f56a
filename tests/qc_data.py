"""QC indices and a per-volume motion TSV for the portal's DEMO project (``isolatedhub.seed_demo``), written the way
the QC pipeline will write them (``gate.record_indices``, a ``qc`` derivative), so the review dashboard has
something to show. The values are chosen so that, with the site's default thresholds, exactly three DEMO series
wait for a reviewer: T1w of 002 and BOLD of 001 and 002 (BOLD of 003 passes automatically).
"""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

#: (participant, suffix) -> indices (MRIQC IQM names).
INDICES: dict[tuple[str, str], dict[str, float]] = {
    ("001", "T1w"): {"cjv": 0.36, "cnr": 3.1, "snr_total": 12.4, "efc": 0.48, "fber": 4200.0, "wm2max": 0.61},
    ("002", "T1w"): {"cjv": 0.58, "cnr": 2.2, "snr_total": 9.1, "efc": 0.55, "fber": 2600.0, "wm2max": 0.57},
    ("003", "T1w"): {"cjv": 0.91, "cnr": 1.1, "snr_total": 5.2, "efc": 0.66, "fber": 900.0, "wm2max": 0.42},
    ("001", "bold"): {"fd_mean": 0.31, "fd_perc": 12.0, "tsnr": 61.0, "dvars_std": 1.21, "gcor": 0.04, "aqi": 0.011},
    ("002", "bold"): {"fd_mean": 0.44, "fd_perc": 25.0, "tsnr": 47.0, "dvars_std": 1.35, "gcor": 0.07, "aqi": 0.019},
    ("003", "bold"): {"fd_mean": 0.12, "fd_perc": 0.0, "tsnr": 88.0, "dvars_std": 1.02, "gcor": 0.02, "aqi": 0.006},
}


def motion_tsv(n: int = 40, spikes: tuple[int, ...] = (12, 27), seed: int = 0) -> bytes:
    """Per-volume FD (Power, mm) and standardised DVARS as MRIQC/fMRIPrep write them (first volume ``n/a``)."""
    rng = np.random.default_rng(seed)
    fd = np.abs(rng.normal(0.15, 0.06, n))
    dvars = rng.normal(1.05, 0.08, n)
    for s in spikes:
        fd[s] += 0.9
        dvars[s] += 0.8
    lines = ["framewise_displacement\tstd_dvars"] + ["n/a\tn/a"]
    lines += [f"{a:.4f}\t{b:.4f}" for a, b in zip(fd[1:], dvars[1:])]
    return ("\n".join(lines) + "\n").encode()


def seed_qc(env: dict[str, str]) -> None:
    """Indices for DEMO's six series and a motion TSV for each BOLD run, as the site console."""
    from incloud_kernel.archive import records
    from incloud_kernel.archive.models import Participant, Series, Session
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.config import load_config
    from incloud_kernel.qc import gate
    from incloud_kernel.site import Site

    cfg = load_config(env=env)
    site = Site.open(cfg, migrate=True)
    console = Actor.console("qc-test")
    derivatives = []
    with records.transaction(site) as db:
        rows = db.execute(select(Series, Participant.label).join(Session, Series.session_id == Session.id)
                          .join(Participant, Session.participant_id == Participant.id)
                          .where(Participant.label.in_(["001", "002", "003"]))).all()
        for series, label in rows:
            gate.record_indices(db, console, series, INDICES[(label, series.suffix)], "0.1", cfg.qc)
            if series.suffix == "bold":
                derivatives.append((records.add_derivative(db, console, series.session_id, "qc", "0.1",
                                                           inputs=[series.id]).id, int(label)))
    for derivative_id, n in derivatives:
        records.add_files(site, console, derivative_id,
                          {"func/task-rest_desc-motion_timeseries.tsv": motion_tsv(seed=n, spikes=(8 + n, 30 - n))},
                          derivative=True)
    site.engine.dispose()
