#!/usr/bin/env python3
"""Benchmark: de-identification files/s on >= 2,000 single-frame 256x256 MR instances.

Runs, on the same generated corpus in the same process run: INCloud on 1 process, dicognito (installed) on 1
process, INCloud with --jobs 2. Each reads every file, de-identifies it and writes it to its own output folder.
Prints both rates and the ratio (goal: INCloud 1 process >= 3x dicognito), in wall-clock files/s and, because
the development machine is shared, also per second of the process's own CPU time (less sensitive to load).

    /opt/incloud/venv/bin/python bench/bench_deid.py [--n 2000] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

KEY = b"bench-key-0123456789abcdef012345"


def make_corpus(folder: Path, n: int) -> None:
    """n MR instances, 256x256 16-bit, 20 series of one patient per 100 files, with identities in the header."""
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 256
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, size=(256, 256), dtype=np.int16).tobytes()
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    for i in range(n):
        patient, series = i // 100, i // 50
        ds.PatientName = f"BENCH{patient:03d}^PATIENT"
        ds.PatientID = f"PID{patient:06d}"
        ds.PatientBirthDate = "19700101"
        ds.InstitutionName = "Bench General Hospital"
        ds.ReferringPhysicianName = "DOC^REFERRING"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{patient}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{patient}.{series}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{patient}.{series}.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i % 50 + 1
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def run_ours(src: Path, out: Path, jobs: int) -> tuple[float, float]:
    """(files/s wall, files/s of this process's CPU time; the latter only meaningful for jobs=1)."""
    from incloud_kernel.deid import DeidContext
    from incloud_kernel.deid.runner import enumerate_jobs, run_batch

    job_list = enumerate_jobs([src])
    cpu = time.process_time()
    summary = run_batch(job_list, DeidContext(key=KEY), out, out.parent / f"{out.name}-q", n_jobs=jobs)
    cpu = time.process_time() - cpu
    assert summary.done == len(job_list), summary
    return summary.done / summary.seconds, summary.done / cpu


def run_dicognito(src: Path, out: Path) -> tuple[float, float]:
    from dicognito.anonymizer import Anonymizer

    out.mkdir(parents=True)
    files = sorted(src.glob("*.dcm"))
    anonymizer = Anonymizer(seed="bench")
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            ds = pydicom.dcmread(f)
            anonymizer.anonymize(ds)
            ds.save_as(out / f.name)
    return len(files) / (time.perf_counter() - start), len(files) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-deid-"))
    try:
        src = work / "corpus"
        t0 = time.perf_counter()
        make_corpus(src, args.n)
        print(f"corpus: {args.n} single-frame 256x256 MR instances ({sum(p.stat().st_size for p in src.iterdir()) / 2**20:.0f} MiB) "
              f"made in {time.perf_counter() - t0:.1f} s")
        print("load average before: %.2f %.2f %.2f" % os.getloadavg())
        ours1, ours1_cpu = run_ours(src, work / "ours1", 1)
        print(f"incloud deid, 1 process : {ours1:8.1f} files/s wall  ({ours1_cpu:7.1f} files/s per CPU second)")
        dicog, dicog_cpu = run_dicognito(src, work / "dicognito")
        print(f"dicognito,    1 process : {dicog:8.1f} files/s wall  ({dicog_cpu:7.1f} files/s per CPU second)")
        ours2, _ = run_ours(src, work / "ours2", 2)
        print(f"incloud deid, --jobs 2  : {ours2:8.1f} files/s wall")
        print("load average after : %.2f %.2f %.2f" % os.getloadavg())
        print(f"ratio incloud(1) / dicognito(1) = {ours1 / dicog:.2f}x wall, {ours1_cpu / dicog_cpu:.2f}x CPU "
              f"(goal >= 3x); jobs 2 / jobs 1 = {ours2 / ours1:.2f}x")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
