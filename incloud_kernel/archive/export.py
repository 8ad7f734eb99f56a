"""Export one project from the archive as a stand-alone, valid BIDS dataset in an empty folder.

The export holds exactly the project's recorded files (each copied and checked against its SHA-256), plus
what makes it a dataset of its own: ``dataset_description.json``, ``README``, ``CHANGES``,
``participants.tsv``/``.json`` with the pseudonymous research attributes, ``sub-*_sessions.tsv``/``.json`` and,
for an image without one, a JSON sidecar built from its series' scan parameters.
It must never read outside the permission layer (the actor needs ``read`` on the project), never write into a
non-empty folder or inside the archive or backup roots, never export a file that no longer matches its row,
and never export an identity or a scan date (sessions carry the age at scan instead).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, TypeVar

from incloud_kernel import __version__
from incloud_kernel.archive import permissions as perm
from incloud_kernel.archive.integrity import ChecksumMismatch, Progress, copy_verified
from incloud_kernel.archive.models import DataFile, Participant, Project, Series, Session
from incloud_kernel.archive.records import SOURCEDATA
from incloud_kernel.archive.storage import check_label, safe_relpath
from incloud_kernel.errors import StorageError, ValidationError
from incloud_kernel.db import transaction
from incloud_kernel.site import Site

#: BIDS version the export declares (bids-validator 1.15 knows it).
BIDS_VERSION = "1.9.0"
SOURCEDATA_README = (b"Series that no BIDS naming rule of the site named (field maps, localizers, CT, PET, reports...),\n"
                     b"as de-identified DICOM (<name>.dicom/) and, where dcm2niix could convert them, NIfTI + JSON.\n"
                     b"Named sub-<p>_ses-<s>_acq-series<SeriesNumber>_<Modality>. Archived by INCloud's ingest chain.\n")

#: BIDS sidecar fields copied from ``Series.params`` when a series has no JSON file of its own. ``params`` use
#: BIDS names and units (seconds, degrees, tesla), as ``records.add_series`` documents.
SIDECAR_FIELDS: tuple[str, ...] = (
    "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "SliceThickness", "SliceTiming",
    "PhaseEncodingDirection", "EffectiveEchoSpacing", "TotalReadoutTime", "Manufacturer",
    "ManufacturersModelName", "MagneticFieldStrength", "TaskName",
)

#: participants.tsv columns after participant_id: (column, Participant attribute, participants.json entry).
PARTICIPANT_COLUMNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sex", "sex", {"Description": "sex of the participant",
                    "Levels": {"M": "male", "F": "female", "O": "other"}}),
    ("birth_year", "birth_year", {"Description": "year of birth", "Units": "year"}),
    ("handedness", "handedness", {"Description": "handedness of the participant",
                                  "Levels": {"R": "right", "L": "left", "A": "ambidextrous"}}),
    ("education_years", "education_years", {"Description": "years of formal education", "Units": "year"}),
    ("diagnosis", "diagnosis", {"Description": "diagnosis categories, separated by ';'"}),
    ("first_episode", "first_episode", {"Description": "whether the diagnosis is a first episode",
                                        "Levels": {"yes": "first episode", "no": "not a first episode"}}),
    ("medication", "medication", {"Description": "medication category as recorded in the archive"}),
    ("follow_up", "follow_up", {"Description": "whether the participant is in follow-up",
                                "Levels": {"yes": "in follow-up", "no": "not in follow-up"}}),
)

T = TypeVar("T")


@dataclass
class ExportReport:
    """What was exported, for the CLI and for scripts (``--json``)."""

    project: str
    dest: str
    participants: int = 0
    sessions: int = 0
    files: int = 0
    bytes: int = 0
    sidecars_written: int = 0
    #: Participants of the project without any recorded raw file (left out: BIDS lists only present subjects).
    participants_without_data: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _all(lister: Callable[..., perm.Page[T]], db: Any, actor: perm.Actor, project: Project) -> Iterator[T]:
    """Every row of a permission-filtered listing, page by page."""
    page = 1
    while True:
        result = lister(db, actor, project=project.id, page=page, page_size=perm.MAX_PAGE_SIZE)
        yield from result.items
        if not result.has_more:
            return
        page += 1


def _cell(value: Any) -> str:
    """One TSV cell: ``n/a`` for unknown, yes/no for flags, no tabs or newlines."""
    if value is None or value == "" or value == []:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        value = ";".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return " ".join(str(value).split())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def _sidecar(series: Series) -> dict[str, Any]:
    """A BIDS JSON sidecar from the series' scan parameters (already in BIDS units)."""
    params = series.params or {}
    out: dict[str, Any] = {}
    for name in SIDECAR_FIELDS:
        if params.get(name) is not None:
            out[name] = params[name]
    task = (series.entities or {}).get("task")
    if series.suffix == "bold" and "TaskName" not in out and task:
        out["TaskName"] = task
    return out


def _check_dest(site: Site, dest: Path) -> bool:
    """Refuse a non-empty folder, a file, or a place inside the archive or backup roots; True if we create it."""
    dest = dest.expanduser()
    resolved = dest.resolve()
    for root, what in ((site.archive_root, "archive root"), (site.config.backup_root, "backup root")):
        r = root.resolve()
        if resolved == r or r in resolved.parents:
            raise ValidationError(f"export destination {dest} is inside the {what}")
    if dest.exists():
        if not dest.is_dir():
            raise ValidationError(f"export destination {dest} is not a folder")
        if any(dest.iterdir()):
            raise ValidationError(f"export destination {dest} is not empty; export needs an empty or new folder")
        return False
    return True


def _write(dest: Path, rel: str, data: bytes) -> None:
    from incloud_kernel.archive.storage import atomic_write

    atomic_write(dest, rel, data)


def export_bids(site: Site, actor: perm.Actor, project: str | int, dest: Path, *,
                progress: Progress | None = None) -> ExportReport:
    """Write project ``project`` (code or id) as a BIDS dataset into ``dest`` (new or empty folder).

    Needs ``read`` on the project (NotFound/PermissionDenied otherwise). Raises ValidationError for a
    non-BIDS-safe project code or a non-empty/unsafe destination, StorageError when the destination cannot
    be written (read-only, full) or an archive file is missing or no longer matches its SHA-256. On any
    failure everything the export wrote is removed again; the archive itself is only read.
    """
    if isinstance(project, str):
        check_label(project, "project code")
    created = _check_dest(site, Path(dest))
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create export destination {dest}: "
                           f"{exc.strerror or type(exc).__name__}") from None
    try:
        return _export(site, actor, project, dest, progress)
    except BaseException:
        # Only what this export wrote is there: the folder was new or empty.
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        elif dest.is_dir():
            for child in dest.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise


def _export(site: Site, actor: perm.Actor, project_ref: str | int, dest: Path,
            progress: Progress | None) -> ExportReport:
    with transaction(site.engine) as db:
        project = perm.require(db, actor, project_ref, perm.Action.read)
        participants = list(_all(perm.list_participants, db, actor, project))
        sessions = list(_all(perm.list_sessions, db, actor, project))
        series = {s.id: s for s in _all(perm.list_series, db, actor, project)}
        files: list[DataFile] = list(_all(perm.list_files, db, actor, project))
        db.expunge_all()
    report = ExportReport(project=project.code, dest=str(dest))
    root = site.archive_root

    # Which subjects and sessions have raw data: only those appear in the dataset.
    present_subjects: set[str] = set()
    present_sessions: set[tuple[str, str]] = set()
    for f in files:
        parts = safe_relpath(f.relpath).parts
        if parts[0].startswith("sub-"):
            present_subjects.add(parts[0][4:])
            if len(parts) > 2 and parts[1].startswith("ses-"):
                present_sessions.add((parts[0][4:], parts[1][4:]))
    if not present_subjects:
        raise ValidationError(f"project {project.code} has no recorded images to export")

    total, done = sum(f.size for f in files), 0
    if progress:
        progress(0, total)
    for f in files:
        def advance(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)
        try:
            copy_verified(root / f.relpath, dest, f.relpath, f.sha256, advance)
        except ChecksumMismatch:
            raise StorageError(f"archive file {f.relpath} no longer matches its recorded SHA-256: run "
                               f"'incloud archive verify' and 'incloud archive restore'") from None
        report.files += 1
        report.bytes += f.size

    # Sidecars for images whose series has none.
    by_series: dict[int, list[str]] = {}
    for f in files:
        if f.series_id is not None:
            by_series.setdefault(f.series_id, []).append(f.relpath)
    for sid, paths in by_series.items():
        names = set(paths)
        for rel in paths:
            for ext in (".nii.gz", ".nii"):
                if rel.endswith(ext) and rel[: -len(ext)] + ".json" not in names and sid in series:
                    _write(dest, rel[: -len(ext)] + ".json", _json_bytes(_sidecar(series[sid])))
                    report.sidecars_written += 1

    # BIDS: a README SHOULD be at the root of sourcedata/ (series no naming rule covered; see docs/ingest.md).
    if any(f.relpath.startswith(f"{SOURCEDATA}/") for f in files):
        _write(dest, f"{SOURCEDATA}/README", SOURCEDATA_README)

    # Derivative datasets need their own description.
    for top in sorted({PurePosixPath(f.relpath).parts[1] for f in files
                       if f.relpath.startswith("derivatives/") and len(PurePosixPath(f.relpath).parts) > 2}):
        rel = f"derivatives/{top}/dataset_description.json"
        if (root / rel).is_file():
            copy_verified(root / rel, dest, rel, None)
        else:
            _write(dest, rel, _json_bytes({"Name": top, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                                           "GeneratedBy": [{"Name": top}]}))

    # participants.tsv / .json
    by_label = {p.label: p for p in participants}
    report.participants_without_data = sum(1 for p in participants if p.label not in present_subjects)
    lines = ["\t".join(["participant_id"] + [c for c, _a, _d in PARTICIPANT_COLUMNS])]
    for label in sorted(present_subjects):
        p: Participant | None = by_label.get(label)
        lines.append("\t".join([f"sub-{label}"] + [_cell(getattr(p, attr, None)) for _c, attr, _d in
                                                   PARTICIPANT_COLUMNS]))
        report.participants += 1
    _write(dest, "participants.tsv", ("\n".join(lines) + "\n").encode())
    _write(dest, "participants.json", _json_bytes(
        {"participant_id": {"Description": "pseudonymous participant label (no identity)"},
         **{c: d for c, _a, d in PARTICIPANT_COLUMNS}}))

    # sub-*_sessions.tsv / .json: session label and age at scan (never the scan date).
    participant_label = {p.id: p.label for p in participants}
    per_subject: dict[str, list[Session]] = {}
    for s in sessions:
        label = participant_label.get(s.participant_id)
        if label is not None and (label, s.label) in present_sessions:
            per_subject.setdefault(label, []).append(s)
    for label, rows in sorted(per_subject.items()):
        text = "session_id\tage\n" + "".join(f"ses-{s.label}\t{_cell(s.age_at_scan)}\n"
                                            for s in sorted(rows, key=lambda s: s.label))
        _write(dest, f"sub-{label}/sub-{label}_sessions.tsv", text.encode())
        _write(dest, f"sub-{label}/sub-{label}_sessions.json", _json_bytes(
            {"session_id": {"Description": "visit label"},
             "age": {"Description": "age of the participant at the scan", "Units": "year"}}))
        report.sessions += len(rows)

    # Dataset-level description, README and CHANGES.
    today = datetime.now(timezone.utc).date().isoformat()
    _write(dest, "dataset_description.json", _json_bytes({
        "Name": project.name or project.code,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "n/a (set by the project owners)",
        "Authors": [f"INCloud project {project.code}"],
        "GeneratedBy": [{"Name": "INCloud", "Version": __version__,
                         "Description": f"export of project {project.code}"}],
    }))
    readme = (f"# {project.name or project.code}\n\n"
              f"BIDS export of INCloud project {project.code}, made {today}.\n\n"
              f"{project.description or 'No project description was recorded.'}\n\n"
              f"{report.participants} participants, {report.sessions} sessions, {report.files} recorded files.\n"
              "Participants are known by pseudonymous labels only; sessions carry the age at scan, not dates.\n")
    _write(dest, "README", readme.encode())
    _write(dest, "CHANGES", f"1.0.0 {today}\n  - Exported from INCloud project {project.code}.\n".encode())
    return report
