"""Benchmark for issue 3: 10 participants, each T1 1 mm + BOLD 100 volumes + DWI 33 volumes, on 2 processes.

Usage: /opt/incloud/venv/bin/python bench/bench_synth.py [OUT] [--participants N] [--workers W]
Prints the wall time, the CPU time of this process and its workers (user + system), the load average before and
after, the CPU seconds other processes used meanwhile (from /proc/stat), files and bytes written, and the ratio
to the 60 s goal. On a shared machine the wall time depends on the other load; CPU seconds / workers is what the
run would take on idle cores.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from incloud_kernel.synth import make_cohort

GOAL_S = 60.0


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all processes; /proc/stat, Linux), or NaN elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--participants", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-synth-"))
    if out.exists():
        shutil.rmtree(out)
    load_before = os.getloadavg()
    busy_before = machine_cpu_s()
    t0 = time.perf_counter()
    cohort = make_cohort(out, participants=args.participants, seed=2026, sites=3, small=False,
                         workers=args.workers, bold_volumes=100, dwi_directions=32)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    busy = machine_cpu_s() - busy_before
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    files = list(out.rglob("*.dcm"))
    size = sum(f.stat().st_size for f in files)
    print(f"participants {len(cohort.studies)}  workers {args.workers}")
    print(f"wall time {wall:.1f} s  ({wall / len(cohort.studies):.1f} s per participant)")
    print(f"cpu {cpu:.1f} s user+system ({cpu / len(cohort.studies):.1f} s per participant); "
          f"cpu / workers {cpu / args.workers:.1f} s")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); other processes used "
          f"{max(busy - cpu, 0.0):.1f} CPU-s of the {wall * (os.cpu_count() or 1):.1f} the machine had meanwhile")
    print(f"files {len(files)}  bytes {size / 1e9:.2f} GB")
    print(f"ratio to goal ({GOAL_S:.0f} s): {wall / GOAL_S:.2f}")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
