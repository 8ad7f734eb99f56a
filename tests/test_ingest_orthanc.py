"""End to end through the DICOM edge: storescu -> Orthanc (``incloud serve dicom``) -> ingest worker -> archive,
with routing, deletion from Orthanc after the archive commit, and crash recovery (SIGKILL of the worker during a
study, of Orthanc during a transfer): every acknowledged instance is archived exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from sqlalchemy import func, select

from conftest import require_tool
from dicom_edge import Edge, start_edge
from incloud_kernel.archive.models import DataFile, Project, Series
from incloud_kernel.archive.permissions import SYSTEM
from incloud_kernel.archive.projects import create_project
from incloud_kernel.db import transaction
from incloud_kernel.ingest.quarantine import list_quarantine
from incloud_kernel.site import Site
from ingest_data import make_small_study

INCLOUD = str(Path(sys.executable).with_name("incloud"))
ROUTING = json.dumps([{"project": "P1", "calling_aet": "SCANNER1"}])


# End-to-end tests whose subject is not the database run on PostgreSQL, the production backend, alone; the one that
# rests on the database's transactions (a worker killed mid-study archives exactly once) runs on SQLite too. The
# SQLite twins of the others cost CI minutes and proved nothing the database tests do not.
ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
def edge(site: Site, site_env: dict[str, str]) -> Iterator[Edge]:
    require_tool("Orthanc")
    require_tool("storescu")
    with transaction(site.engine) as db:
        create_project(db, SYSTEM, "P1", "Test project")
    e = start_edge(dict(site_env, INCLOUD_INGEST_REFACE="false", INCLOUD_DICOM_ROUTING=ROUTING,
                        INCLOUD_INGEST_POLL_INTERVAL="0.3", INCLOUD_INGEST_SWEEP_EVERY="3"))
    yield e
    e.stop()


def start_worker(edge: Edge) -> subprocess.Popen[bytes]:
    log = open(edge.home / "worker.log", "ab")
    return subprocess.Popen([INCLOUD, "ingest", "worker"], env=edge.env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def archived(site: Site) -> list[tuple[str, str, int, str]]:
    with transaction(site.engine) as db:
        rows = db.execute(select(Series.suffix, Series.series_uid, Series.params, Project.code)
                          .join(Project, Project.id == Series.project_id)).all()
        return sorted((r[0], r[1], r[2].get("Instances", 0), r[3]) for r in rows)


def wait_for(predicate, timeout: float = 150.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def orthanc_instances(edge: Edge) -> int:
    return int(edge.get("/statistics").json()["CountInstances"])


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm"))


@ON_POSTGRESQL
def test_stored_study_is_routed_archived_and_removed_from_orthanc(edge: Edge, site: Site, tmp_path: Path) -> None:
    make_small_study(tmp_path / "a", seed=1)
    make_small_study(tmp_path / "b", seed=2, patient_id="HOSP999000")
    assert edge.store(*all_files(tmp_path / "a"), aet="SCANNER1").returncode == 0
    assert edge.store(*all_files(tmp_path / "b"), aet="SCANNER2").returncode == 0
    worker = start_worker(edge)
    try:
        wait_for(lambda: len(archived(site)) == 6 and orthanc_instances(edge) == 0)
    finally:
        stop(worker)
    rows = archived(site)
    assert sorted(r[3] for r in rows) == ["P1"] * 3 + ["unassigned"] * 3
    assert sorted(r[2] for r in rows) == [8, 8, 32, 32, 32, 32]
    status = subprocess.run([INCLOUD, "ingest", "status"], env=edge.env, capture_output=True, text=True, timeout=60)
    assert "waiting in Orthanc: 0" in status.stdout and "archived" in status.stdout


@ON_POSTGRESQL
def test_study_sent_by_stow_rs_is_archived_end_to_end(edge: Edge, site: Site, tmp_path: Path) -> None:
    """DICOMweb STOW-RS (authenticated, one multipart request) instead of C-STORE: same feed, same chain."""
    make_small_study(tmp_path / "a", seed=5)
    files = all_files(tmp_path / "a")
    boundary = "incloudstowboundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes()
                    + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    stow = requests.post(f"{edge.url}/dicom-web/studies", data=body, headers=headers, auth=edge.auth, timeout=120)
    assert stow.status_code == 200, stow.status_code
    answer = stow.json()
    assert len(answer["00081199"]["Value"]) == len(files)  # every instance referenced...
    assert not answer.get("00081198", {}).get("Value")  # ...and none failed
    assert orthanc_instances(edge) == len(files)
    worker = start_worker(edge)
    try:
        wait_for(lambda: len(archived(site)) == 3 and orthanc_instances(edge) == 0)
    finally:
        stop(worker)
    rows = archived(site)
    # No calling AE title over HTTP: no AE rule matches, so the study waits in the unassigned inbox.
    assert [(r[0], r[2], r[3]) for r in rows] == [("T1w", 8, "unassigned"), ("bold", 32, "unassigned"),
                                                  ("dwi", 32, "unassigned")]


def test_worker_killed_mid_study_resumes_and_archives_exactly_once(edge: Edge, site: Site, tmp_path: Path) -> None:
    make_small_study(tmp_path / "a", seed=3)
    assert edge.store(*all_files(tmp_path / "a"), aet="SCANNER1").returncode == 0
    jobs = edge.home / "spool" / "ingest" / "jobs"
    worker = start_worker(edge)
    # Kill the moment the job is running (polled fast): on a quiet machine a small study's chain finishes in
    # about a second, so any extra wait could let it complete before the kill.
    deadline = time.monotonic() + 120
    while not any(json.loads(p.read_text()).get("state") == "running" for p in jobs.glob("*.json")):
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # The killed worker's job is shown as interrupted (dead pid on this host), not as running forever.
    status = subprocess.run([INCLOUD, "ingest", "status"], env=edge.env, capture_output=True, text=True, timeout=60)
    assert "in progress: 0" in status.stdout, status.stdout
    assert "interrupted (worker gone, not yet retried): 1" in status.stdout
    (killed,) = [json.loads(p.read_text()) for p in jobs.glob("*.json")]
    assert killed["worker"]["pid"] == worker.pid and killed["heartbeat"] > 0
    worker = start_worker(edge)
    try:
        wait_for(lambda: len(archived(site)) == 3 and orthanc_instances(edge) == 0)
        time.sleep(2 * 0.3 + 1)  # a few more polls: nothing is archived twice
    finally:
        stop(worker)
    # The next worker took the interrupted job over: marked interrupted, retried by a job that archived it.
    journal = {j["job_id"]: j for j in (json.loads(p.read_text()) for p in jobs.glob("*.json"))}
    assert journal[killed["job_id"]]["state"] == "interrupted"
    retry = journal[journal[killed["job_id"]]["retried_by"]]
    assert retry["state"] == "archived" and retry["retry_of"] == killed["job_id"]
    status = subprocess.run([INCLOUD, "ingest", "status"], env=edge.env, capture_output=True, text=True, timeout=60)
    assert "interrupted (worker gone, not yet retried): 0" in status.stdout and "in progress: 0" in status.stdout
    rows = archived(site)
    assert [r[0] for r in rows] == ["T1w", "bold", "dwi"] and [r[2] for r in rows] == [8, 32, 32]
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count(DataFile.id))) == 2 + 2 + 4


@ON_POSTGRESQL
def test_orthanc_killed_during_transfer_loses_no_acknowledged_instance(edge: Edge, site: Site,
                                                                       tmp_path: Path) -> None:
    make_small_study(tmp_path / "a", seed=4, bold_volumes=40)
    files = all_files(tmp_path / "a")
    env = dict(os.environ, TCP_NODELAY="1")
    sender = subprocess.Popen(["storescu", "-v", "-aet", "SCANNER1", "-aec", edge.ae_title, "127.0.0.1",
                               str(edge.port), *map(str, files)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60  # kill early in the transfer: poll fast, small files arrive fast
    while orthanc_instances(edge) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(edge.orthanc_pid(), signal.SIGKILL)
    out, _ = sender.communicate(timeout=120)
    acknowledged = out.count("Received Store Response (Success)")
    assert 0 < acknowledged < len(files)
    wait_for(lambda: _up(edge), 60)  # the supervisor restarted Orthanc
    assert orthanc_instances(edge) >= acknowledged  # durable: nothing acknowledged was lost
    # The sender retries the whole transfer, as scanners do; duplicates are absorbed.
    assert edge.store(*files, aet="SCANNER1").returncode == 0
    worker = start_worker(edge)
    try:
        wait_for(lambda: len(archived(site)) == 3 and orthanc_instances(edge) == 0)
    finally:
        stop(worker)
    assert [r[2] for r in archived(site)] == [8, 40 * 8, 32]


def _up(edge: Edge) -> bool:
    try:
        return edge.get("/system").status_code == 200
    except Exception:  # noqa: BLE001
        return False


@ON_POSTGRESQL
def test_a_poison_study_is_retried_then_quarantined_and_the_feed_goes_on(edge: Edge, site: Site,
                                                                         tmp_path: Path) -> None:
    """A real fault in a real step -- the de-identified cache folder of one series is read-only, even for root
    (``chattr +i``) -- makes the study fail with PermissionError: retried with back-off, quarantined after
    ``ingest.max_attempts`` with the class and a value-free message, while the worker lives on and archives the
    next study."""
    import pydicom

    from incloud_kernel.deid import DeidContext, deidentify

    require_tool("chattr")
    poison = make_small_study(tmp_path / "poison", seed=6, patient_id="HOSP555000")
    make_small_study(tmp_path / "good", seed=7, patient_id="HOSP777000")
    clean = deidentify(pydicom.dcmread(poison["t1_mprage"][0]), DeidContext.for_site(site))
    blocked = site.config.spool / "ingest" / "deid-cache" / str(clean.SeriesInstanceUID)
    blocked.mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(blocked)], check=True)
    edge.env.update(INCLOUD_INGEST_MAX_ATTEMPTS="3", INCLOUD_INGEST_RETRY_BACKOFF="0.5")
    worker = None
    try:
        assert edge.store(*all_files(tmp_path / "poison"), aet="SCANNER1").returncode == 0
        assert edge.store(*all_files(tmp_path / "good"), aet="SCANNER1").returncode == 0
        worker = start_worker(edge)
        wait_for(lambda: len(archived(site)) == 3 and orthanc_instances(edge) == 0
                 and list_quarantine(site.config.quarantine))
        assert worker.poll() is None, "the worker died"
    finally:
        subprocess.run(["chattr", "-i", str(blocked)], check=True)
        if worker is not None:
            stop(worker)
    (reason,) = [vars(q) for q in list_quarantine(site.config.quarantine)]
    assert reason["step"] == "cache" and reason["files"] == 8 + 4 * 8 + 4 * 8
    assert reason["reason"] == "PermissionError: Operation not permitted (after 3 attempts)"
    jobs = [json.loads(p.read_text()) for p in (edge.home / "spool" / "ingest" / "jobs").glob("*.json")]
    failed = sorted(j["attempt"] for j in jobs if j["state"] == "failed")
    assert failed == [1, 2] and sorted(j["state"] for j in jobs).count("quarantined") == 1
    assert all(j.get("retry_at") for j in jobs if j["state"] == "failed")
    log = (edge.home / "worker.log").read_text()
    assert "Traceback" not in log and "HOSP555000" not in log


@ON_POSTGRESQL
def test_a_study_that_kills_its_worker_is_quarantined_after_max_attempts(edge: Edge, site: Site,
                                                                         tmp_path: Path) -> None:
    """A worker that dies during a study (here SIGKILL, as a crash inside a library or the OOM killer would)
    counts as a failed attempt of that study: after ``ingest.max_attempts`` the next worker quarantines it
    instead of running it again, so a poison study cannot kill workers forever."""
    make_small_study(tmp_path / "a", seed=8)
    edge.env["INCLOUD_INGEST_MAX_ATTEMPTS"] = "2"
    assert edge.store(*all_files(tmp_path / "a"), aet="SCANNER1").returncode == 0
    jobs = edge.home / "spool" / "ingest" / "jobs"
    killed: set[str] = set()
    for _ in range(2):
        worker = start_worker(edge)
        deadline = time.monotonic() + 120
        running: list[str] = []
        while not running:
            assert time.monotonic() < deadline, "the worker never started the job"
            running = [p.stem for p in jobs.glob("*.json") if p.stem not in killed
                       and json.loads(p.read_text()).get("state") == "running"]
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed.update(running)
    worker = start_worker(edge)
    try:
        wait_for(lambda: orthanc_instances(edge) == 0 and list_quarantine(site.config.quarantine))
    finally:
        stop(worker)
    (reason,) = [vars(q) for q in list_quarantine(site.config.quarantine)]
    assert reason["reason"] == "WorkerGone: the worker stopped during the job (after 2 attempts)"
    assert reason["files"] == 8 + 4 * 8 + 4 * 8 and archived(site) == []
