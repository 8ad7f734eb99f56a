"""The site quarantine: one folder layout and one record format for everything kept out of the archive or an output.

Four producers hold data back here: ingest (a study whose chain failed, instances de-identification held back),
``incloud deid`` (files that could not be de-identified), ``incloud deface`` (images that could not be refaced
safely, face intact) and the archive sweeper / restore (files without a row, damaged copies). Each entry is
``<root>/<id>/`` with ``files/`` (the held bytes, often identified data) and ``record.json``, written last (its
presence means the entry is complete). ``incloud quarantine list|show|release|purge`` works on all of them.

Never: a header value in a record, a reason or a listing (reasons are value-free codes from the producers); a
folder other than 0700 or a file other than 0600 (they hold identified originals); an entry removed without an
audit event (``release`` and ``purge`` audit, see ``cli/quarantine.py``).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from incloud_kernel.archive.storage import sha256_file, write_synced
from incloud_kernel.errors import IncloudError, NotFound, StorageError, ValidationError
from incloud_kernel.site import private_dir

#: Version tag of ``record.json``; a reader refuses formats it does not know rather than guessing.
FORMAT = "incloud-quarantine/1"
RECORD = "record.json"
FILES = "files"
#: Who put an entry here. What ``release`` means differs per origin (docs/security.md, ``incloud quarantine``):
#: ingest: re-ingest into the entry's project; deid: de-identify again into the recorded output folder;
#: deface: reface again into the recorded output; archive: put a file back only once a row records it.
ORIGINS = ("ingest", "deid", "deface", "archive")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ReleaseFailed(IncloudError):
    """Re-running an entry's chain failed again; ``reason`` is the new value-free code. The entry stays."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"release failed again: {reason}")
        self.reason = " ".join(reason.split())


@dataclass(frozen=True)
class HeldFile:
    """One held file: ``name`` is its path under the entry's ``files/`` (POSIX, relative, no ``..``)."""

    name: str
    size: int
    sha256: str


@dataclass
class Entry:
    """One quarantine entry as recorded in ``record.json`` (``path`` is its folder, not recorded).

    ``release`` holds what re-running needs, per origin: ``project`` (ingest), ``out``/``options``/
    ``allow_burned_in`` (deid), ``out`` and per-file ``targets`` (deface, archive). ``attempts`` lists earlier
    releases that failed (when, who, the new value-free reason), so a reviewer sees what was tried.
    """

    id: str
    origin: str
    step: str
    reason: str
    source: str
    created: float
    files: list[HeldFile]
    release: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    path: Path = Path()

    @property
    def files_dir(self) -> Path:
        return self.path / FILES

    def paths(self) -> list[Path]:
        """The held files on disk, in recorded order."""
        return [self.files_dir / f.name for f in self.files]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return {"format": FORMAT, **d}

    @classmethod
    def from_record(cls, data: dict[str, Any], path: Path) -> Entry:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown quarantine record format {data.get('format')!r}")
        return cls(id=str(data["id"]), origin=str(data["origin"]), step=str(data["step"]),
                   reason=str(data["reason"]), source=str(data["source"]), created=float(data["created"]),
                   files=[HeldFile(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in data["files"]],
                   release=dict(data.get("release") or {}), attempts=list(data.get("attempts") or []), path=path)


def new_id(origin: str) -> str:
    """A fresh entry id: origin, UTC time and a random part (sortable, unique across processes)."""
    return f"{origin}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def check_id(entry_id: str) -> str:
    if not isinstance(entry_id, str) or not _ID.fullmatch(entry_id):
        raise ValidationError(f"not a quarantine entry id: {entry_id!r}")
    return entry_id


def _held_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts):
        raise ValidationError(f"unsafe name for a held file: {name!r}")
    return rel


def _write_private(dest: Path, source: Path | bytes, *, move: bool) -> HeldFile:
    """Copy (or move) ``source`` to ``dest`` as a 0600 file, fsynced; returns its size and SHA-256 (name unset)."""
    private_dir(dest.parent)
    if move and isinstance(source, Path):
        try:
            os.replace(source, dest)
            os.chmod(dest, 0o600)
            return HeldFile("", dest.stat().st_size, sha256_file(dest))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    digest, size = write_synced(dest, source)
    if move and isinstance(source, Path):
        source.unlink()
    return HeldFile("", size, digest)


def _write_record(entry: Entry) -> None:
    tmp = entry.path / f".{RECORD}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(entry.to_record(), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, entry.path / RECORD)


class Quarantine:
    """The quarantine folder of a site (``storage.quarantine``) or one a user named (``incloud deface --quarantine``).

    All methods raise StorageError (one line, no header value) when the folder cannot be written.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, origin: str, files: Iterable[tuple[Path | bytes, str]], *, reason: str, step: str, source: str,
            release: dict[str, Any] | None = None, entry_id: str | None = None, move: bool = False) -> Entry:
        """Hold ``files`` (pairs of a path or bytes and the name to keep it under) in a new entry; returns it.

        ``reason``, ``step`` and ``source`` must be value-free (codes, internal ids, ``orthanc:<id>``, ``path``).
        ``move`` moves path sources instead of copying (the sweeper's orphans). Putting an ``entry_id`` that is
        already complete adds nothing and returns the existing entry (a retried job quarantines once).
        """
        if origin not in ORIGINS:
            raise ValidationError(f"unknown quarantine origin {origin!r}")
        entry_id = check_id(entry_id or new_id(origin))
        target = self.root / entry_id
        if (target / RECORD).is_file():
            return self.get(entry_id)
        held: list[HeldFile] = []
        try:
            private_dir(self.root)
            private_dir(target / FILES)
            for source_item, name in files:
                rel = _held_name(name)
                h = _write_private(target / FILES / rel, source_item, move=move)
                held.append(HeldFile(rel.as_posix(), h.size, h.sha256))
            entry = Entry(id=entry_id, origin=origin, step=step, reason=" ".join(reason.split()), source=source,
                          created=time.time(), files=held, release=dict(release or {}), path=target)
            _write_record(entry)
        except OSError as exc:
            raise StorageError(f"cannot quarantine {entry_id} in {self.root}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        return entry

    def add(self, entry: Entry, source: Path | bytes, name: str, *, move: bool = False) -> Entry:
        """Hold one more file in ``entry`` (a producer that finds its files one at a time: the sweeper, restore)."""
        try:
            rel = _held_name(name)
            h = _write_private(entry.files_dir / rel, source, move=move)
            entry.files.append(HeldFile(rel.as_posix(), h.size, h.sha256))
            _write_record(entry)
        except OSError as exc:
            raise StorageError(f"cannot quarantine into {entry.id}: {exc.strerror or type(exc).__name__}") from None
        return entry

    def entries(self, origin: str | None = None) -> list[Entry]:
        """Every complete entry, oldest first (an entry without ``record.json`` is still being written)."""
        found: list[Entry] = []
        if not self.root.is_dir():
            return found
        for record in self.root.glob(f"*/{RECORD}"):
            try:
                entry = Entry.from_record(json.loads(record.read_text(encoding="utf-8")), record.parent)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if origin is None or entry.origin == origin:
                found.append(entry)
        return sorted(found, key=lambda e: (e.created, e.id))

    def unrecorded(self) -> list[str]:
        """Folders of the root without a record: an entry being written, or data left in an older layout (before
        this format: ``<date>/``, ``orphans/``, ``corrupt/``, ``<job>/reason.json``). Listed so nothing is
        overlooked; never deleted by this module."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not (p / RECORD).is_file())

    def get(self, entry_id: str) -> Entry:
        """The entry ``entry_id``; raises NotFound."""
        path = self.root / check_id(entry_id)
        try:
            return Entry.from_record(json.loads((path / RECORD).read_text(encoding="utf-8")), path)
        except FileNotFoundError:
            raise NotFound(f"no quarantine entry {entry_id} in {self.root}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"quarantine entry {entry_id} has an unreadable record ({type(exc).__name__})") from None

    def note_attempt(self, entry: Entry, *, by: str, reason: str) -> Entry:
        """Record a failed release (who, when, the new value-free reason); the entry stays."""
        entry.attempts.append({"at": time.time(), "by": by, "reason": " ".join(reason.split())})
        entry.reason = " ".join(reason.split())
        try:
            _write_record(entry)
        except OSError as exc:
            raise StorageError(f"cannot update quarantine entry {entry.id}: {exc.strerror or type(exc).__name__}") from None
        return entry

    def remove(self, entry: Entry) -> None:
        """Delete the entry and its files (after a release succeeded or a purge was audited)."""
        try:
            (entry.path / RECORD).unlink(missing_ok=True)  # first: a half-deleted entry is never listed as complete
            shutil.rmtree(entry.path)
        except OSError as exc:
            raise StorageError(f"cannot remove quarantine entry {entry.id}: {exc.strerror or type(exc).__name__}") from None


def check_outside(quarantine: Path, output: Path) -> None:
    """Refuse a quarantine inside ``output`` (or the reverse): face-intact or identified originals must never end
    up in the tree a user hands on. Raises ValidationError."""
    q, o = quarantine.resolve(), output.resolve()
    if q == o or o in q.parents or q in o.parents:
        raise ValidationError(f"the quarantine {quarantine} must not be inside or around the output {output}")
