"""The DICOM Modality Worklist: approved bookings as ``.wl`` files that Orthanc's worklist plugin serves.

Debian bookworm's Orthanc 1.10.1 ships the file-based ``libModalityWorklists.so`` plugin, which re-reads every
``*.wl`` file of its ``Worklists.Database`` folder on each worklist C-FIND and matches the query against it.
INCloud therefore keeps that folder equal to "approved bookings whose slot has not ended": one Part 10 file per
booking (``incloud-booking-<id>.wl``), written atomically (temporary file, fsync, rename) so that the plugin never
reads half a file. It was chosen over serving C-FIND from orthanc-python because it needs no other package, and
because C-FIND keeps working while INCloud's database or API is down.

An entry names the participant only by its archive label (the registry pseudonym): PatientID and PatientName
are both that label. This module must never put a name, birth date, record number or any other identity into
an entry, a file name or a log line, and must never touch files in the folder that it did not write.
"""
from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import Booking, Participant, Project, Scanner
from incloud_kernel.config import Config, get_config
from incloud_kernel.errors import StorageError

log = logging.getLogger(__name__)

#: Modality Worklist Information Model - FIND (PS3.4 K.6): the SOP class named in each file's meta header.
MWL_FIND = "1.2.840.10008.5.1.4.31"
PREFIX = "incloud-booking-"
SUFFIX = ".wl"
_ACCESSION_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def folder(config: Config | None = None) -> Path:
    """The folder Orthanc's worklist plugin reads (``Worklists.Database`` in dicom/orthanc_config.py)."""
    from incloud_kernel.dicom.orthanc_config import OrthancPaths

    return OrthancPaths.of(config or get_config()).worklists


def entry_name(booking_id: int) -> str:
    return f"{PREFIX}{booking_id}{SUFFIX}"


def new_ids() -> tuple[str, str]:
    """A fresh AccessionNumber (``A`` + 15 random characters: 16, the SH limit) and StudyInstanceUID.

    Given to a booking in the INSERT that creates it: a later UPDATE of a new row would re-check PostgreSQL's
    exclusion constraint against a competing in-flight insert and deadlock with it. The unique constraints of
    migration 0007 back the (2^75 to one) randomness.
    """
    return "A" + "".join(secrets.choice(_ACCESSION_ALPHABET) for _ in range(15)), generate_uid()


def assign_ids(db: DB, booking: Booking) -> None:
    """Give a booking made before migration 0007 its ids; kept from then on, across moves, so the study that
    comes back binds to the booking whatever its final slot."""
    if booking.accession_number is None or booking.study_uid is None:
        accession, uid = new_ids()
        booking.accession_number = booking.accession_number or accession
        booking.study_uid = booking.study_uid or uid
        db.flush()


def _ascii(text: str, limit: int) -> str:
    """Descriptions in the default character repertoire (no SpecificCharacterSet: many scanners lack UTF-8)."""
    return "".join(ch if 32 <= ord(ch) < 127 and ch != "\\" else "?" for ch in text)[:limit]


def entry(booking: Booking, scanner: Scanner, participant: Participant, project: Project) -> Dataset:
    """The worklist entry of one approved booking, every Type 1 return key of PS3.4 Table K.6-1 present
    (scanners silently drop entries without them) and the Type 2 keys present, empty."""
    if booking.accession_number is None or booking.study_uid is None:
        raise ValueError(f"booking #{booking.id} has no accession number yet (call assign_ids)")
    zone = ZoneInfo(scanner.timezone)
    start = booking.starts_at if booking.starts_at.tzinfo else booking.starts_at.replace(tzinfo=UTC)
    local = start.astimezone(zone)
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sps = Dataset()
    sps.ScheduledStationAETitle = scanner.ae_title
    sps.ScheduledProcedureStepStartDate = local.strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = local.strftime("%H%M%S")
    sps.Modality = scanner.modality
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = _ascii(booking.protocol_key, 64)
    sps.ScheduledStationName = _ascii(scanner.name or scanner.ae_title, 16)
    sps.ScheduledProcedureStepLocation = _ascii(scanner.site, 16)
    sps.ScheduledProcedureStepID = f"S{booking.id}"
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    code = Dataset()
    code.CodeValue = _ascii(booking.protocol_key, 16)
    code.CodingSchemeDesignator = "99INCLOUD"
    code.CodeMeaning = _ascii(booking.protocol_key, 64)
    sps.ScheduledProtocolCodeSequence = [code]
    ds = Dataset()
    ds.SOPClassUID = MWL_FIND
    ds.SOPInstanceUID = generate_uid()
    ds.AccessionNumber = booking.accession_number
    ds.ReferringPhysicianName = ""
    ds.TimezoneOffsetFromUTC = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    ds.InstitutionName = _ascii(scanner.site, 64)
    ds.ReferencedStudySequence = []
    ds.ReferencedPatientSequence = []
    ds.PatientName = participant.label
    ds.PatientID = participant.label
    ds.IssuerOfPatientID = _ascii(project.code, 64)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = booking.study_uid
    ds.RequestingPhysician = ""
    ds.RequestedProcedureDescription = _ascii(f"{project.code} {booking.protocol_key}", 64)
    ds.RequestedProcedureCodeSequence = [code]
    ds.AdmissionID = ""
    ds.ScheduledProcedureStepSequence = [sps]
    ds.RequestedProcedureID = f"R{booking.id}"
    ds.RequestedProcedurePriority = ""
    ds.StudyComments = _ascii(f"INCloud booking {booking.id}", 64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MWL_FIND
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_entry(path: Path, ds: Dataset) -> None:
    """Write a Part 10 file (preamble, meta header, explicit VR little endian) by temp file and rename, so the
    plugin, which re-reads the folder on every query, sees the old entry or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # no .wl suffix: the plugin ignores it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write worklist entry {path.name}: {exc.strerror or type(exc).__name__}") from None


def _entries(path: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for item in path.glob(f"{PREFIX}*{SUFFIX}"):
        number = item.name[len(PREFIX):-len(SUFFIX)]
        if number.isdigit():
            out[int(number)] = item
    return out


def sync(db: DB, *, config: Config | None = None, now: datetime | None = None,
         only: set[int] | None = None, rewrite: bool = False) -> dict[str, int]:
    """Make the worklist folder hold exactly the approved bookings whose slot has not ended.

    Writes (or rewrites) their entries, giving any that lacks one its accession number and study UID, and
    removes the entries of bookings that were cancelled, moved back to pending or whose slot has passed. With
    ``only`` (booking ids), just those bookings' entries are brought up to date, so one approval does not
    rewrite a folder of thousands. Returns counts: ``written``, ``removed``, ``kept`` (entries now served, or
    with ``only``, of those bookings). A full sync leaves an entry written after the booking's last change as it
    is (rewriting 10,000 entries takes a minute, fsync bound); ``rewrite`` rewrites every entry, e.g. after a
    scanner or a participant label changed.
    """
    now = now or datetime.now(UTC)
    path = folder(config)
    try:
        from incloud_kernel.site import private_dir

        private_dir(path)
        if not path.is_dir():
            raise NotADirectoryError(20, "not a directory")
    except OSError as exc:
        raise StorageError(f"cannot create worklist folder {path}: {exc.strerror or type(exc).__name__}") from None
    query = (select(Booking, Scanner, Participant, Project)
             .join(Scanner, Scanner.id == Booking.scanner_id)
             .join(Participant, Participant.id == Booking.participant_id)
             .join(Project, Project.id == Booking.project_id)
             .where(Booking.status == "approved", Booking.ends_at > now)
             .order_by(Booking.id))
    if only is not None:
        query = query.where(Booking.id.in_(sorted(only)))
    rows = db.execute(query).all()
    present = _entries(path)
    if only is not None:
        present = {k: v for k, v in present.items() if k in only}
    written = 0
    for booking, scanner, participant, project in rows:
        item = present.get(booking.id)
        if only is None and not rewrite and item is not None and booking.accession_number is not None:
            changed_at = booking.updated_at if booking.updated_at.tzinfo else booking.updated_at.replace(tzinfo=UTC)
            try:
                if item.stat().st_mtime > changed_at.timestamp():
                    continue
            except OSError:
                pass
        assign_ids(db, booking)
        write_entry(path / entry_name(booking.id), entry(booking, scanner, participant, project))
        written += 1
    wanted = {b.id for b, *_ in rows}
    removed = 0
    for booking_id, item in present.items():
        if booking_id not in wanted:
            try:
                item.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot remove worklist entry {item.name}: "
                                   f"{exc.strerror or type(exc).__name__}") from None
            removed += 1
    return {"written": written, "removed": removed, "kept": len(wanted)}


def _enabled(config: Config, engine: Any) -> bool:
    """The plugin is on and the session is the site's own database: bookings of another database (a benchmark's
    scratch database, say) never reach this site's scanners."""
    if not config.dicom.worklist:
        return False
    try:
        site, ours = make_url(config.database_url), engine.url
    except ArgumentError:
        return False
    where = lambda u: (u.get_backend_name(), u.host, u.port, u.database)  # noqa: E731
    return bool(where(site) == where(ours))


def changed(db: DB, booking: Booking) -> None:
    """Call when a booking was made, approved, cancelled or moved: the folder is synced once the caller's
    transaction commits (a booking made before migration 0007 gets its ids now, stored with the change).

    The sync after commit runs in a session of its own; if it fails (a full disk, a missing folder) the booking
    change stands, a warning naming the booking is logged, and ``incloud book worklist sync`` repairs it.
    """
    config = get_config()
    if not _enabled(config, db.get_bind()):
        return
    if booking.status == "approved" and booking.accession_number is None:
        assign_ids(db, booking)
    pending: set[int] | None = db.info.get("worklist_changed")
    if pending is not None:
        pending.add(booking.id)
        return
    pending = db.info["worklist_changed"] = {booking.id}
    engine = db.get_bind()

    def after_commit(session: DB) -> None:
        session.info.pop("worklist_changed", None)
        try:
            with DB(engine) as fresh, fresh.begin():
                sync(fresh, config=config, only=pending)
        except Exception as exc:  # noqa: BLE001 - the committed booking must stand; the sync is repairable
            log.warning("worklist sync after a change of booking(s) %s failed (%s); run incloud book worklist sync",
                        ",".join(map(str, sorted(pending))), type(exc).__name__)

    def after_rollback(session: DB, _previous: Any) -> None:
        # A rolled-back change leaves the listener armed; a later commit of this session syncs those bookings
        # as they then are, which is harmless.
        session.info.pop("worklist_changed", None)

    event.listen(db, "after_commit", after_commit, once=True)
    event.listen(db, "after_soft_rollback", after_rollback, once=True)


def entries_as_dicts(path: Path) -> list[dict[str, Any]]:
    """The served entries, for ``incloud book worklist list``: ids and times only, never an identity."""
    from pydicom import dcmread

    out = []
    for booking_id, item in sorted(_entries(path).items()):
        ds = dcmread(item)
        sps = ds.ScheduledProcedureStepSequence[0]
        out.append({"booking": booking_id, "accession_number": str(ds.AccessionNumber),
                    "patient_id": str(ds.PatientID), "station": str(sps.ScheduledStationAETitle),
                    "date": str(sps.ScheduledProcedureStepStartDate), "time": str(sps.ScheduledProcedureStepStartTime)})
    return out
