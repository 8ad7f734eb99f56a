"""Benchmark for issue 14 item 5: QC seconds per 1 mm T1w and per BOLD run (goal: under 30 s each).

Usage: /opt/incloud/venv/bin/python bench/bench_qc.py [--skip-real]
Measures ``incloud_kernel.qc.compute`` on: a synthetic 1 mm T1w head (176 sagittal slices of 240 x 240, the
cohort's full geometry), pydeface's real 1 mm average head (176 x 256 x 256, from its wheel), and a synthetic
full-size BOLD run (3.5 mm, 64 x 64 x 40, 100 volumes). Rendering is not timed. Prints wall seconds and CPU
seconds (this process, all threads) per image, and the load average: on the shared 2-core machine wall time
depends on the other load. Writes only to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qc_inputs import synth_bold, synth_t1  # noqa: E402

from incloud_kernel.qc import compute  # noqa: E402

GOAL_S = 30.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(label: str, path: Path, datatype: str, suffix: str, **params: object) -> None:
    load0 = os.getloadavg()[0]
    w0, c0 = time.perf_counter(), cpu_s()
    iqms = compute(path, datatype, suffix, **params)
    wall, cpu = time.perf_counter() - w0, cpu_s() - c0
    print(f"{label:<44} wall {wall:6.1f} s  cpu {cpu:6.1f} s  load {load0:4.1f}  "
          f"{'OK' if wall < GOAL_S else 'OVER'} (goal {GOAL_S:.0f} s)  {len(iqms)} indices")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-real", action="store_true", help="do not time pydeface's average head")
    args = ap.parse_args()
    print(f"bench_qc {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-qc-") as tmp:
        out = Path(tmp)
        t1 = synth_t1(out, voxel_mm=1.0)
        timed("T1w synthetic 1 mm (176x240x240)", t1, "anat", "T1w")
        if not args.skip_real:
            import pydeface

            head = Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz"
            timed("T1w pydeface average head 1 mm (176x256x256)", head, "anat", "T1w")
        bold, _, _ = synth_bold(out, volumes=100, voxel_mm=3.5, matrix=64, slices=40)
        timed("BOLD synthetic 3.5 mm 64x64x40 x 100", bold, "func", "bold", out_dir=out)


if __name__ == "__main__":
    main()
