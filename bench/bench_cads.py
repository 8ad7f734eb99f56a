"""Benchmark: one CADS report (issue 17 goal: under 10 s once features exist) and retraining at 10,000 subjects.

1. **Report.** A temporary site (SQLite) with a synthetic cohort of ``--library`` scans published to the feature
   library through ``library.store.publish`` (as the feature pipeline does), a model trained by
   ``registry.retrain``; then, for one participant, as a clinician collaborator: ``report.build`` (permission
   check, the scan's features through the library query, model load with its checksum, z-scores, probabilities,
   audit) and ``render.pdf`` (brain map on the AAL atlas and MNI template, one A4 page). The first report of a
   process pays the model load and the atlas read ("cold"); the median of ``--repeats`` more is "warm".
2. **Retraining.** ``registry.retrain`` on a synthetic cohort of ``--subjects`` scans (given as a frame: the
   library read of 10,000 scans is benchmarked by bench/bench_library.py): once without validation (the first
   model), then as ``incloud cads retrain`` runs by default: the held-out split, the candidate fit (normative BLR
   on the controls, calibrated linear + random-forest ensemble), the leave-site-out validation (4 sites: four
   more fits), scoring it and the current model on the held-out scans, saving.

    python bench/bench_cads.py                       # report on a 200-scan library; retraining at 10,000
    python bench/bench_cads.py --subjects 2000       # a quicker retraining figure
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _site(home: Path):  # type: ignore[no-untyped-def]
    os.environ["INCLOUD_HOME"] = str(home)
    os.environ["INCLOUD_DATABASE_URL"] = f"sqlite:///{home / 'incloud.sqlite'}"
    from incloud_kernel.config import load_config
    from incloud_kernel.site import Site

    site = Site.open(load_config(), migrate=True)
    site.ensure_roots()
    return site


def bench_report(library: int, repeats: int) -> None:
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.archive.projects import create_project, grant
    from incloud_kernel.cads import registry, render, report, synthetic
    from incloud_kernel.db import transaction
    from incloud_kernel.library import store

    console = Actor.console("bench")
    with tempfile.TemporaryDirectory() as tmp:
        site = _site(Path(tmp))
        frame = synthetic.cohort(library, seed=5)
        ids = []
        started = time.perf_counter()
        with records.transaction(site) as db:
            create_project(db, console, "CADS", "bench cohort", owner="olivia")
            grant(db, console, "CADS", "cleo", "collaborator")
            for row in frame.itertuples():
                p = records.add_participant(db, console, "CADS", row.participant, sex=row.sex,
                                            diagnosis=[row.diagnosis], follow_up=False)
                s = records.add_session(db, console, p, "1", age_at_scan=float(row.age), scanner=row.site)
                ids.append(records.add_series(db, console, s, "anat", "T1w", qc_status="pass").id)
        with records.transaction(site) as db:
            for k, sid in enumerate(ids):
                store.publish(site, db, console, synthetic.long_rows(frame, k), series=sid)
        store.compact(site)
        print(f"library: {library} scans x {len(synthetic.feature_columns())} features published in "
              f"{time.perf_counter() - started:.1f} s")
        with transaction(site.engine) as db:
            outcome = registry.retrain(site, db, console, validate=False)
        print(f"model v{outcome.version} trained on the library in {outcome.seconds:.1f} s ({outcome.decision})")
        times: list[tuple[float, float]] = []
        for n in range(repeats + 1):
            sid = ids[(7 * n + 3) % len(ids)]
            with transaction(site.engine) as db:
                cleo = Actor.resolve(db, "cleo")
                t0 = time.perf_counter()
                out = report.build(site, db, cleo, sid)
                t1 = time.perf_counter()
            render.pdf(out, Path(tmp) / f"r{n}.pdf")
            t2 = time.perf_counter()
            times.append((t1 - t0, t2 - t1))
        cold, warm = times[0], times[1:]
        print(f"report, cold (first in the process): build {cold[0]:.2f} s + PDF {cold[1]:.2f} s = "
              f"{sum(cold):.2f} s")
        print(f"report, warm (median of {repeats}): build {statistics.median(t[0] for t in warm):.2f} s + PDF "
              f"{statistics.median(t[1] for t in warm):.2f} s = {statistics.median(sum(t) for t in warm):.2f} s")
        site.engine.dispose()


def bench_retrain(subjects: int) -> None:
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.cads import registry, synthetic
    from incloud_kernel.db import transaction

    frame = synthetic.cohort(subjects, seed=6)
    frame = frame.assign(project="CADS", series=np.arange(len(frame)) + 1, label=frame["diagnosis"])
    with tempfile.TemporaryDirectory() as tmp:
        site = _site(Path(tmp))
        console = Actor.console("bench")
        with transaction(site.engine) as db:
            first = registry.retrain(site, db, console, frame=frame, validate=False)
        print(f"retrain at {subjects} subjects, first model, no leave-site-out validation: {first.seconds:.1f} s")
        with transaction(site.engine) as db:
            second = registry.retrain(site, db, console, frame=frame, seed=1)
        lso = second.metrics["leave_site_out"]["pooled"]
        print(f"retrain at {subjects} subjects against the current model, with leave-site-out validation (the "
              f"default of incloud cads retrain): {second.seconds:.1f} s; leave-site-out balanced accuracy "
              f"{lso['balanced_accuracy']:.3f}, calibration error {lso['calibration_error']:.3f}; {second.decision}")
        site.engine.dispose()


@click.command()
@click.option("--library", default=200, show_default=True, help="Scans in the library for the report benchmark.")
@click.option("--repeats", default=5, show_default=True)
@click.option("--subjects", default=10_000, show_default=True, help="Subjects for the retraining benchmark.")
@click.option("--skip-report", is_flag=True)
@click.option("--skip-retrain", is_flag=True)
def main(library: int, repeats: int, subjects: int, skip_report: bool, skip_retrain: bool) -> None:
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if not skip_report:
        bench_report(library, repeats)
    if not skip_retrain:
        bench_retrain(subjects)
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
