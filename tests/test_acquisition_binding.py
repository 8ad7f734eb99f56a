"""Binding and protocol compliance at ingest (issue 18 item 5), without the network: the comparison with its
tolerances and missing values, the binding of a study by its booking's accession number or StudyInstanceUID
(read before de-identification replaces them) through the real ingest chain (dcm2niix), the QC caveat listing
each deviation, the booking marked acquired, and the unbooked-study policy (route vs quarantine with a reason)."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from incloud_kernel.acquisition import bookings, compliance, protocols
from incloud_kernel.archive import records
from incloud_kernel.archive.models import AuditEvent, Booking, ProtocolCheck, QCReview, Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.db import transaction
from test_projects_cli import _capture, run  # noqa: F401 - _capture: the autouse fixture run() needs

ADMIN = Actor.console("tester")
ALICE = Actor("alice")
LABEL = "RQ7ZK2M4XA"
#: The booked protocol of the small synthetic T1w (``incloud_kernel.synth``, small=True): what it writes.
T1_SMALL = {"repetition_time": 2300, "echo_time": [2.98], "inversion_time": 900, "flip_angle": 9,
            "voxel_size": [2.0, 2.0, 2.0], "matrix": [120, 120], "slices": 88, "sequence": "MPRAGE"}


# --------------------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------------------

def test_values_within_tolerance_comply_and_each_difference_is_listed() -> None:
    booked = {**T1_SMALL, "multiband": 2, "volumes": 1}
    acquired = {"repetition_time": 2300.0000000000005, "echo_time": [2.99], "inversion_time": 905.0,
                "flip_angle": 9.4, "voxel_size": [2.0, 1.98, 2.02], "matrix": [120, 120, 88], "slices": 88,
                "multiband": 2.0, "volumes": 1}
    assert compliance.compare(booked, acquired).verdict == "compliant"
    # TR 1% (23 ms) and TI 1% (9 ms) of the booked value; flip angle 0.5 degree absolute; counts exact.
    wrong = dict(acquired, repetition_time=2330.0, inversion_time=910.0, flip_angle=9.6, slices=86,
                 matrix=[128, 120, 86], multiband=3.0)
    result = compliance.compare(booked, wrong)
    assert result.verdict == "deviation"
    assert {d["parameter"]: (d["booked"], d["acquired"]) for d in result.deviations} == {
        "repetition_time": (2300, 2330.0), "inversion_time": (900, 910.0), "flip_angle": (9, 9.6),
        "slices": (88, 86), "matrix": ([120, 120], [128, 120]), "multiband": (2, 3.0)}
    assert compliance.describe(result.deviations[:1]) == "repetition_time booked 2300 acquired 2330"
    assert compliance.allowed("repetition_time", 2300) == pytest.approx(23.0)
    assert compliance.allowed("echo_time", 2.98) == pytest.approx(0.1)


def test_voxel_size_and_matrix_ignore_axis_order_and_echoes_must_be_booked_ones() -> None:
    booked = {"voxel_size": [1.05, 1.0, 1.0], "matrix": [192, 256, 256], "echo_time": [1.81, 3.6, 5.39]}
    assert compliance.compare(booked, {"voxel_size": [1.0, 1.0, 1.05], "matrix": [256, 256, 192],
                                       "echo_time": [3.6]}).verdict == "compliant"
    result = compliance.compare(booked, {"voxel_size": [1.2, 1.0, 1.0], "matrix": [256, 256, 192],
                                         "echo_time": [4.5]})
    assert [d["parameter"] for d in result.deviations] == ["echo_time", "voxel_size"]


def test_missing_values_are_unverified_never_deviations_and_unbooked_ones_not_compared() -> None:
    result = compliance.compare({"repetition_time": 2000, "inversion_time": 880, "echo_time": [3.0],
                                 "b_values": [0, 1000], "directions": [1, 6]}, {"repetition_time": 2000.0})
    assert result.verdict == "compliant" and result.deviations == []
    assert sorted(result.unverified) == ["b_values", "directions", "echo_time", "inversion_time"]
    # A parameter the protocol leaves out (the UK Biobank T1 has no TE) is not compared at all.
    assert compliance.compare({"repetition_time": 2000}, {"repetition_time": 2000.0, "echo_time": [99.0]}) \
        == compliance.Comparison()


def test_b_values_are_grouped_into_shells_and_directions_counted() -> None:
    booked = {"b_values": [1000, 0], "directions": [6, 1]}
    bvals = [5.0] + [995.0, 1000.0, 1005.0, 1000.0, 990.0, 1010.0]
    assert compliance.compare(booked, {"b_values": bvals}).verdict == "compliant"
    result = compliance.compare(booked, {"b_values": bvals[:-1]})
    assert result.deviations == [{"parameter": "directions", "booked": [1, 6], "acquired": [1, 5]}]
    result = compliance.compare(booked, {"b_values": [0.0] + [1500.0] * 6})
    assert result.deviations == [{"parameter": "b_values", "booked": [0.0, 1000.0], "acquired": [0.0, 1500.0]}]


def test_acquired_parameters_come_from_the_sidecar_image_and_bvals_in_protocol_units(tmp_path: Path) -> None:
    bval = tmp_path / "x.bval"
    bval.write_text("0 1000 1000\n")
    header = pydicom.Dataset()
    header.Rows, header.Columns = 120, 110
    got = compliance.acquired_parameters(
        {"RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9,
         "MultibandAccelerationFactor": 3, "ParallelReductionFactorInPlane": 2},
        {"Matrix": [88, 120, 120], "VoxelSize": [2.0, 2.0, 2.0], "Volumes": 3, "Instances": 264},
        compliance.read_bvals(bval), compliance.header_facts(header))
    assert got == {"repetition_time": 2300.0, "echo_time": [2.98], "inversion_time": 900.0, "flip_angle": 9.0,
                   "multiband": 3.0, "parallel_acceleration": 2.0, "matrix": [120, 110, 88], "slices": 88,
                   "voxel_size": [2.0, 2.0, 2.0], "volumes": 3, "b_values": [0.0, 1000.0, 1000.0]}
    # A multi-frame instance counts its frames; missing or malformed values are left out.
    enhanced = pydicom.Dataset()
    enhanced.Rows, enhanced.Columns, enhanced.NumberOfFrames = 48, 48, 64
    assert compliance.acquired_parameters({}, {"Volumes": 2, "Instances": 1}, None,
                                          compliance.header_facts(enhanced)) == {
        "volumes": 2, "slices": 32, "matrix": [48, 48, 32]}
    assert compliance.acquired_parameters({"RepetitionTime": "n/a"}, {}) == {}
    assert compliance.read_bvals(tmp_path / "none.bval") is None


# --------------------------------------------------------------------------------------------------------------
# Studies for bookings (shared with the end-to-end test through Orthanc)
# --------------------------------------------------------------------------------------------------------------

def next_monday() -> date:
    today = datetime.now(UTC).date()
    return today + timedelta(days=14 + (7 - today.weekday()) % 7)


def make_booked_study(out: Path, *, seed: int, accession: str = "", study_uid: str = "", patient_id: str = LABEL,
                      tr_ms: float | None = None) -> list[Path]:
    """A small synthetic T1w study (``incloud_kernel.synth``, 2 mm, 88 slices) as a scanner sends it for a
    worklist entry: the entry's accession number, StudyInstanceUID and PatientID (the pseudonym) in every
    instance; ``tr_ms`` changes the repetition time (a deliberate deviation). Returns the files."""
    from incloud_kernel.synth import make_study

    truth = make_study(out, seed=seed, small=True, modalities=("T1w",), secondary_capture=False, labels=False)
    files = [f for s in truth.series for f in s.files]
    for path in files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = accession
        if study_uid:
            ds.StudyInstanceUID = study_uid
        ds.PatientID, ds.PatientName = patient_id, patient_id
        if tr_ms is not None:
            ds.RepetitionTime = f"{tr_ms:g}"
        ds.save_as(path, enforce_file_format=True)
    return [Path(f) for f in files]


def setup_bookings(site, approval: bool = False) -> None:  # type: ignore[no-untyped-def]
    """DEMO (alice a member) with participant ``LABEL`` screened today, its own protocol ``t1-small`` and
    scanner MR1 (Mon-Fri 08:00-18:00 UTC, managed by maria)."""
    with records.transaction(site) as db:
        create_project(db, ADMIN, "DEMO")
        grant(db, ADMIN, "DEMO", "alice", "member")
        records.add_participant(db, ADMIN, "DEMO", LABEL)
        protocols.add_version(db, ALICE, "t1-small", T1_SMALL, name="small T1w MPRAGE", suffix="T1w",
                              vendor="SIEMENS", project="DEMO")
        bookings.add_scanner(db, ADMIN, "MR1", manager="maria", site="Main", opening_hours="mon-fri=08:00-18:00",
                             tz="UTC")
    with transaction(site.engine) as db:
        bookings.record_screening(db, ADMIN, LABEL, datetime.now(UTC).date())


def book(site, hour: int, day: date | None = None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    start = datetime.combine(day or next_monday(), datetime.min.time(), UTC) + timedelta(hours=hour)
    with transaction(site.engine) as db:
        [made] = bookings.book(db, ALICE, scanner="MR1", participant=LABEL, protocol="t1-small", start=start,
                               minutes=60)
        row = db.get(Booking, made.id)
        return {**bookings.as_dict(db, row), "accession_number": row.accession_number, "study_uid": row.study_uid}


def verdict_of(site, booking_id: int) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    with transaction(site.engine) as db:
        return compliance.verdicts(db, ALICE, "DEMO", booking=booking_id)


# --------------------------------------------------------------------------------------------------------------
# Through the ingest chain (dcm2niix, the archive), in process
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture
def booked_site(site, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INCLOUD_INGEST_REFACE", "false")
    site.config.ingest.reface = False
    setup_bookings(site)
    with records.transaction(site) as db:
        create_project(db, ADMIN, "P1")
    return site


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_study_is_bound_by_accession_or_study_uid_checked_and_the_booking_acquired(booked_site, site_env,
                                                                                   tmp_path: Path) -> None:
    from incloud_kernel.ingest.chain import IngestChain

    site = booked_site
    first, second = book(site, 9), book(site, 11)
    assert first["accession_number"] and first["study_uid"]  # the worklist entry's ids
    # Sent to P1 by routing, carrying the first booking's accession number (and another study UID).
    files = make_booked_study(tmp_path / "a", seed=3, accession=first["accession_number"])
    [outcome] = IngestChain(site).run_files(files, "P1", job_id="job-a")
    assert (outcome.project, outcome.participant, outcome.booking) == ("DEMO", LABEL, first["id"])
    [series] = outcome.series
    [verdict] = verdict_of(site, first["id"])
    assert series.verdict == "compliant", (verdict["deviations"], verdict["unverified"])
    assert verdict["verdict"] == "compliant" and verdict["deviations"] == []
    assert verdict["protocol"] == {"key": "t1-small", "version": 1} and verdict["series"] == series.series_id
    with transaction(site.engine) as db:
        row = db.get(Series, series.series_id)
        assert row.session.participant.label == LABEL and row.qc_status == "pending"
        assert db.get(Booking, first["id"]).status == "acquired"
        assert db.get(Booking, second["id"]).status == "approved"
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "booking.acquired"))
        assert event.detail["series"] == [series.series_id]

    # The second booking's StudyInstanceUID only (no accession), with a TR of 2500 ms instead of 2300.
    files = make_booked_study(tmp_path / "b", seed=4, study_uid=second["study_uid"], tr_ms=2500)
    [outcome] = IngestChain(site).run_files(files, "P1", job_id="job-b")
    assert (outcome.project, outcome.participant, outcome.booking) == ("DEMO", LABEL, second["id"])
    [verdict] = verdict_of(site, second["id"])
    assert verdict["verdict"] == "deviation"
    assert verdict["deviations"] == [{"parameter": "repetition_time", "booked": 2300, "acquired": 2500.0}]
    with transaction(site.engine) as db:
        row = db.get(Series, verdict["series"])
        assert row.qc_status == "caveat"
        [flag] = db.scalars(select(QCReview).where(QCReview.series_id == row.id))
        assert flag.reason == "protocol deviation from t1-small v1: repetition_time booked 2300 acquired 2500"
        assert flag.reviewer == "system:protocol-check" and flag.decision == "caveat"
        check = db.scalar(select(ProtocolCheck).where(ProtocolCheck.series_id == row.id))
        assert check.booking_id == second["id"]
        # An acquired booking keeps its slot and is no longer moved or cancelled.
        with pytest.raises(Exception, match="has been acquired"):
            bookings.cancel(db, Actor.console("x"), second["id"])

    # The same verdicts from the console: each deviation on its own line; bob (no member) is refused in one line.
    shown = run(site_env, "book", "compliance", "DEMO", "--as", "alice")
    assert shown.returncode == 0, shown.stderr
    assert "compliant" in shown.stdout and "deviation" in shown.stdout
    assert "repetition_time: booked 2300, acquired 2500" in shown.stdout
    one = run(site_env, "book", "compliance", "DEMO", "--booking", str(first["id"]), "--as", "alice")
    assert one.returncode == 0 and "deviation" not in one.stdout and "compliant" in one.stdout
    refused = run(site_env, "book", "compliance", "DEMO", "--as", "bob")
    assert refused.returncode != 0 and refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_unbooked_study_policy_routes_or_quarantines_with_a_reason(booked_site, tmp_path: Path) -> None:
    from incloud_kernel.ingest.chain import ChainFailure, IngestChain

    site = booked_site
    book(site, 9)
    files = make_booked_study(tmp_path / "a", seed=5, accession="AUNKNOWN00000001")
    site.config.acquisition.unbooked_studies = "quarantine"
    with pytest.raises(ChainFailure) as failure:
        IngestChain(site, enforce_booking=True).run_files(files, "P1", job_id="job-q")
    assert failure.value.step == "bind"
    assert "name no booking" in failure.value.reason and "AUNKNOWN" not in failure.value.reason
    with transaction(site.engine) as db:
        assert db.scalar(select(Series.id)) is None
    # A release (or a folder import) names its project and is not held to the policy.
    [outcome] = IngestChain(site).run_files(files, "P1", job_id="job-r")
    assert outcome.project == "P1" and outcome.booking is None and outcome.series[0].verdict == ""
    # The default policy: the routed project (its default), unbound, no verdict.
    site.config.acquisition.unbooked_studies = "route"
    files = make_booked_study(tmp_path / "b", seed=6, accession="AUNKNOWN00000002")
    [outcome] = IngestChain(site, enforce_booking=True).run_files(files, "P1", job_id="job-s")
    assert outcome.project == "P1" and outcome.booking is None
    with transaction(site.engine) as db:
        assert db.scalar(select(ProtocolCheck.id)) is None
        assert {b.status for b in db.scalars(select(Booking))} == {"approved"}


def test_unbooked_studies_setting_is_checked() -> None:
    from incloud_kernel.config import AcquisitionSection
    from incloud_kernel.errors import ConfigError

    assert AcquisitionSection().unbooked_studies == "route"
    with pytest.raises(ConfigError, match="route or quarantine"):
        AcquisitionSection(unbooked_studies="drop")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_registry_pseudonym_and_date_shift_reach_bound_and_unbound_studies(booked_site, tmp_path: Path) -> None:
    """The registry hook of de-identification is wired into ingest: an unbound study of an enrolled person
    (found by its record number) is archived under the registry pseudonym; a bound study takes the registry's
    date shift of the booking's participant."""
    from incloud_kernel.acquisition import binding, keyring, registry
    from incloud_kernel.archive.models import Project
    from incloud_kernel.ingest.chain import IngestChain

    site = booked_site
    with transaction(site.engine) as db:
        made = registry.register(db, Actor.console("registrar"), {
            "family_name": "Quennevillier", "given_names": "Ottoline", "birth_date": "1961-04-23", "sex": "F",
            "record_number": "MRN-4417-2209"}, config=site.config, project="DEMO")
    files = make_booked_study(tmp_path / "a", seed=7, patient_id="MRN-4417-2209")
    [outcome] = IngestChain(site).run_files(files, "DEMO", job_id="job-u")
    assert outcome.participant == made.pseudonym and outcome.booking is None

    with transaction(site.engine) as db:
        bookings.record_screening(db, ADMIN, made.pseudonym, datetime.now(UTC).date())
        start = datetime.combine(next_monday(), datetime.min.time(), UTC) + timedelta(hours=9)
        [row] = bookings.book(db, ALICE, scanner="MR1", participant=made.pseudonym, protocol="t1-small",
                              start=start, minutes=60)
        accession = row.accession_number
        demo = db.scalar(select(Project).where(Project.code == "DEMO"))
        shift = registry.date_offset(keyring.load(site.config), made.uid, demo.id)
    ds = pydicom.Dataset()
    ds.AccessionNumber, ds.StudyInstanceUID = accession, "1.2.3"
    with transaction(site.engine) as db:
        bound = binding.find(db, site.config, [ds])
    assert (bound.participant, bound.date_offset) == (made.pseudonym, shift)
    files = make_booked_study(tmp_path / "b", seed=8, accession=accession, patient_id=made.pseudonym)
    [outcome] = IngestChain(site).run_files(files, "P1", job_id="job-b")
    assert (outcome.project, outcome.participant) == ("DEMO", made.pseudonym)
    # The de-identified instances (the series cache; refacing is off here) carry the study date moved by it.
    [series] = outcome.series
    cached = sorted((site.config.spool / "ingest" / "deid-cache" / series.series_uid).glob("*.dcm"))
    clean, original = pydicom.dcmread(cached[0]), pydicom.dcmread(files[0])
    assert clean.PatientID == made.pseudonym
    moved = datetime.strptime(clean.StudyDate, "%Y%m%d") - datetime.strptime(original.StudyDate, "%Y%m%d")
    assert moved.days == shift
