"""Benchmark: Modality Worklist C-FIND latency of the real Orthanc worklist plugin with many scheduled entries.

Writes ``--entries`` worklist entries exactly as ``acquisition.worklist`` does for approved bookings (4 scanners,
20 half-hour slots a weekday per scanner, consecutive weekdays), into the worklist folder of an Orthanc started
with the configuration ``incloud serve dicom`` writes (``dicom/orthanc_config.py``), then times dcmtk
``findscu -W`` as a scanner sends it:

- the **broad** query: station AE, one day, modality (20 answers);
- the **patient** query: PatientID and AccessionNumber of one entry (1 answer);
- ``echoscu`` as the floor: starting a dcmtk process and an association, no query.

Each figure is the median and 95th percentile of ``--repeat`` runs, wall time of the whole client process.
The file-based plugin (Orthanc 1.10.1) re-reads and parses every ``.wl`` file on each query, so the latency
grows with the number of entries; the report states how many were used. Everything lives in a temporary
folder that is removed afterwards.

    python bench/bench_worklist.py                  # the issue's figure: 10,000 entries, 20 runs each
    python bench/bench_worklist.py --entries 1000 --repeat 10
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from incloud_kernel.acquisition import worklist
from incloud_kernel.archive.models import Booking, Participant, Project, Scanner
from incloud_kernel.config import load_config
from incloud_kernel.dicom.orthanc_config import write_config

SCANNERS = ("MR1", "MR2", "MR3", "MR4")
SLOTS_PER_DAY = 20
FIRST_DAY = datetime(2031, 3, 3, 8, 0, tzinfo=UTC)  # a Monday


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weekday(n: int) -> datetime:
    """The n-th weekday from FIRST_DAY."""
    return FIRST_DAY + timedelta(days=7 * (n // 5) + n % 5)


def _seed(folder: Path, entries: int) -> tuple[float, str, str]:
    """Write the entries; return the seconds it took and one entry's (PatientID, AccessionNumber)."""
    project = Project(id=1, code="BENCH")
    scanners = [Scanner(id=i + 1, ae_title=ae, modality="MR", site="Main", name=ae, timezone="UTC")
                for i, ae in enumerate(SCANNERS)]
    started = time.perf_counter()
    probe = ("", "")
    for n in range(entries):
        scanner = scanners[n % len(SCANNERS)]
        per_scanner = n // len(SCANNERS)
        day, slot = divmod(per_scanner, SLOTS_PER_DAY)
        start = _weekday(day) + timedelta(minutes=30 * slot)
        accession, uid = worklist.new_ids()
        booking = Booking(id=n + 1, scanner_id=scanner.id, project_id=1, participant_id=n + 1, starts_at=start,
                          ends_at=start + timedelta(minutes=30), status="approved", protocol_key="ukb",
                          accession_number=accession, study_uid=uid)
        participant = Participant(id=n + 1, label=f"RB{n:08d}", project_id=1)
        worklist.write_entry(folder / worklist.entry_name(booking.id),
                             worklist.entry(booking, scanner, participant, project))
        if n == entries // 2:
            probe = (participant.label, accession)
    return time.perf_counter() - started, *probe


def _timed(args: list[str], repeat: int, expect: int | None) -> tuple[float, float]:
    env = dict(os.environ, TCP_NODELAY="1")
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise click.ClickException(f"{args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
        if expect is not None:
            found = (result.stderr + result.stdout).count("(Pending)")  # one "Find Response: n (Pending)" a hit
            if found != expect:
                raise click.ClickException(f"{args[0]}: {found} answers, expected {expect}")
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]


@click.command()
@click.option("--entries", default=10_000, show_default=True, help="Scheduled entries in the worklist folder.")
@click.option("--repeat", default=20, show_default=True, help="Runs of each query.")
def main(entries: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as tmp:
        port, http_port = _port(), _port()
        config = load_config(env={"INCLOUD_HOME": tmp, "INCLOUD_DICOM_PORT": str(port),
                                  "INCLOUD_DICOM_HTTP_PORT": str(http_port),
                                  "INCLOUD_DICOM_ALLOWED_CALLING_AETS": ",".join(SCANNERS)})
        config_file, _ = write_config(config)
        seconds, patient_id, accession = _seed(worklist.folder(config), entries)
        print(f"wrote {entries} entries in {seconds:.2f} s ({entries / seconds:.0f} entries/s)")
        log = open(Path(tmp) / "orthanc.log", "wb")
        orthanc = subprocess.Popen(["Orthanc", str(config_file)], stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, TCP_NODELAY="1"))
        try:
            base = ["-aet", "MR1", "-aec", config.dicom.ae_title, "127.0.0.1", str(port)]
            deadline = time.monotonic() + 60
            while subprocess.run(["echoscu", *base], capture_output=True).returncode != 0:
                if time.monotonic() > deadline or orthanc.poll() is not None:
                    raise click.ClickException("Orthanc did not start")
                time.sleep(0.2)
            day = _weekday(0).strftime("%Y%m%d")
            sps = "ScheduledProcedureStepSequence[0]"
            broad = ["findscu", "-W", "-v", "-k", f"{sps}.ScheduledStationAETitle=MR1",
                     "-k", f"{sps}.ScheduledProcedureStepStartDate={day}", "-k", f"{sps}.Modality=MR",
                     "-k", "AccessionNumber", "-k", "PatientID", "-k", "StudyInstanceUID", *base]
            patient = ["findscu", "-W", "-v", "-k", "StudyInstanceUID", "-k", f"PatientID={patient_id}",
                       "-k", f"AccessionNumber={accession}", *base]
            floor = _timed(["echoscu", *base], repeat, None)
            per_day = min(SLOTS_PER_DAY, -(-entries // len(SCANNERS)))
            b = _timed(broad, repeat, per_day)
            p = _timed(patient, repeat, 1)
            print(f"echoscu (floor)        median {floor[0] * 1000:7.1f} ms  p95 {floor[1] * 1000:7.1f} ms")
            print(f"broad query ({per_day} hits)  median {b[0] * 1000:7.1f} ms  p95 {b[1] * 1000:7.1f} ms")
            print(f"patient query (1 hit)  median {p[0] * 1000:7.1f} ms  p95 {p[1] * 1000:7.1f} ms")
            print(f"entries={entries} repeat={repeat} at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        finally:
            orthanc.terminate()
            try:
                orthanc.wait(30)
            except subprocess.TimeoutExpired:
                orthanc.kill()
                orthanc.wait()
            log.close()


if __name__ == "__main__":
    main()
