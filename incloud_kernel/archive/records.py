"""Adding to the archive: participants, sessions, series, derivatives and their files, under BIDS names.

Every write checks the actor's role through ``permissions`` first and validates every label before anything
is stored. Files go to disk first (``storage.atomic_write``: temp file, fsync, rename), then their rows
(SHA-256, size) are committed in one transaction; a crash between the two leaves only orphan files that the
sweeper (``archive.integrity``) removes or adopts, never a row without its file. ``participants.tsv`` in the
archive root is rewritten (atomically, under a lock) after each commit that added participants.
This module must never write outside the archive root, never overwrite a recorded file, and never put a
patient-identifying value in a name, an audit event or an error message.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import uuid
from contextlib import contextmanager
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from sqlalchemy import delete as sql_delete
from sqlalchemy import event, false, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import (
    DataFile,
    Derivative,
    FileKind,
    Participant,
    Project,
    QCStatus,
    Series,
    Session,
)
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.projects import audit
from incloud_kernel.archive.projects import check_bids_label as check_label
from incloud_kernel.archive.storage import (
    TMP_PREFIX,
    atomic_write,
    ensure_dataset,
    fsync_dir,
    safe_relpath,
    write_synced,
)
from incloud_kernel.db import session_factory
from incloud_kernel.errors import StorageError, ValidationError

#: BIDS datatypes (BIDS 1.9 folder names) a raw series may be filed under.
DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf", "pet", "meg", "eeg", "ieeg", "beh", "micr",
                       "nirs", "motion"})
#: The datatype of a series no BIDS rule names: its files live under ``sourcedata/`` (BIDS 1.9 "Source vs. raw
#: vs. derived data": source data MUST be kept in a separate sourcedata directory, named following BIDS where
#: possible) as ``sourcedata/sub-<p>/ses-<s>/<stem>.nii.gz|.json`` and ``<stem>.dicom/<instance>.dcm``.
SOURCEDATA = "sourcedata"
#: A DICOM instance of a sourcedata series: ``dicom/<de-identified SOPInstanceUID>.dcm``.
_SOURCE_DICOM = re.compile(r"dicom/([0-9]+(\.[0-9]+)*)\.dcm")
#: BIDS entities in the order they appear in a file name (after sub and ses).
ENTITY_ORDER = ("task", "acq", "ce", "trc", "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt",
                "part", "proc", "hemi", "space", "split", "recording", "chunk", "seg", "res", "den", "label",
                "desc")
_EXTENSION = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
_RELNAME = re.compile(r"[A-Za-z0-9._+/-]{1,512}")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+]{0,31}$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")

#: Pseudonymous research attributes a participant may carry, with their validators (see ``add_participant``).
SEX = frozenset({"M", "F", "O"})
HANDEDNESS = frozenset({"R", "L", "A"})
PARTICIPANT_COLUMNS = ("sex", "birth_year", "handedness", "education_years", "diagnosis", "first_episode",
                       "medication", "follow_up")
_LOCK_NAME = ".incloud-participants.lock"


# --------------------------------------------------------------------------------------------------------------
# Transactions that keep participants.tsv in sync
# --------------------------------------------------------------------------------------------------------------

def _after_commit(session: DB) -> None:
    root = session.info.get("archive_root")
    session.info.pop("written_files", None)  # recorded now: never removed by a later rollback
    session.info.pop("staged_files", None)
    if root is not None:
        _finish_replacements(Path(root), session.info.pop("renames", []), session.info.pop("unlink_after_commit", []))
    if session.info.pop("participants_dirty", False) and root is not None:
        with session_factory(session.get_bind())() as reader:
            write_participants_tsv(reader, Path(root))


def _finish_replacements(root: Path, renames: list[tuple[str, str]], unlink: list[str]) -> None:
    """After a commit of ``replace_files``: move staged files onto their final names, then drop old files."""
    for staging, final in renames:
        target = root / final
        os.replace(root / staging, target)
        fsync_dir(target.parent)
    for relpath in unlink:
        _unlink(root, relpath)


def _stage(path: Path, source: Source) -> tuple[str, int]:
    """Write ``source`` completely to ``path`` (a temp-prefixed staging name) and fsync it; (sha256, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result = write_synced(path, source)
    fsync_dir(path.parent)
    return result


def _unlink(root: Path, relpath: str) -> None:
    """Remove one archive file and the folders that emptied, never the root; errors are left to the sweeper."""
    path = root / relpath
    try:
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == root or root not in parent.parents:
                break
            parent.rmdir()
    except OSError:
        pass  # folder not empty, or the root is read-only: the sweeper handles leftovers


def _discard_written(db: DB, root: Path, relpaths: list[str]) -> None:
    """Undo writes of a failed call or a rolled-back transaction (files no committed row records)."""
    pending = db.info.get("written_files", [])
    for relpath in relpaths:
        if relpath in pending:
            pending.remove(relpath)
    _remove_unrecorded(db.get_bind(), root, relpaths)


@contextmanager
def transaction(site: Any) -> Iterator[DB]:
    """A session on ``site`` that commits on success (rolls back on error) and then syncs participants.tsv.

    Use this (rather than ``db.transaction``) for ``add_participant`` so the archive root's participants.tsv
    follows the database, and for ``register_series``/``add_files(db=...)``/``replace_files(db=...)``: on
    rollback it removes the files those calls wrote; after the commit it completes the replacements.
    ``site`` is an ``incloud_kernel.site.Site``.
    """
    session = session_factory(site.engine)()
    session.info["archive_root"] = str(site.archive_root)
    session.info["records_hooks"] = True
    event.listen(session, "after_commit", _after_commit)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        root = Path(site.archive_root)
        _discard_written(session, root, list(session.info.pop("written_files", [])))
        for staging in session.info.pop("staged_files", []):
            _unlink(root, staging)
        session.info.pop("renames", None)
        session.info.pop("unlink_after_commit", None)
        raise
    finally:
        session.close()


def _tsv_value(value: Any) -> str:
    if value is None or value == []:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).replace("\t", " ").replace("\n", " ")


def participants_tsv(db: DB) -> bytes:
    """The archive's participants.tsv (every project's participants, ordered by label) as bytes."""
    lines = ["\t".join(("participant_id",) + PARTICIPANT_COLUMNS)]
    page = 1
    while True:
        batch = permissions.list_participants(db, permissions.SYSTEM, page=page, page_size=permissions.MAX_PAGE_SIZE)
        for p in batch:
            lines.append("\t".join([f"sub-{p.label}"] + [_tsv_value(getattr(p, c)) for c in PARTICIPANT_COLUMNS]))
        if not batch.has_more:
            break
        page += 1
    head, rows = lines[0], sorted(lines[1:])
    return ("\n".join([head, *rows]) + "\n").encode()


def write_participants_tsv(db: DB, root: Path) -> None:
    """Rewrite ``root/participants.tsv`` from the database, atomically and under an exclusive lock, so two
    writers cannot leave an older snapshot last. Raises StorageError when the root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / _LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            db.rollback()  # read a snapshot taken after the lock, not before
            atomic_write(root, "participants.tsv", participants_tsv(db), overwrite=True)
    except OSError as exc:
        raise StorageError(f"cannot update participants.tsv under {root}: {exc.strerror}") from None


# --------------------------------------------------------------------------------------------------------------
# Participants, sessions, series, derivatives
# --------------------------------------------------------------------------------------------------------------

def _check_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(attributes) - set(PARTICIPANT_COLUMNS)
    if unknown:
        raise ValidationError(f"unknown participant attribute(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(PARTICIPANT_COLUMNS)}")
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            out[key] = [] if key == "diagnosis" else (False if key == "follow_up" else None)
            continue
        if key == "sex" and value not in SEX:
            raise ValidationError(f"sex must be one of {', '.join(sorted(SEX))}")
        elif key == "handedness" and value not in HANDEDNESS:
            raise ValidationError(f"handedness must be one of {', '.join(sorted(HANDEDNESS))}")
        elif key == "birth_year" and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1850 <= value <= 2200):
            raise ValidationError("birth_year must be a whole year between 1850 and 2200")
        elif key == "education_years" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                           or not math.isfinite(value) or not 0 <= value <= 40):
            raise ValidationError("education_years must be a number of years between 0 and 40")
        elif key == "diagnosis":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:+ -]{0,63}", v) for v in value):
                raise ValidationError("diagnosis must be a list of category codes (letters, digits, .:+- space)")
            value = list(value)
        elif key in ("first_episode", "follow_up") and not isinstance(value, bool):
            raise ValidationError(f"{key} must be true or false")
        elif key == "medication" and (not isinstance(value, str) or len(value) > 256
                                      or any(ord(c) < 32 for c in value)):
            raise ValidationError("medication must be one line of at most 256 characters")
        out[key] = value
    return out


def add_participant(db: DB, actor: Actor, project: int | str | Project, label: str,
                    **attributes: Any) -> Participant:
    """Add a participant (BIDS ``sub-<label>``) to a project; needs ``write`` (member or owner).

    ``attributes`` are pseudonymous research attributes only: sex (M/F/O), birth_year, handedness (R/L/A),
    education_years, diagnosis (list of category codes), first_episode, medication, follow_up.
    Labels are unique across the archive (one BIDS dataset). Raises ValidationError for a bad or taken label
    or attribute; nothing is stored then. In ``records.transaction(site)``, participants.tsv follows.
    """
    row = permissions.require(db, actor, project, Action.write)
    check_label(label, "participant label")
    values = _check_attributes(attributes)
    if db.scalar(select(Participant.id).where(Participant.label == label)) is not None:
        raise ValidationError(f"participant label {label} is already taken in this archive")
    participant = Participant(label=label, project_id=row.id, **values)
    db.add(participant)
    try:
        db.flush()
    except IntegrityError:
        raise ValidationError(f"participant label {label} is already taken in this archive") from None
    audit(db, actor, "participant.add", "participant", participant.id, project=row.code,
          fields=sorted(values))
    db.info["participants_dirty"] = True
    return participant


def update_participant(db: DB, actor: Actor, participant: int | str | Participant, **attributes: Any) -> Participant:
    """Change research attributes of a participant; needs ``write``. Audited by field name, never value."""
    row = permissions.get_participant(db, actor, participant, Action.write)
    for key, value in _check_attributes(attributes).items():
        setattr(row, key, value)
    db.flush()
    audit(db, actor, "participant.update", "participant", row.id, fields=sorted(attributes))
    db.info["participants_dirty"] = True
    return row


def add_session(db: DB, actor: Actor, participant: int | str | Participant, label: str, *,
                scan_date: date | str | None = None, age_at_scan: float | None = None,
                scanner: str | None = None) -> Session:
    """Add a visit (BIDS ``ses-<label>``) to a participant; needs ``write``.

    ``age_at_scan`` in years; ``scanner`` a free-text site/scanner name (no person's name). Raises
    ValidationError for a bad label, a label the participant already has, or bad values.
    """
    owner = permissions.get_participant(db, actor, participant, Action.write)
    check_label(label, "session label")
    if isinstance(scan_date, str):
        try:
            scan_date = date.fromisoformat(scan_date)
        except ValueError:
            raise ValidationError("scan_date must be a date (YYYY-MM-DD)") from None
    if age_at_scan is not None and (isinstance(age_at_scan, bool) or not isinstance(age_at_scan, (int, float))
                                    or not 0 <= age_at_scan <= 150):
        raise ValidationError("age_at_scan must be a number of years between 0 and 150")
    if scanner is not None and (not isinstance(scanner, str) or len(scanner) > 256
                                or any(ord(c) < 32 for c in scanner)):
        raise ValidationError("scanner must be one line of at most 256 characters")
    if db.scalar(select(Session.id).where(Session.participant_id == owner.id, Session.label == label)):
        raise ValidationError(f"participant {owner.label} already has session {label}")
    session = Session(participant_id=owner.id, project_id=owner.project_id, label=label, scan_date=scan_date,
                      age_at_scan=age_at_scan, scanner=scanner)
    db.add(session)
    db.flush()
    audit(db, actor, "session.add", "session", session.id, participant=owner.id)
    return session


def _check_entities(entities: Mapping[str, Any] | None) -> dict[str, str]:
    entities = dict(entities or {})
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValidationError(f"unknown BIDS entit(y/ies): {', '.join(sorted(unknown))}")
    out: dict[str, str] = {}
    for key in ENTITY_ORDER:
        if key in entities and entities[key] is not None:
            value = entities[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValidationError(f"BIDS entity {key} must be a label or a number")
            out[key] = check_label(str(value), f"BIDS entity {key}")
    return out


def _check_json(params: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    if not all(isinstance(k, str) for k in params):
        raise ValidationError("scan parameter names must be text")
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationError("scan parameters must be JSON values (numbers, text, lists)") from None
    return params


def add_series(db: DB, actor: Actor, session: int | Session, datatype: str, suffix: str,
               entities: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None, *,
               modality: str = "MR", protocol_name: str | None = None, series_uid: str | None = None,
               qc_status: str = QCStatus.pending.value) -> Series:
    """Add an acquisition to a session, named in BIDS; needs ``write``.

    ``entities`` maps BIDS entity keys (task, acq, run, echo, ...) to labels; ``params`` holds scan
    parameters as JSON (RepetitionTime and EchoTime in seconds, FlipAngle in degrees, VoxelSize in mm,
    Matrix, NumberOfSlices, Manufacturer, ManufacturersModelName, MagneticFieldStrength in tesla).
    ``series_uid`` must be the de-identified SeriesInstanceUID. Raises ValidationError for an unknown
    datatype, entity or QC status, an unsafe label, or a BIDS name another series of the session already has.
    """
    ses = permissions.get_session(db, actor, session, Action.write)
    if datatype not in DATATYPES and datatype != SOURCEDATA:
        raise ValidationError(f"unknown BIDS datatype {datatype!r}; known: {', '.join(sorted(DATATYPES))}")
    check_label(suffix, "BIDS suffix")
    if not isinstance(modality, str) or not _MODALITY.fullmatch(modality):
        raise ValidationError("modality must be a DICOM modality code (upper-case letters and digits)")
    if qc_status not in {q.value for q in QCStatus}:
        raise ValidationError(f"qc_status must be one of {', '.join(q.value for q in QCStatus)}")
    if series_uid is not None and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", series_uid or ""):
        raise ValidationError("series_uid must be a DICOM UID (digits and dots)")
    clean_entities = _check_entities(entities)
    clean_params = _check_json(params)
    if protocol_name is not None:
        protocol_name = str(protocol_name).replace("\n", " ")[:256]
    series = Series(session_id=ses.id, project_id=ses.project_id, modality=modality, datatype=datatype,
                    suffix=suffix, entities=clean_entities, params=clean_params, protocol_name=protocol_name,
                    series_uid=series_uid, qc_status=qc_status)
    stem = bids_stem_for(ses.participant.label, ses.label, datatype, suffix, clean_entities)
    for other in db.scalars(select(Series).where(Series.session_id == ses.id, Series.datatype == datatype,
                                                 Series.suffix == suffix)):
        if bids_stem(other) == stem:
            raise ValidationError(f"session already has a series named {PurePosixPath(stem).name}; "
                                  "add an entity such as run to tell them apart")
    db.add(series)
    try:
        db.flush()
    except IntegrityError:
        raise ValidationError("a series with this series_uid is already archived") from None
    audit(db, actor, "series.add", "series", series.id, session=ses.id, datatype=datatype, suffix=suffix)
    return series


def add_derivative(db: DB, actor: Actor, session: int | Session, pipeline: str, version: str,
                   inputs: Iterable[int | str] = ()) -> Derivative:
    """Register the outputs of one pipeline version for one session; needs ``write``.

    Files go under ``derivatives/<pipeline>-<version>/sub-<label>/ses-<label>/``. ``inputs`` are the ids of
    the series (or files) it read. Raises ValidationError for an unsafe pipeline name or version.
    """
    ses = permissions.get_session(db, actor, session, Action.write)
    check_label(pipeline, "pipeline name")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValidationError("pipeline version must be letters, digits, dots or + (at most 32)")
    derivative = Derivative(session_id=ses.id, project_id=ses.project_id, pipeline=pipeline, version=version,
                            inputs=[i if isinstance(i, int) else str(i) for i in inputs])
    db.add(derivative)
    db.flush()
    audit(db, actor, "derivative.add", "derivative", derivative.id, session=ses.id, pipeline=pipeline,
          version=version)
    return derivative


# --------------------------------------------------------------------------------------------------------------
# BIDS names and files
# --------------------------------------------------------------------------------------------------------------

def bids_stem_for(participant: str, session: str, datatype: str, suffix: str,
                  entities: Mapping[str, str]) -> str:
    """``sub-<p>/ses-<s>/<datatype>/sub-<p>_ses-<s>[_<key>-<value>...]_<suffix>`` (no extension); for
    ``SOURCEDATA``: ``sourcedata/sub-<p>/ses-<s>/sub-<p>_ses-<s>[_...]_<suffix>``."""
    parts = [f"sub-{participant}", f"ses-{session}"]
    parts += [f"{key}-{entities[key]}" for key in ENTITY_ORDER if key in entities]
    if datatype == SOURCEDATA:
        return f"{SOURCEDATA}/sub-{participant}/ses-{session}/{'_'.join(parts)}_{suffix}"
    return f"sub-{participant}/ses-{session}/{datatype}/{'_'.join(parts)}_{suffix}"


def bids_stem(series: Series) -> str:
    """The BIDS path stem (relative to the archive root, no extension) of a series' files."""
    ses = series.session
    return bids_stem_for(ses.participant.label, ses.label, series.datatype, series.suffix, series.entities or {})


def derivative_folder(derivative: Derivative, participant: str, session: str) -> str:
    return f"derivatives/{derivative.pipeline}-{derivative.version}/sub-{participant}/ses-{session}"


def series_relpath(series: Series, extension: str) -> str:
    """Where a series' file with ``extension`` (``nii.gz``, ``json``, ``bval``...) lives in the archive; a
    ``SOURCEDATA`` series also takes ``dicom/<uid>.dcm`` keys, stored as ``<stem>.dicom/<uid>.dcm``."""
    if series.datatype == SOURCEDATA and _SOURCE_DICOM.fullmatch(extension):
        return str(safe_relpath(f"{bids_stem(series)}.{extension}"))
    ext = extension[1:] if extension.startswith(".") else extension
    if not _EXTENSION.fullmatch(ext):
        raise ValidationError(f"file extension must be lower-case letters and digits separated by dots, "
                              f"got {extension!r}")
    return str(safe_relpath(f"{bids_stem(series)}.{ext}"))


def derivative_relpath(derivative: Derivative, relname: str) -> str:
    """Where a derivative file lives: ``relname`` (e.g. ``anat/desc-brain_mask.nii.gz``) under the session
    folder of its pipeline; the file name gets the ``sub-<p>_ses-<s>_`` prefix if it lacks it."""
    ses = derivative_session(derivative)
    if not isinstance(relname, str) or not _RELNAME.fullmatch(relname):
        raise ValidationError(f"derivative file names must be letters, digits and ._+-/ only, got {relname!r}")
    rel = safe_relpath(relname)
    prefix = f"sub-{ses.participant.label}_ses-{ses.label}_"
    name = rel.name if rel.name.startswith(prefix) else prefix + rel.name
    return str(safe_relpath(PurePosixPath(derivative_folder(derivative, ses.participant.label, ses.label))
                            / rel.parent / name))


def derivative_session(derivative: Derivative) -> Session:
    from sqlalchemy.orm import object_session

    db = object_session(derivative)
    assert db is not None, "derivative must be attached to a session"
    ses = db.get(Session, derivative.session_id)
    assert ses is not None
    return ses


Source = bytes | Path | BinaryIO


def _owner_and_paths(db: DB, actor: Actor, target: Series | Derivative | int, files: Mapping[str, Source],
                     derivative: bool | None) -> tuple[Series | Derivative, dict[str, str], str, bool]:
    """Check ``write`` on the owner of ``files`` and map each key to its archive path (validated, distinct)."""
    if not files:
        raise ValidationError("at least one file is needed")
    is_derivative = isinstance(target, Derivative) or (derivative is True and isinstance(target, int))
    if is_derivative:
        owner: Series | Derivative = permissions.get_derivative(db, actor, target, Action.write)  # type: ignore[arg-type]
        relpaths = {key: derivative_relpath(owner, key) for key in files}  # type: ignore[arg-type]
        kind = FileKind.derivative.value
    else:
        owner = permissions.get_series(db, actor, target, Action.write)  # type: ignore[arg-type]
        relpaths = {key: series_relpath(owner, key) for key in files}
        kind = FileKind.raw.value
    if len(set(relpaths.values())) != len(relpaths):
        raise ValidationError("two of the files given map to the same archive path")
    return owner, relpaths, kind, is_derivative


def _in_transaction(db: DB) -> Path:
    """The archive root of a ``records.transaction`` session; file writes in a caller's session need its
    commit/rollback hooks, so any other session is a programming error."""
    root = db.info.get("archive_root")
    if root is None or not db.info.get("records_hooks"):
        raise ValueError("files can join a caller's transaction only inside records.transaction(site)")
    return Path(root)


def add_files(site: Any, actor: Actor, target: Series | Derivative | int, files: Mapping[str, Source], *,
              derivative: bool | None = None, db: DB | None = None,
              overwrite_unrecorded: bool = False) -> list[DataFile]:
    """Write files of a series (or derivative) into the archive and record them, all or nothing.

    ``files`` maps, for a series, an extension (``nii.gz``, ``json``...) and, for a derivative, a path under
    its session folder (``anat/desc-brain_mask.nii.gz``) to the content (bytes, a Path, or a binary file).
    An int ``target`` is a series id unless ``derivative=True``. Needs ``write`` on the project.

    Order: every path is validated and checked free (database and disk) first; each file is written with
    ``atomic_write``; then all rows (SHA-256, bytes) and one audit event are committed in one transaction.
    With ``db`` (a session of ``records.transaction``, e.g. the one that just added the series), the rows and
    the audit event join that session and commit with it -- series row, file rows and audit in ONE commit;
    if that transaction rolls back, the files written here are removed again. Without ``db`` the call commits
    on its own. ``overwrite_unrecorded`` lets a retry replace a file that a crashed earlier attempt left at a
    target path with no row recording it (never a recorded file).
    If a write or the commit fails, the files this call wrote are removed again and the error is raised
    (StorageError for a full or unwritable root, ValidationError for a bad or taken name); a crash leaves
    at worst orphan files for the sweeper. Returns the new DataFile rows (detached when ``db`` is None).
    """
    if db is not None:
        root = _in_transaction(db)
        return _add_files_in(db, root, actor, target, files, derivative, overwrite_unrecorded)
    with transaction(site) as own:
        rows = _add_files_in(own, site.archive_root, actor, target, files, derivative, overwrite_unrecorded)
        try:
            own.flush()
        except IntegrityError:
            raise ValidationError("archive file already recorded by a concurrent writer") from None
    return rows


def _add_files_in(db: DB, root: Path, actor: Actor, target: Series | Derivative | int,
                  files: Mapping[str, Source], derivative: bool | None, overwrite_unrecorded: bool) -> list[DataFile]:
    owner, relpaths, kind, is_derivative = _owner_and_paths(db, actor, target, files, derivative)
    taken = db.scalars(select(DataFile.relpath).where(DataFile.relpath.in_(list(relpaths.values())))).first()
    if taken is not None:
        raise ValidationError(f"archive file already recorded: {taken}")
    if not (root / "dataset_description.json").exists():
        ensure_dataset(root)
    written: list[tuple[str, str, int]] = []
    try:
        for key, relpath in relpaths.items():
            digest, size = atomic_write(root, relpath, files[key], overwrite=overwrite_unrecorded)
            written.append((relpath, digest, size))
            db.info.setdefault("written_files", []).append(relpath)
        rows = [DataFile(relpath=relpath, project_id=owner.project_id, sha256=digest, size=size, kind=kind,
                         series_id=None if is_derivative else owner.id,
                         derivative_id=owner.id if is_derivative else None)
                for relpath, digest, size in written]
        db.add_all(rows)
        try:
            db.flush()
        except IntegrityError:
            raise ValidationError("archive file already recorded by a concurrent writer") from None
        audit(db, actor, "files.add", "derivative" if is_derivative else "series", owner.id,
              files=[r.id for r in rows], bytes=sum(r.size for r in rows))
        return rows
    except BaseException as exc:
        _discard_written(db, root, [relpath for relpath, _d, _s in written])
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write under {root}: {exc.strerror or type(exc).__name__}") from None
        raise


def register_series(site: Any, actor: Actor, db: DB, session: int | Session, datatype: str, suffix: str,
                    files: Mapping[str, Source], entities: Mapping[str, Any] | None = None,
                    params: Mapping[str, Any] | None = None, **series_fields: Any) -> tuple[Series, list[DataFile]]:
    """Add a series AND its files in the caller's ``records.transaction`` ``db``: one commit for the series
    row, the file rows and the audit events (``add_series`` then ``add_files(db=db)``; see both).

    Files are written atomically before the commit; if the transaction rolls back they are removed; a crash
    before the commit leaves only orphan files (the sweeper quarantines them), never a series without files.
    ``series_fields`` are ``add_series``' keywords (modality, protocol_name, series_uid, qc_status).
    """
    series = add_series(db, actor, session, datatype, suffix, entities, params, **series_fields)
    rows = add_files(site, actor, series, files, db=db, overwrite_unrecorded=True)
    return series, rows


def register_derivative(site: Any, actor: Actor, db: DB, session: int | Session, pipeline: str, version: str,
                        files: Mapping[str, Source], inputs: Iterable[int | str] = ()) -> tuple[Derivative, list[DataFile]]:
    """Add a derivative AND its files in one commit of the caller's ``records.transaction`` (as
    ``register_series``)."""
    derivative = add_derivative(db, actor, session, pipeline, version, inputs)
    rows = add_files(site, actor, derivative, files, db=db, overwrite_unrecorded=True)
    return derivative, rows


REPLACE_PREFIX = f"{TMP_PREFIX}replace-"


def replace_files(site: Any, actor: Actor, target: Series | Derivative | int, files: Mapping[str, Source], *,
                  derivative: bool | None = None, db: DB | None = None) -> list[DataFile]:
    """Swap ALL files of a series (or derivative) for ``files`` -- e.g. a series reconverted after late
    instances were merged; needs ``write``.

    Order: the new contents are written atomically (temp, fsync, rename) under staging names
    (``.incloud-tmp-replace-*`` beside their targets, which readers, BIDS tools and ``verify`` ignore and the
    sweeper removes); then the old rows are deleted and the new rows (SHA-256, bytes) plus one audit event
    added in one transaction (``db``'s, committed by the caller, or this call's own); only after that commit
    are the staged files renamed onto their final names and the old files no new row records unlinked.
    A failure before the commit removes the staged files and leaves the series as it was. A crash after
    the commit but before the renames (milliseconds) leaves rows whose checksums ``verify`` reports as corrupt
    until the same replacement is run again (the ingest chain re-runs its job). Returns the new rows.
    """
    if db is not None:
        root = _in_transaction(db)
        return _replace_files_in(db, root, actor, target, files, derivative)
    with transaction(site) as own:
        return _replace_files_in(own, site.archive_root, actor, target, files, derivative)


def _replace_files_in(db: DB, root: Path, actor: Actor, target: Series | Derivative | int,
                      files: Mapping[str, Source], derivative: bool | None) -> list[DataFile]:
    owner, relpaths, kind, is_derivative = _owner_and_paths(db, actor, target, files, derivative)
    column = DataFile.derivative_id if is_derivative else DataFile.series_id
    old = {f.relpath: f for f in db.scalars(select(DataFile).where(column == owner.id))}
    taken = db.scalars(select(DataFile.relpath).where(DataFile.relpath.in_(list(relpaths.values())),
                                                       column.is_(None) | (column != owner.id))).first()
    if taken is not None:
        raise ValidationError(f"archive file already recorded: {taken}")
    if not (root / "dataset_description.json").exists():
        ensure_dataset(root)
    staged: list[tuple[str, str, str, int]] = []  # (final relpath, staged relpath, sha256, size)
    attempted: list[str] = []
    try:
        for key, relpath in relpaths.items():
            rel = PurePosixPath(relpath)
            staging = str(rel.parent / f"{REPLACE_PREFIX}{uuid.uuid4().hex[:12]}-{rel.name}")
            db.info.setdefault("staged_files", []).append(staging)
            attempted.append(staging)
            digest, size = _stage(root / staging, files[key])
            staged.append((relpath, staging, digest, size))
        for row in old.values():
            db.delete(row)
        db.flush()
        rows = [DataFile(relpath=relpath, project_id=owner.project_id, sha256=digest, size=size, kind=kind,
                         series_id=None if is_derivative else owner.id,
                         derivative_id=owner.id if is_derivative else None)
                for relpath, _staging, digest, size in staged]
        db.add_all(rows)
        try:
            db.flush()
        except IntegrityError:
            raise ValidationError("archive file already recorded by a concurrent writer") from None
        audit(db, actor, "files.replace", "derivative" if is_derivative else "series", owner.id,
              files=[r.id for r in rows], replaced=len(old), bytes=sum(r.size for r in rows))
    except BaseException as exc:
        for staging in attempted:
            _unlink(root, staging)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write under {root}: {exc.strerror or type(exc).__name__}") from None
        raise
    db.info.setdefault("renames", []).extend((staging, relpath) for relpath, staging, _d, _s in staged)
    new_paths = {relpath for relpath, *_ in staged}
    db.info.setdefault("unlink_after_commit", []).extend(r for r in old if r not in new_paths)
    return rows


Removable = Participant | Session | Series | Derivative | DataFile
_GETTERS = {Participant: permissions.get_participant, Session: permissions.get_session,
            Series: permissions.get_series, Derivative: permissions.get_derivative, DataFile: permissions.get_file}


def _files_under(db: DB, target: Removable) -> list[str]:
    """Relative paths of every file recorded under ``target`` (a participant, session, series...)."""
    if isinstance(target, DataFile):
        return [target.relpath]
    if isinstance(target, Series):
        series_ids: Any = select(Series.id).where(Series.id == target.id)
        derivative_ids: Any = select(Derivative.id).where(false())
    elif isinstance(target, Derivative):
        series_ids = select(Series.id).where(false())
        derivative_ids = select(Derivative.id).where(Derivative.id == target.id)
    else:
        session_ids = (select(Session.id).where(Session.id == target.id) if isinstance(target, Session)
                       else select(Session.id).where(Session.participant_id == target.id))
        series_ids = select(Series.id).where(Series.session_id.in_(session_ids))
        derivative_ids = select(Derivative.id).where(Derivative.session_id.in_(session_ids))
    return list(db.scalars(select(DataFile.relpath).where(
        (DataFile.series_id.in_(series_ids)) | (DataFile.derivative_id.in_(derivative_ids)))))


def remove(site: Any, actor: Actor, target: Removable) -> int:
    """Delete a participant, session, series, derivative or file with everything under it; needs ``manage``
    (project owner or site admin). Returns how many files were removed.

    Rows go first, in one transaction with an audit event; then the files are unlinked. A crash between
    the two leaves files no row records, which the sweeper removes; never a row without its file.
    """
    model = type(target)
    if model not in _GETTERS:
        raise ValidationError(f"cannot remove a {model.__name__}")
    root: Path = site.archive_root
    with transaction(site) as db:
        row = _GETTERS[model](db, actor, target.id, Action.manage)  # type: ignore[operator]
        relpaths = _files_under(db, row)
        audit(db, actor, f"{model.__tablename__}.remove", model.__tablename__, row.id, files=len(relpaths))
        db.execute(sql_delete(model).where(model.id == row.id))
        if model is Participant:
            db.info["participants_dirty"] = True
    for relpath in relpaths:
        path = root / relpath
        try:
            path.unlink(missing_ok=True)
            for parent in path.parents:  # drop folders the removal emptied, never the root itself
                if parent == root or root not in parent.parents:
                    break
                parent.rmdir()
        except OSError:
            continue  # folder not empty (or already gone): done with this file
    return len(relpaths)


def _remove_unrecorded(engine: Any, root: Path, relpaths: list[str]) -> None:
    """Undo writes, but never remove a file that a committed row (a concurrent writer's) records."""
    if not relpaths:
        return
    try:
        with session_factory(engine)() as db:
            recorded = set(db.scalars(select(DataFile.relpath).where(DataFile.relpath.in_(relpaths))))
    except Exception:  # noqa: BLE001 - database gone: leave the files to the sweeper
        return
    for relpath in relpaths:
        if relpath not in recorded:
            _unlink(root, relpath)


__all__ = [
    "DATATYPES", "SOURCEDATA", "ENTITY_ORDER", "PARTICIPANT_COLUMNS", "transaction", "participants_tsv",
    "write_participants_tsv", "add_participant", "update_participant", "add_session", "add_series",
    "add_derivative", "bids_stem_for", "bids_stem", "series_relpath", "derivative_relpath",
    "add_files", "register_series", "register_derivative", "replace_files", "remove",
]
