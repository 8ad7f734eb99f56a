"""Edge scrubbing: leave no identified remnant in Orthanc's SQLite index once the DICOM edge holds nothing.

Why this exists: Orthanc (1.10, embedded SQLite index) deletes a study's rows when the ingest worker deletes the
study, but SQLite keeps the deleted rows' bytes in free pages, in the unused space of live pages and in the
write-ahead log (``index-wal``) until the file is rebuilt; Orthanc sets no ``secure_delete``, never runs VACUUM,
and holds the file with ``locking_mode=EXCLUSIVE`` while it runs (nobody else can open it). So the supervisor
stops Orthanc when it is empty and idle, rebuilds the index with ``VACUUM`` here, and starts Orthanc again.

VACUUM, not deleting the files: it keeps every live row (a study that slipped in just before the stop stays,
nothing is lost) and the change sequence (``sqlite_sequence``), which the ingest worker's cursor follows; a new
index would restart ``/changes`` at 1 behind the cursor. This module must never be used on an index an Orthanc
process has open, and never logs a value read from the index (it reads only counts).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: SQLite's side files of a database (WAL, shared memory, rollback journal): all go once the index is rebuilt.
SIDE_FILES = ("-wal", "-shm", "-journal")


class ScrubError(Exception):
    """The index could not be rebuilt (locked by a running Orthanc, unreadable, disk full); nothing was lost."""


def vacuum_index(index_file: Path) -> bool:
    """Rebuild Orthanc's stopped SQLite index so that no deleted row survives in it or beside it.

    Returns False when there is no index yet. ``secure_delete`` zeroes what the rebuild frees, the temporary
    copy stays in memory (no temp file), and switching the journal mode to DELETE checkpoints and removes the
    WAL (Orthanc turns WAL on again when it opens the index). Raises ScrubError (one line, no value) on failure.
    """
    if not index_file.exists():
        return False
    try:
        with closing(sqlite3.connect(index_file, timeout=0, isolation_level=None)) as db:
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise ScrubError(f"cannot compact Orthanc's index {index_file}: {exc.__class__.__name__}") from None
    for suffix in SIDE_FILES:
        index_file.with_name(index_file.name + suffix).unlink(missing_ok=True)
    return True


def index_state(index_file: Path) -> tuple[int, int]:
    """(last change sequence number, resource rows) of a stopped Orthanc's index; (0, 0) when there is none.

    The sequence number is the one ``GET /changes?last`` reports (Orthanc reads it from ``sqlite_sequence``:
    it survives the deletion of the changes' rows), so the supervisor knows where the feed stands before Orthanc
    answers, and a study stored and deleted before its first look still counts as held.
    """
    if not index_file.exists():
        return 0, 0
    try:
        with closing(sqlite3.connect(f"file:{index_file}?mode=ro", uri=True, timeout=0)) as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'Changes'").fetchone()
            resources = db.execute("SELECT COUNT(*) FROM Resources").fetchone()[0]
    except sqlite3.Error as exc:
        raise ScrubError(f"cannot read Orthanc's index {index_file}: {exc.__class__.__name__}") from None
    return (int(row[0]) if row else 0), int(resources)


@dataclass
class EdgeActivity:
    """Whether the edge is due for a scrub: it has held something since the last scrub, it is empty now, and
    nothing changed (no instance received or deleted) for ``quiet`` seconds.

    ``observe`` takes Orthanc's last change sequence number (``GET /changes?last``, which grows with every
    instance received and does not move on deletion) and its resource count (``GET /statistics``).
    """

    quiet: float
    last_seq: int | None = None
    resources: int = 0
    held: bool = False
    changed_at: float = field(default_factory=time.monotonic)

    def observe(self, seq: int, resources: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if (seq, resources) != (self.last_seq, self.resources):
            self.changed_at = now
        if resources or (self.last_seq is not None and seq != self.last_seq):
            self.held = True
        self.last_seq, self.resources = seq, resources

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.held and self.resources == 0 and now - self.changed_at >= self.quiet

    def unchanged(self, seq: int, resources: int) -> bool:
        """True when a fresh look matches the last one (the check right before stopping Orthanc)."""
        return (seq, resources) == (self.last_seq, self.resources)

    def scrubbed(self) -> None:
        self.held = False
        self.changed_at = time.monotonic()
