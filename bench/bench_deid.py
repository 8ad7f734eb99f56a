#!/usr/bin/env python3
"""Benchmark: de-identification throughput against dicognito and against `cp`, all in the same run.

Three measurements, one after the other in one run on this machine:
1. uniform corpus: >= 2,000 generated single-frame 256x256 MR instances: INCloud 1 process, dicognito 1 process,
   INCloud --jobs 2 (goal: INCloud >= 3x dicognito);
2. heterogeneous corpus: the real test files that ship with pydicom (JPEG 2000, JPEG-LS, RLE, JPEG, big endian,
   implicit VR, SR, RT, waveforms, enhanced CT...) and nibabel (Siemens mosaic and DWI with CSA headers), plus
   the 22 MiB Philips enhanced multi-frame MR that nibabel ships gzipped (nicom/tests/data/philips_mprage.dcm.gz,
   decompressed here), each processed --rounds times: INCloud 1 process vs dicognito 1 process (goal >= 3x);
3. the enhanced multi-frame file as --copies distinct instances (a study of such series): INCloud 1 process, one
   batch, vs `cp` of the same files, in MB/s (goal >= 0.5 of cp); also INCloud on batches of one file (latency).
Every tool reads every file, de-identifies (or copies) it and writes it to its own folder. Besides wall-clock rates
it prints the CPU seconds of each run's own process (``time.process_time``: INCloud and dicognito run in this
process; `cp` is a child, timed with ``resource``), less sensitive to the other work on a shared machine, and the
load average before and after. Only installed packages are used: nothing is downloaded, nothing from tests/.

    /opt/incloud/venv/bin/python bench/bench_deid.py [--n 2000] [--rounds 3] [--copies 10] [--work DIR]
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import resource
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

KEY = b"bench-key-0123456789abcdef012345"
PYDICOM_FILES = Path(get_testdata_file("MR_small.dcm")).parent
NIBABEL_FILES = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
ENHANCED_GZ = NIBABEL_FILES / "philips_mprage.dcm.gz"


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


def make_enhanced(path: Path) -> Path:
    """The Philips enhanced MR (176 frames of 256x256, 22 MiB) as a plain Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.decompress(ENHANCED_GZ.read_bytes()))
    return path


def make_heterogeneous(folder: Path) -> list[str]:
    """The shipped test instances both tools can rewrite, one file each (.gz decompressed), plus the enhanced MR.

    Left out: files that are not instances (DICOMDIRs, READMEs, CSA dumps, raw datasets without file meta,
    fragments without SOP Class) and the deliberately truncated ones (INCloud quarantines them, so they would
    measure the quarantine, not de-identification), and any file dicognito raises on (named in the output).
    """
    from dicognito.anonymizer import Anonymizer

    folder.mkdir(parents=True)
    kinds: list[str] = []
    skipped: list[str] = []
    probe = Anonymizer(seed="probe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src in sorted([*PYDICOM_FILES.rglob("*"), *NIBABEL_FILES.glob("*")]):
            if not src.is_file() or src == ENHANCED_GZ or "trunc" in src.name.lower() or "DICOMDIR" in src.name:
                continue
            data = src.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            if len(data) < 132 or data[128:132] != b"DICM":
                continue
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
                if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
                    continue
                probe.anonymize(pydicom.dcmread(io.BytesIO(data)))  # dicognito must take it too
            except Exception:  # noqa: BLE001 - not a file both tools can take
                skipped.append(src.name)
                continue
            name = f"{len(kinds):03d}_{src.name.removesuffix('.gz')}"
            (folder / name).write_bytes(data)
            kinds.append(str(ds.file_meta.get("TransferSyntaxUID", "?")))
    make_enhanced(folder / "zz_philips_enhanced_mr.dcm")
    if skipped:
        print(f"left out (dicognito fails on them): {', '.join(skipped)}")
    return kinds


def cpu_now() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def run_ours(sources: list[Path], out: Path, jobs: int = 1) -> tuple[int, float, float]:
    """(files done, wall seconds, CPU seconds of this process; the latter only meaningful for jobs=1)."""
    from incloud_kernel.deid import DeidContext
    from incloud_kernel.deid.runner import enumerate_jobs, run_batch

    job_list = enumerate_jobs(sources)
    start, cpu = time.perf_counter(), time.process_time()
    summary = run_batch(job_list, DeidContext(key=KEY, allow_burned_in=True), out, out.parent / f"{out.name}-q",
                        n_jobs=jobs)
    assert summary.done == len(job_list), summary.reasons
    return summary.done, time.perf_counter() - start, time.process_time() - cpu


def run_dicognito(files: list[Path], out: Path) -> tuple[int, float, float]:
    from dicognito.anonymizer import Anonymizer

    out.mkdir(parents=True)
    anonymizer = Anonymizer(seed="bench")
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            ds = pydicom.dcmread(f)
            anonymizer.anonymize(ds)
            ds.save_as(out / f.name)
    return len(files), time.perf_counter() - start, time.process_time() - cpu


def run_cp(files: list[Path], out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the `cp` child) copying ``files`` into ``out`` with one `cp` process."""
    out.mkdir(parents=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(out)], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def bench_uniform(work: Path, n: int) -> None:
    src = work / "corpus"
    t0 = time.perf_counter()
    make_corpus(src, n)
    size = sum(p.stat().st_size for p in src.iterdir()) / 2**20
    print(f"\n[1] uniform corpus: {n} single-frame 256x256 MR instances ({size:.0f} MiB), made in "
          f"{time.perf_counter() - t0:.1f} s; load average before: {load()}")
    os.sync()
    done, wall, cpu = run_ours([src], work / "ours1", 1)
    ours, ours_cpu = done / wall, done / cpu
    print(f"incloud deid, 1 process : {ours:8.1f} files/s wall  ({ours_cpu:7.1f} files/s per CPU second; "
          f"CPU {cpu:.1f} s)")
    os.sync()
    done, wall, cpu = run_dicognito(sorted(src.glob("*.dcm")), work / "dicognito")
    dicog, dicog_cpu = done / wall, done / cpu
    print(f"dicognito,    1 process : {dicog:8.1f} files/s wall  ({dicog_cpu:7.1f} files/s per CPU second; "
          f"CPU {cpu:.1f} s)")
    done, wall, _ = run_ours([src], work / "ours2", 2)
    print(f"incloud deid, --jobs 2  : {done / wall:8.1f} files/s wall")
    print(f"load average after: {load()}")
    print(f"RATIO uniform incloud(1) / dicognito(1) = {ours / dicog:.2f}x wall, {ours_cpu / dicog_cpu:.2f}x CPU "
          f"(goal >= 3x); jobs 2 / jobs 1 = {done / wall / ours:.2f}x")


def bench_heterogeneous(work: Path, rounds: int) -> None:
    src = work / "hetero"
    syntaxes = make_heterogeneous(src)
    files = sorted(src.iterdir())
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"\n[2] heterogeneous corpus: {len(files)} files ({size:.1f} MiB, {len(set(syntaxes))} transfer syntaxes, "
          f"incl. the 22 MiB enhanced MR) x {rounds} rounds, the tools alternating; load average before: {load()}")
    totals = {"incloud": [0.0, 0.0, 0.0, 0.0, 0.0], "dicognito": [0.0, 0.0, 0.0, 0.0, 0.0]}
    for r in range(rounds):  # alternate, so that both see the same load on a shared machine
        for name in ("incloud", "dicognito"):
            os.sync()
            user, system = cpu_now()
            if name == "incloud":
                done, wall, cpu = run_ours([src], work / f"hetero-ours{r}", 1)
            else:
                done, wall, cpu = run_dicognito(files, work / f"hetero-dicognito{r}")
            user2, system2 = cpu_now()
            for k, v in enumerate((done, wall, cpu, user2 - user, system2 - system)):
                totals[name][k] += v
    rates = {}
    for name, (done, wall, cpu, user, system) in totals.items():
        rates[name] = (done / wall, done / cpu)
        print(f"{name:10s} 1 process : {done / wall:8.1f} files/s wall  ({done / cpu:7.1f} files/s per CPU second; "
              f"CPU {cpu:.1f} s = user {user:.1f} + system {system:.1f})")
    print(f"load average after: {load()}")
    (ours, ours_cpu), (dicog, dicog_cpu) = rates["incloud"], rates["dicognito"]
    print(f"RATIO heterogeneous incloud(1) / dicognito(1) = {ours / dicog:.2f}x wall, {ours_cpu / dicog_cpu:.2f}x CPU "
          f"(goal >= 3x)")


def make_enhanced_series(one: Path, folder: Path, copies: int) -> list[Path]:
    """``copies`` distinct instances of the enhanced MR (own SOP/Series Instance UIDs): a study of such series."""
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(one)
    paths = []
    for i in range(copies):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{i + 1}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.78.{i + 1}"
        paths.append(folder / f"enhanced{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def bench_enhanced(work: Path, copies: int) -> None:
    one = make_enhanced(work / "enhanced-src" / "philips.dcm")
    files = make_enhanced_series(one, work / "enhanced-series", copies)
    mb = sum(p.stat().st_size for p in files) / 1e6
    os.sync()  # each measurement starts without the previous one's dirty pages (writeback is charged to the writer)
    print(f"\n[3] enhanced multi-frame MR: {one.stat().st_size / 2**20:.1f} MiB, 176 frames, {copies} distinct "
          f"instances; load average before: {load()}")
    run_ours([files[0]], work / "enh-warm", 1)  # the profile's tables load once per process, as in a worker
    user, system = cpu_now()
    done, wall, cpu = run_ours([files[0].parent], work / "enh-ours", 1)  # one batch, as `incloud deid` runs
    user2, system2 = cpu_now()
    print(f"incloud deid, 1 process, one batch : {done / wall:8.1f} files/s, {mb / wall:7.1f} MB/s wall  "
          f"(CPU {cpu:.2f} s = user {user2 - user:.2f} + system {system2 - system:.2f}; the kernel copy of each "
          f"file's pixel data overlaps the next file's header work)")
    os.sync()
    single = 0.0
    for i, path in enumerate(files):  # latency: a batch of one file, nothing to overlap with
        single += run_ours([path], work / f"enh-one{i}", 1)[1]
    print(f"incloud deid, 1 process, batches of one file: {copies / single:8.1f} files/s, {mb / single:7.1f} MB/s "
          f"wall (latency {1000 * single / copies:.0f} ms per file)")
    # cp right after ours (ours' dirty pages still being written back), then again after a sync (as ours
    # started): the faster of the two is the reference, which favours cp.
    after = run_cp(files, work / "enh-cp-after")
    os.sync()
    clean = run_cp(files, work / "enh-cp-clean")
    for label, (w, c) in (("right after incloud", after), ("after a sync", clean)):
        print(f"cp, {label:19s}: {copies / w:8.1f} files/s, {mb / w:7.1f} MB/s wall  (CPU {c:.2f} s)")
    cp_wall, cp_cpu = min(after, clean)
    print(f"load average after: {load()}")
    print(f"RATIO enhanced incloud / cp = {cp_wall / wall:.2f} (MB/s, one batch; goal >= 0.5); batches of one file "
          f"{cp_wall / single:.2f}; CPU incloud / cp = {cpu / max(cp_cpu, 1e-9):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="files of the uniform corpus (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the heterogeneous corpus (0: skip)")
    parser.add_argument("--copies", type=int, default=10,
                        help="enhanced files against cp (0: skip); beyond ~20 (450 MB) both become disk-bound here")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-deid-"))
    print(f"bench_deid on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        if args.n:
            bench_uniform(work, args.n)
        if args.rounds:
            bench_heterogeneous(work, args.rounds)
        if args.copies:
            bench_enhanced(work, args.copies)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
