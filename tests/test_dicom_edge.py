"""The DICOM edge: Orthanc started through ``incloud serve dicom``, driven by real dcmtk clients and DICOMweb."""
from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from conftest import missing, require_tool
from dicom_edge import Edge, dcmtk, start_edge
from incloud_kernel.config import load_config
from incloud_kernel.dicom.orthanc_config import build_config, rest_credentials


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    require_tool("Orthanc")
    require_tool("storescu")
    env = {"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite"}
    e = start_edge(env)
    yield e
    e.stop()


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
