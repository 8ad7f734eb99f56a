"""Issue 11, "Done when": identities planted in the identifying attributes, in free text the profile keeps or
cleans (SequenceName, ImageComments, ProtocolName...), in private tags and in nested sequences of a small study
with an extra field-map series go through storescu -> Orthanc -> the ingest worker; afterwards every instance is
archived or quarantined, and no planted value and no original UID is anywhere under the site folder (archive,
database, spool, Orthanc's storage and index, logs) outside the quarantine, nor in the database rows.

Orthanc's SQLite index keeps deleted studies' values in free pages and its write-ahead log until the DICOM edge
is scrubbed (the supervisor compacts it once the edge is empty and idle); the test shortens the quiet time and
waits for that scrub, so the index is scanned as a site would leave it. Table E.1-1 keeps SequenceName and
ProcedureCodeSequence/CodeMeaning: the de-identifier's identity guard cuts the patient's words from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from dicom_edge import SCRUBBED
from incloud_kernel.ingest.quarantine import list_quarantine
from incloud_kernel.site import Site
from ingest_data import PLANTED, PLANTED_TEXT, make_small_study, plant_identities
from leakscan import identity_needles, scan_database, scan_tree, summary
from test_ingest_orthanc import (  # noqa: F401 - the edge fixture
    all_files,
    archived,
    edge,
    orthanc_instances,
    start_worker,
    stop,
    wait_for,
)

@pytest.fixture(autouse=True)
def quick_edge_scrub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge scrubs its index 1 s after it is empty (30 s by default); set before the edge starts."""
    monkeypatch.setenv("INCLOUD_DICOM_SCRUB_QUIET_TIME", "1")


def test_planted_identities_end_up_nowhere_outside_quarantine(edge, site: Site, tmp_path: Path) -> None:  # noqa: F811
    files = make_small_study(tmp_path / "src", seed=11, patient_id=PLANTED["PatientID"],
                             extra_series=("gre_field_mapping",))
    total = sum(len(v) for v in files.values())
    originals = plant_identities([p for paths in files.values() for p in paths])
    scrubbed = edge.log_count(SCRUBBED)
    assert edge.store(*all_files(tmp_path / "src"), aet="SCANNER1").returncode == 0

    def quarantined() -> list[dict]:
        return [vars(q) for q in list_quarantine(site.config.quarantine)]

    def accounted() -> int:
        return sum(r[2] for r in archived(site)) + sum(q["files"] for q in quarantined())

    def emptied() -> bool:  # Orthanc may be restarting for its scrub right after the worker emptied it
        try:
            return orthanc_instances(edge) == 0 and accounted() >= total
        except requests.RequestException:
            return False

    worker = start_worker(edge)
    try:
        wait_for(emptied)
    finally:
        stop(worker)
    edge.wait_log(SCRUBBED, scrubbed)  # the edge, empty again, compacts Orthanc's index
    # Every instance archived (the field map under sourcedata/) or quarantined with a reason.
    assert accounted() == total and all(q["reason"] for q in quarantined())
    # (today all four series are archived, the field map under sourcedata/ as "MR"; a series the de-identifier
    # holds back would be counted in the quarantine instead)
    assert {r[0] for r in archived(site)} <= {"MR", "T1w", "bold", "dwi"}
    home = Path(site.config.home)
    needles = identity_needles([*PLANTED.values(), *PLANTED_TEXT.values()], extra=originals)
    leaks = scan_tree(home, needles, exclude=[site.config.quarantine]) + scan_database(site.engine, needles)
    assert leaks == [], "planted values or original UIDs found:\n" + summary(leaks, home)


def test_leakscan_reads_nifti_header_fields_gzip_content_and_database_rows(site: Site, tmp_path: Path) -> None:
    """The scanner itself: a value in a NIfTI header's descrip / aux_file / intent_name (inside a .nii.gz), in a
    JSON sidecar, in a TSV and in a database row is found; a clean tree gives nothing."""
    import nibabel as nib
    import numpy as np
    from sqlalchemy import text

    needles = identity_needles(["Quenzelmark^Ottiline"])
    assert scan_tree(tmp_path, needles) == []
    for field in ("descrip", "aux_file", "intent_name"):
        image = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4))
        image.header[field] = b"Ottiline"
        nib.save(image, str(tmp_path / f"{field}.nii.gz"))
    (tmp_path / "sidecar.json").write_text(json.dumps({"ImageComments": "QUENZELMARK"}))
    (tmp_path / "participants.tsv").write_text("participant_id\tnote\nsub-1\tquenzelmark\n")
    found = {(Path(leak.path).name, leak.where) for leak in scan_tree(tmp_path, needles)}
    assert {(f"{f}.nii.gz", f"nifti header {f}") for f in ("descrip", "aux_file", "intent_name")} <= found
    assert {("sidecar.json", "content"), ("participants.tsv", "content")} <= found
    assert scan_database(site.engine, needles) == []
    with site.engine.begin() as conn:
        conn.execute(text("INSERT INTO project (code, name, description, created_at) "
                          "VALUES ('QZ', 'Ottiline', '', CURRENT_TIMESTAMP)"))
    assert [leak.path for leak in scan_database(site.engine, needles)] == ["database table project"]
