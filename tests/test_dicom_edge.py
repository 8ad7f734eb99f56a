"""The DICOM edge: Orthanc started through ``incloud serve dicom``, driven by real dcmtk clients and DICOMweb."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from conftest import missing, require_tool
from dicom_edge import INCLOUD, SCRUBBED, SCRUBBING, Edge, dcmtk, start_edge
from incloud_kernel.config import load_config
from incloud_kernel.dicom.index_scrub import EdgeActivity, index_state, vacuum_index
from incloud_kernel.dicom.orthanc_client import OrthancClient
from incloud_kernel.dicom.orthanc_config import build_config, rest_credentials
from ingest_data import PLANTED, PLANTED_TEXT, make_small_study, plant_identities
from leakscan import identity_needles, scan_tree, summary


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    require_tool("Orthanc")
    require_tool("storescu")
    env = {"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite"}
    e = start_edge(env)
    yield e
    e.stop()


@pytest.fixture
def quick_scrub_edge(tmp_path: Path) -> Iterator[Edge]:
    """An edge that scrubs once it has been empty and unchanged for 1 s (the default is 30 s)."""
    require_tool("Orthanc")
    require_tool("storescu")
    env = {"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite"}
    e = start_edge(env, extra_env={"INCLOUD_DICOM_SCRUB_QUIET_TIME": "1"})
    yield e
    e.stop()


def _delete_everything(edge: Edge) -> None:
    """Delete every instance through REST exactly as the ingest worker does after archiving."""
    OrthancClient(edge.url, edge.auth).delete_instances(list(edge.get("/instances").json()))
    assert edge.get("/statistics").json()["CountInstances"] == 0


def _copy_with(tmp_path: Path, name: str, **changes: str) -> Path:
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in changes.items():
        setattr(ds, key, value)
        if key == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    out = tmp_path / f"{name}-{len(changes)}.dcm"
    ds.save_as(out)
    return out


def test_config_and_credentials_are_private_and_rest_is_loopback_only(tmp_path: Path) -> None:
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_DICOM_ALLOWED_CALLING_AETS": "MRI1"})
    data = build_config(cfg, rest_credentials(cfg))
    assert stat.S_IMODE((tmp_path / "orthanc-credentials.json").stat().st_mode) == 0o600
    assert data["RemoteAccessAllowed"] is False and data["AuthenticationEnabled"] is True
    assert data["DicomAlwaysAllowEcho"] is False and data["DicomAlwaysAllowStore"] is False
    assert [m["AET"] for m in data["DicomModalities"].values()] == ["MRI1"]
    assert data["SyncStorageArea"] is True and data["UnknownSopClassAccepted"] is False
    assert str(data["StorageDirectory"]).startswith(str(tmp_path / "spool"))
    assert any(p.endswith("libOrthancDicomWeb.so") for p in data["Plugins"])
    assert "PostgreSQL" not in data


def test_postgresql_index_plugin_when_index_url_is_set(tmp_path: Path) -> None:
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path),
                           "INCLOUD_DICOM_INDEX_DATABASE_URL": "postgresql+psycopg://u:p@127.0.0.1:5432/orthanc"})
    data = build_config(cfg, rest_credentials(cfg))
    assert any(p.endswith("libOrthancPostgreSQLIndex.so") for p in data["Plugins"])
    assert data["PostgreSQL"]["ConnectionUri"] == "postgresql://u:p@127.0.0.1:5432/orthanc"
    assert data["PostgreSQL"]["EnableIndex"] is True and data["PostgreSQL"]["EnableStorage"] is False


def test_echo_from_allowed_aet(edge: Edge) -> None:
    result = dcmtk("echoscu", "-aet", "SCANNER1", "-aec", edge.ae_title, "127.0.0.1", str(edge.port))
    assert result.returncode == 0, result.stderr


def test_calling_aet_not_on_allow_list_is_rejected_at_association(edge: Edge, tmp_path: Path) -> None:
    result = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", edge.ae_title, "127.0.0.1", str(edge.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout
    store = edge.store(Path(get_testdata_file("MR_small.dcm")), aet="INTRUDER")
    assert store.returncode != 0
    assert edge.get("/statistics").json()["CountInstances"] == 0


def test_store_common_sop_classes_and_transfer_syntaxes_then_find(edge: Edge, tmp_path: Path) -> None:
    plain = [Path(get_testdata_file(n)) for n in ("MR_small.dcm", "CT_small.dcm", "SC_rgb_small_odd.dcm")]
    assert edge.store(*plain).returncode == 0
    # Compressed variants of the MR image, each with its own SOP Instance UID, in its own transfer syntax.
    for name, flag, syntax in (("MR_small_jp2klossless.dcm", "-xv", "1.2.840.10008.1.2.4.90"),
                               ("MR_small_jpeg_ls_lossless.dcm", "-xt", "1.2.840.10008.1.2.4.80"),
                               ("MR_small_RLE.dcm", "-xr", "1.2.840.10008.1.2.5")):
        variant = _copy_with(tmp_path, name, SOPInstanceUID=pydicom.uid.generate_uid())
        result = edge.store(variant, extra=(flag, "-R"))
        assert result.returncode == 0, result.stderr
        sop = str(pydicom.dcmread(variant).SOPInstanceUID)
        found = requests.post(
            f"{edge.url}/tools/lookup", data=sop, auth=edge.auth, timeout=30).json()
        assert found, name
        assert edge.get(f"/instances/{found[0]['ID']}/metadata/TransferSyntax").text == syntax
    assert edge.get("/statistics").json()["CountInstances"] == 6
    files = plain
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    find = dcmtk("findscu", "-S", "-aet", "SCANNER1", "-aec", edge.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(edge.port))
    assert find.returncode == 0, find.stderr
    assert study_uid in find.stderr + find.stdout
    find_series = dcmtk("findscu", "-S", "-aet", "SCANNER1", "-aec", edge.ae_title,
                        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
                        "-k", "SeriesInstanceUID", "127.0.0.1", str(edge.port))
    assert find_series.returncode == 0
    assert str(pydicom.dcmread(files[0]).SeriesInstanceUID) in find_series.stderr + find_series.stdout


def test_unknown_sop_class_is_rejected(edge: Edge, tmp_path: Path) -> None:
    odd = _copy_with(tmp_path, "MR_small.dcm", SOPClassUID="1.2.826.0.1.3680043.9.9999.1.2.3")
    result = edge.store(odd)
    assert result.returncode != 0 or "No presentation context" in result.stderr
    assert edge.get("/statistics").json()["CountInstances"] == 0


def test_dicomweb_stow_and_qido_require_credentials(edge: Edge) -> None:
    raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    boundary = "incloudboundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + raw
            + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/related; type=\"application/dicom\"; boundary={boundary}",
               "Accept": "application/dicom+json"}
    anonymous = requests.post(f"{edge.url}/dicom-web/studies", data=body, headers=headers, timeout=30)
    assert anonymous.status_code == 401
    stow = requests.post(f"{edge.url}/dicom-web/studies", data=body, headers=headers, auth=edge.auth, timeout=30)
    assert stow.status_code == 200, stow.status_code
    assert requests.get(f"{edge.url}/dicom-web/studies", timeout=30).status_code == 401
    qido = requests.get(f"{edge.url}/dicom-web/studies", auth=edge.auth, timeout=30,
                        headers={"Accept": "application/dicom+json"})
    assert qido.status_code == 200
    study_uid = str(pydicom.dcmread(get_testdata_file("MR_small.dcm")).StudyInstanceUID)
    assert any(s.get("0020000D", {}).get("Value") == [study_uid] for s in qido.json())


def test_supervisor_restarts_orthanc_after_it_is_killed(edge: Edge) -> None:
    first = edge.orthanc_pid()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if edge.orthanc_pid() != first and edge.get("/system").status_code == 200:
                break
        except (requests.RequestException, OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        pytest.fail("Orthanc was not restarted")
    assert dcmtk("echoscu", "-aet", "SCANNER1", "-aec", edge.ae_title, "127.0.0.1", str(edge.port)).returncode == 0


def test_clean_stop_stops_orthanc(edge: Edge) -> None:
    pid = edge.orthanc_pid()
    edge.stop()
    assert edge.process.returncode == 0
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


WORKLIST_DUMP = """
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH [ACC0001]
(0010,0010) PN [Worklist^Test]
(0010,0020) LO [WL0001]
(0020,000d) UI [1.2.826.0.1.3680043.9.7777.1]
(0032,1060) LO [Brain MRI]
(0040,0100) SQ
(fffe,e000) -
(0008,0060) CS [MR]
(0040,0001) AE [INCLOUD]
(0040,0002) DA [20261122]
(0040,0003) TM [090000]
(0040,0009) SH [SPS0001]
(fffe,e00d) -
(fffe,e0dd) -
(0040,1001) SH [RP0001]
"""


def test_worklist_plugin_answers_cfind_for_a_file_in_its_folder(edge: Edge, tmp_path: Path) -> None:
    """The clean place the reservation issue fills: a .wl file in <spool>/orthanc/worklists is served."""
    require_tool("dump2dcm")
    dump = tmp_path / "item.dump"
    dump.write_text(WORKLIST_DUMP)
    folder = edge.home / "spool" / "orthanc" / "worklists"
    made = dcmtk("dump2dcm", "-g", "+te", str(dump), str(folder / "item.wl"))
    assert made.returncode == 0, made.stderr
    find = dcmtk("findscu", "-W", "-aet", "SCANNER1", "-aec", edge.ae_title,
                 "-k", "ScheduledProcedureStepSequence[0].Modality=MR", "-k", "AccessionNumber",
                 "-k", "PatientID", "127.0.0.1", str(edge.port))
    assert find.returncode == 0, find.stderr
    assert "ACC0001" in find.stdout + find.stderr and "WL0001" in find.stdout + find.stderr
    none = dcmtk("findscu", "-W", "-aet", "SCANNER1", "-aec", edge.ae_title,
                 "-k", "ScheduledProcedureStepSequence[0].Modality=CT", "-k", "AccessionNumber",
                 "127.0.0.1", str(edge.port))
    assert none.returncode == 0 and "ACC0001" not in none.stdout + none.stderr


def test_postgresql_index_plugin_runs_live(tmp_path: Path, pg_url: str) -> None:
    """Orthanc started by `incloud serve dicom` with its index in a real PostgreSQL: stores and indexes there."""
    require_tool("Orthanc")
    require_tool("storescu")
    from sqlalchemy import create_engine, text

    env = {"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
           "INCLOUD_DICOM_INDEX_DATABASE_URL": pg_url}
    e = start_edge(env)
    try:
        result = dcmtk("storescu", "-aet", "SCANNER1", "-aec", e.ae_title, "127.0.0.1", str(e.port),
                       get_testdata_file("MR_small.dcm"))
        assert result.returncode == 0, result.stderr
        assert len(e.get("/instances").json()) == 1
    finally:
        e.stop()
    engine = create_engine(pg_url)
    with engine.connect() as conn:  # the index lives in PostgreSQL: patient, study, series, instance rows
        assert conn.execute(text("SELECT count(*) FROM resources")).scalar() == 4
    engine.dispose()


def test_vacuum_index_leaves_no_deleted_row_in_the_file_or_beside_it(tmp_path: Path) -> None:
    """SQLite keeps deleted rows in free pages and in the WAL; the compaction the scrub runs keeps neither,
    keeps every live row and the AUTOINCREMENT sequence (Orthanc's change feed number)."""
    import sqlite3

    index = tmp_path / "index"
    db = sqlite3.connect(index, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE Resources (internalId INTEGER PRIMARY KEY AUTOINCREMENT, value TEXT)")
    db.execute("CREATE TABLE Changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, internalId INTEGER)")
    rows = [(f"Quenzelmark^Ottiline {i}" * 20,) for i in range(300)]
    db.executemany("INSERT INTO Resources (value) VALUES (?)", rows)
    db.executemany("INSERT INTO Changes (internalId) VALUES (?)", [(i,) for i in range(7)])
    db.execute("DELETE FROM Resources")
    db.execute("DELETE FROM Changes")
    db.execute("INSERT INTO Resources (value) VALUES ('kept')")
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    needles = identity_needles([PLANTED["PatientName"]])
    assert scan_tree(tmp_path, needles), "the deleted rows must still be in the files before the compaction"
    db.close()
    assert vacuum_index(index) is True
    assert scan_tree(tmp_path, needles) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    assert index_state(index) == (7, 1)
    assert vacuum_index(tmp_path / "absent") is False and index_state(tmp_path / "absent") == (0, 0)


def test_edge_activity_is_due_only_after_holding_something_then_quiet_and_empty() -> None:
    activity = EdgeActivity(quiet=30)
    activity.observe(5, 0, now=0)  # the baseline read from the index before Orthanc starts
    assert not activity.due(now=100)  # never held anything: no restart for nothing
    activity.observe(9, 4, now=100)  # a study arrived
    assert not activity.due(now=200)  # not empty
    activity.observe(9, 0, now=210)  # deleted by the worker
    assert not activity.due(now=230)  # not quiet long enough
    assert activity.due(now=240.5)
    assert activity.unchanged(9, 0) and not activity.unchanged(10, 4)
    activity.scrubbed()
    activity.observe(9, 0, now=300)
    assert not activity.due(now=1000)  # nothing new since the scrub
    activity.observe(12, 0, now=1000)  # stored and deleted between two looks: still counts as held
    assert activity.due(now=1031)


def test_edge_scrub_leaves_no_identified_remnant_once_empty(quick_scrub_edge: Edge, tmp_path: Path) -> None:
    """Issue 11: a study with planted identities stored by storescu and deleted through REST as the worker does
    leaves nothing in the edge's folder (storage, SQLite index and its WAL, Orthanc's log) once it is scrubbed."""
    edge = quick_scrub_edge
    files = make_small_study(tmp_path / "src", seed=5, patient_id=PLANTED["PatientID"],
                             extra_series=("gre_field_mapping",))
    paths = [p for series in files.values() for p in series]
    originals = plant_identities(paths)
    assert edge.store(*paths).returncode == 0
    needles = identity_needles([*PLANTED.values(), *PLANTED_TEXT.values()], extra=originals)
    orthanc = edge.home / "spool" / "orthanc"
    assert scan_tree(orthanc, needles), "the scan must see the study while Orthanc holds it"
    last = edge.get("/changes?last").json()["Last"]
    scrubbed = edge.log_count(SCRUBBED)
    _delete_everything(edge)
    edge.wait_log(SCRUBBED, scrubbed)
    leaks = scan_tree(edge.home, needles)
    assert leaks == [], "identified remnants after the scrub:\n" + summary(leaks, edge.home)
    index = orthanc / "index" / "index"
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    # Orthanc is back, its change feed goes on from where the worker's cursor stands, and it takes studies again.
    assert edge.get("/changes?last").json()["Last"] == last
    assert edge.store(Path(get_testdata_file("MR_small.dcm"))).returncode == 0
    assert edge.get("/statistics").json()["CountInstances"] == 1


@pytest.mark.parametrize("moment", ["stopping", "stopped"])
def test_instance_stored_during_a_scrub_is_not_lost(quick_scrub_edge: Edge, tmp_path: Path, moment: str) -> None:
    """A store sent the moment the supervisor begins a scrub (Orthanc being stopped), or once Orthanc has exited
    (its port closed until the restart), is either accepted and kept, or refused; sent again as a scanner does,
    it is accepted, and the edge, no longer empty, is not scrubbed again."""
    edge = quick_scrub_edge
    assert edge.store(Path(get_testdata_file("MR_small.dcm"))).returncode == 0
    scrubbing, scrubbed = edge.log_count(SCRUBBING), edge.log_count(SCRUBBED)
    pid_file = edge.home / "spool" / "orthanc" / "orthanc.pid"
    _delete_everything(edge)
    edge.wait_log(SCRUBBING, scrubbing)  # Orthanc is being stopped now
    while moment == "stopped" and pid_file.exists() and edge.log_count(SCRUBBED) == scrubbed:
        time.sleep(0.01)  # the supervisor removes the pid file once Orthanc has exited
    late = _copy_with(tmp_path, "CT_small.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    outcomes = []
    for _ in range(120):  # a scanner retries an association that was refused or aborted
        result = edge.store(late)
        outcomes.append(result.returncode)
        if result.returncode == 0:
            break
        time.sleep(0.5)
    assert outcomes[-1] == 0, outcomes
    edge.wait_log(SCRUBBED, scrubbed)  # the scrub that was under way has finished
    edge.wait_ready()
    sop = str(pydicom.dcmread(late).SOPInstanceUID)
    time.sleep(3)  # longer than the quiet time: a scrub now would have to stop a non-empty edge
    found = requests.post(f"{edge.url}/tools/lookup", data=sop, auth=edge.auth, timeout=30).json()
    assert [item["Type"] for item in found] == ["Instance"]
    assert edge.get("/statistics").json()["CountInstances"] == 1
    assert edge.log_count(SCRUBBING) == scrubbing + 1


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_unusable_scrub_quiet_time_is_one_line_error(tmp_path: Path, value: str) -> None:
    env = dict(os.environ, INCLOUD_HOME=str(tmp_path / "home"),
               INCLOUD_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite", INCLOUD_DICOM_SCRUB_QUIET_TIME=value)
    result = subprocess.run([INCLOUD, "serve", "dicom"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "scrub_quiet_time" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "spool" / "orthanc" / "orthanc.pid").exists()
