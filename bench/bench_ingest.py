"""Benchmark of issue 6: instances/s received through ``incloud serve dicom`` vs dcmtk ``storescp`` and a bare
Orthanc (same settings) on the same 2,000-instance transfer, and end-to-end seconds from the first instance to a
T1w+BOLD+DWI study archived and ready for QC.

Run: ``/opt/incloud/venv/bin/python bench/bench_ingest.py`` (TCP_NODELAY=1 is set for every dcmtk program and
Orthanc). Prints figures and the ratios the issue names (goal: receiving within 15% of bare Orthanc; end-to-end
under 120 s).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

INCLOUD = str(Path(sys.executable).with_name("incloud"))
ENV = dict(os.environ, TCP_NODELAY="1")
N = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_rest(url: str, auth: tuple[str, str], proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until Orthanc's REST API answers (``GET /system``); raises SystemExit when ``proc`` exits or time runs out."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with status {proc.returncode}")
        try:
            if requests.get(f"{url}/system", auth=auth, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer from {url} within {timeout:.0f} s")


@dataclass
class Edge:
    """``incloud serve dicom`` run by this benchmark (the product's own command, on free ports)."""

    env: dict[str, str]
    home: Path
    port: int
    url: str
    auth: tuple[str, str]
    process: subprocess.Popen
    ae_title: str = "INCLOUD"

    def get(self, path: str):  # type: ignore[no-untyped-def]
        import requests

        return requests.get(self.url + path, auth=self.auth, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def start_edge(env: dict[str, str], stable_age: int) -> Edge:
    from incloud_kernel.config import load_config
    from incloud_kernel.dicom.orthanc_config import rest_credentials

    port, http = free_port(), free_port()
    full = dict(ENV, **env, INCLOUD_DICOM_PORT=str(port), INCLOUD_DICOM_HTTP_PORT=str(http),
                INCLOUD_DICOM_ALLOWED_CALLING_AETS="SCANNER1", INCLOUD_DICOM_STABLE_AGE=str(stable_age))
    home = Path(full["INCLOUD_HOME"])
    credentials = rest_credentials(load_config(env=full))  # made once, before Orthanc's configuration reads them
    proc = subprocess.Popen([INCLOUD, "serve", "dicom"], env=full, stdout=open(home / "serve-dicom.log", "ab"),
                            stderr=subprocess.STDOUT)
    edge = Edge(full, home, port, f"http://127.0.0.1:{http}", (credentials.username, credentials.password), proc)
    wait_rest(edge.url, edge.auth, proc)
    return edge


def make_instances(folder: Path, n: int = N) -> list[Path]:
    """``n`` MR instances of about 128 KB (256x256 16-bit) in one series of one study (invented values)."""
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 4000, size=(256, 256), dtype=np.uint16).tobytes()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Bench^Instance", "BENCH1", "20260102", "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, i + 1, "bench"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(i % 100) * 2], [1, 0, 0, 0, 1, 0]
        ds.Rows = ds.Columns = 256
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def send(port: int, folder: Path, aec: str) -> float:
    t = time.monotonic()
    r = subprocess.run(["storescu", "-aet", "SCANNER1", "-aec", aec, "+sd", "+r", "127.0.0.1", str(port),
                        str(folder)], env=ENV, capture_output=True, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError("storescu failed")
    return dt


def bench_storescp(folder: Path, work: Path) -> float:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-od", str(out), str(port)], env=ENV)
    time.sleep(0.5)
    try:
        return send(port, folder, "ANY")
    finally:
        proc.terminate()
        proc.wait()


def bench_bare_orthanc(folder: Path, work: Path, serve_config: Path) -> float:
    """Orthanc run directly (no supervisor, no incloud) with the very configuration ``incloud serve dicom`` wrote,
    on fresh storage and ports."""
    cfg = json.loads(serve_config.read_text())
    port, http = free_port(), free_port()
    cfg.update(DicomPort=port, HttpPort=http, StorageDirectory=str(work / "bare" / "storage"),
               IndexDirectory=str(work / "bare" / "index"))
    if "Worklists" in cfg:
        cfg["Worklists"]["Database"] = str(work / "bare" / "wl")
        (work / "bare" / "wl").mkdir(parents=True)
    path = work / "bare.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(path)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_rest(f"http://127.0.0.1:{http}", next(iter(cfg["RegisteredUsers"].items())), proc)
        return send(port, folder, cfg["DicomAet"])
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        folder = work / "src"
        files = make_instances(folder)
        size = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"transfer: {N} MR instances of {size:.0f} KB from one storescu (TCP_NODELAY=1)")
        from incloud_kernel.archive.permissions import SYSTEM
        from incloud_kernel.archive.projects import create_project
        from incloud_kernel.config import load_config
        from incloud_kernel.db import transaction
        from incloud_kernel.quarantine import Quarantine
        from incloud_kernel.site import Site

        env = {"INCLOUD_HOME": str(work / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{work}/incloud.sqlite"}
        site = Site.open(load_config(env=env), migrate=True)
        site.ensure_roots()
        with transaction(site.engine) as db:
            create_project(db, SYSTEM, "P1", "bench")
        edge = start_edge(dict(env, INCLOUD_DICOM_ROUTING=json.dumps([{"project": "P1", "calling_aet": "SCANNER1"}]),
                               INCLOUD_INGEST_POLL_INTERVAL="0.2"), stable_age=2)
        try:
            t_scp = bench_storescp(folder, work)
            t_edge = send(edge.port, folder, edge.ae_title)
            t_bare = bench_bare_orthanc(folder, work, edge.home / "spool" / "orthanc" / "orthanc.json")
            print(f"dcmtk storescp:        {t_scp:6.2f} s  {N / t_scp:7.0f} instances/s")
            print(f"bare Orthanc:          {t_bare:6.2f} s  {N / t_bare:7.0f} instances/s")
            print(f"incloud serve dicom:   {t_edge:6.2f} s  {N / t_edge:7.0f} instances/s")
            print(f"ratio serve/storescp (throughput): {t_scp / t_edge:.2f}")
            print(f"ratio serve/bare Orthanc (throughput): {t_bare / t_edge:.2f} (goal >= 0.85)")
            # Clear the bench study out of Orthanc before the end-to-end run.
            import requests

            for sid in edge.get("/studies").json():
                requests.delete(f"{edge.url}/studies/{sid}", auth=edge.auth, timeout=60)
            # End to end: T1w+BOLD+DWI, first instance sent -> all series archived and ready for QC.
            study = work / "study"
            from incloud_kernel.synth import make_study

            make_study(study, seed=11, small=True, participant_id="bench01", secondary_capture=True)
            kind, reface = "synth.make_study(small=True)", "true"
            n_study = sum(1 for _ in study.rglob("*.dcm"))
            wenv = dict(edge.env, INCLOUD_INGEST_REFACE=reface)
            log = open(work / "worker.log", "wb")
            worker = subprocess.Popen([str(Path(sys.executable).with_name("incloud")), "ingest", "worker"],
                                      env=wenv, stdout=log, stderr=subprocess.STDOUT)
            t0 = time.monotonic()
            r = subprocess.run(["storescu", "-aet", "SCANNER1", "-aec", edge.ae_title, "+sd", "+r", "+sp", "*.dcm",
                                "127.0.0.1", str(edge.port), str(study)], env=ENV, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit("storescu failed: " + r.stderr[-500:])
            from sqlalchemy import func, select

            from incloud_kernel.archive.models import Series

            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with transaction(site.engine) as db:
                    n = db.scalar(select(func.count(Series.id)).where(Series.qc_status == "pending"))
                if n and n >= 3 and edge.get("/statistics").json()["CountInstances"] == 0:
                    break
                time.sleep(0.2)
            t_e2e = time.monotonic() - t0
            worker.terminate()
            worker.wait()
            held = Quarantine(site.config.quarantine).entries()
            print(f"end-to-end ({kind}, {n_study} instances, StableAge {edge.env['INCLOUD_DICOM_STABLE_AGE']} s): "
                  f"{t_e2e:.1f} s from first instance to T1w+BOLD+DWI archived and ready for QC (goal < 120 s)")
            print(f"quarantined alongside: {len(held)} entr(y/ies): "
                  + ", ".join(f"{len(h.files)} instance(s) at {h.step}: {h.reason}" for h in held))
        finally:
            edge.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
