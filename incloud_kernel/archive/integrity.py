"""Keeping the archive root and its DataFile rows in agreement: sweep, verify, backup and restore.

- ``sweep`` clears what a crash leaves between "file renamed into place" and "row committed": stale
  ``.incloud-tmp-*`` files are deleted (they are never complete data) and files without a row are *moved to the
  site quarantine* (one entry per sweep, origin ``archive``, files kept under their relpath), not adopted. Why not adopt: the row carries
  what the path cannot (series, project, kind), and the writer that died never reported success, so its caller
  retries; an adopted file would make that retry fail with "already exists". Quarantine keeps the bytes for an
  operator, so nothing is lost. Only leftovers older than a grace period are touched, so a live writer's
  temp file or its just-renamed file (row about to commit) is left alone.
- ``verify`` re-hashes every recorded file and reports missing, extra and corrupt files.
- ``backup`` mirrors the archive to the backup root, incrementally by SHA-256, with a ``sha256sum``-style
  manifest; a corrupt archive copy never overwrites a good backup copy.
- ``restore`` brings back a lost or corrupt file from the backup, only after the backup copy's SHA-256 matches
  the row; the damaged copy is kept in the quarantine first (one entry per restore run).
- ``release_archive`` says what releasing such an entry means: an orphan goes back to its relpath only once a row
  records that path with the same SHA-256 (nothing else may be adopted, see above); a damaged copy is never
  released (the archive holds the good copy; purge it once investigated).

This module must never change or delete a DataFile row, never delete a file that has a row, never write a
file whose checksum differs from its row into the archive, and never put a patient-identifying value into a
message (it names relative paths, which hold internal labels only). All of it is site-admin work.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from sqlalchemy import select

from incloud_kernel.archive.models import DataFile
from incloud_kernel.archive.permissions import Actor, require_site_admin
from incloud_kernel.archive.projects import audit
from incloud_kernel.archive.storage import CHUNK, TMP_PREFIX, fsync_dir, safe_relpath, sha256_file
from incloud_kernel.db import transaction
from incloud_kernel.quarantine import Entry, Quarantine, ReleaseFailed
from incloud_kernel.errors import NotFound, StorageError, ValidationError
from incloud_kernel.site import Site

#: Called as ``progress(done, total)`` in bytes while hashing or copying, for a progress bar.
Progress = Callable[[int, int], None]
#: The backup root's manifest, in ``sha256sum`` format, so ``sha256sum -c`` can check a backup on its own.
MANIFEST = "incloud-backup.sha256"
#: Default age (seconds) a leftover must reach before ``sweep`` touches it: longer than any single write.
DEFAULT_GRACE_SECONDS = 3600


def _no_progress(_done: int, _total: int) -> None:
    return None


def _audit(site: Site, actor: Actor, action: str, object_type: str, object_id: str, **detail: object) -> None:
    """``projects.audit`` in a transaction of its own (these operations hold no database session)."""
    with transaction(site.engine) as db:
        audit(db, actor, action, object_type, object_id, **detail)


# ---------------------------------------------------------------------------------------------------------------
# What lives under the root
# ---------------------------------------------------------------------------------------------------------------

def is_dataset_metadata(rel: PurePosixPath) -> bool:
    """Dataset-level files that are written without a DataFile row and are therefore never "extra".

    Top-level files (``dataset_description.json``, ``participants.tsv``, ``README``, ``.bidsignore``...),
    a derivative dataset's own ``dataset_description.json``, and per-subject ``*_sessions.tsv/json`` and
    per-session ``*_scans.tsv/json`` tables. A row for such a file, if one exists, is still verified.
    """
    parts = rel.parts
    name = parts[-1]
    if len(parts) == 1:
        return True
    if parts[0] == "derivatives" and len(parts) == 3 and name == "dataset_description.json":
        return True
    if parts[0].startswith("sub-") and name.endswith(("_sessions.tsv", "_sessions.json", "_scans.tsv",
                                                      "_scans.json")):
        return True
    return False


@dataclass
class _DiskFile:
    rel: str
    path: Path
    size: int
    mtime: float


def _walk(root: Path) -> Iterator[_DiskFile]:
    """Every regular file under ``root`` (symlinks not followed), as a POSIX path relative to ``root``."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed while we walked
                continue
            yield _DiskFile(path.relative_to(root).as_posix(), path, st.st_size, st.st_mtime)


def _rows(site: Site) -> dict[str, tuple[int, str, int]]:
    """relpath -> (row id, sha256, size) for every DataFile of the site (an admin-only, archive-wide read)."""
    with transaction(site.engine) as db:
        return {rel: (fid, sha, size) for fid, rel, sha, size in
                db.execute(select(DataFile.id, DataFile.relpath, DataFile.sha256, DataFile.size))}


class ChecksumMismatch(StorageError):
    """A copy's SHA-256 differs from the recorded one; nothing was replaced."""


def _discard(tmp: Path) -> None:
    """Remove a temp file if possible; on a read-only or vanished folder there is nothing more to do."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def copy_verified(source: Path, dest_root: Path, rel: str, expected_sha256: str | None,
                  on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``source`` to ``dest_root/rel`` atomically, renaming into place only if its SHA-256 matches.

    Same temp-file, fsync, rename, fsync-folder sequence as ``storage.atomic_write``, with one difference:
    the digest is checked *before* the rename, so a mismatching copy never replaces what is there
    (``expected_sha256=None`` skips the check). Returns (sha256 hex, bytes). Raises StorageError on any OS
    error (disk full, read-only, permissions), with the temp file removed, and ChecksumMismatch (a StorageError)
    when the bytes read do not hash to ``expected_sha256``.
    """
    target = dest_root / rel
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"
    digest, size = hashlib.sha256(), 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            _discard(tmp)
            raise ChecksumMismatch(f"copy of {rel} does not match its recorded SHA-256; nothing was replaced")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        _discard(tmp)
        raise StorageError(f"cannot copy {rel} into {dest_root}: {exc.strerror or type(exc).__name__}") from None
    return digest.hexdigest(), size


def _hash(path: Path, on_bytes: Callable[[int], None]) -> str:
    """SHA-256 of a file, reporting each chunk read so a progress bar moves inside large files."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
            on_bytes(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class SweepReport:
    """What ``sweep`` did (or, with ``dry_run``, would do). Paths are relative to the archive root."""

    removed_temp: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    #: Leftovers younger than the grace period, left for their (possibly live) writer.
    too_recent: list[str] = field(default_factory=list)
    quarantine_dir: str | None = None
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sweep(site: Site, actor: Actor, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
          dry_run: bool = False) -> SweepReport:
    """Remove stale temp files and quarantine files that have no DataFile row (see the module docstring).

    ``grace_seconds`` (>= 0): only leftovers whose modification time is at least this old are touched.
    Raises PermissionDenied for non-admins and StorageError when the archive or quarantine cannot be written.
    """
    require_site_admin(actor, "sweep the archive")
    if grace_seconds < 0:
        raise ValidationError("grace period must be 0 seconds or more")
    root = site.archive_root
    if not root.is_dir():
        raise StorageError(f"archive root {root} does not exist: run 'incloud init'")
    report = SweepReport(dry_run=dry_run)
    cutoff = time.time() - grace_seconds
    rows = _rows(site)
    leftovers: list[tuple[str, _DiskFile]] = []
    for f in _walk(root):
        name = PurePosixPath(f.rel).name
        if name.startswith(TMP_PREFIX) or name.startswith(".incloud-write-probe-"):
            leftovers.append(("temp", f))
        elif f.rel not in rows and not is_dataset_metadata(PurePosixPath(f.rel)):
            leftovers.append(("orphan", f))
    quarantine, entry = Quarantine(site.config.quarantine), None
    for kind, f in leftovers:
        if f.mtime > cutoff:
            report.too_recent.append(f.rel)
            continue
        if kind == "orphan":
            # Re-check the row at the last moment: a writer may have committed since we listed rows.
            with transaction(site.engine) as db:
                if db.scalar(select(DataFile.id).where(DataFile.relpath == f.rel)) is not None:
                    continue
        if dry_run:
            (report.removed_temp if kind == "temp" else report.quarantined).append(f.rel)
            continue
        try:
            if kind == "temp":
                f.path.unlink(missing_ok=True)
                report.removed_temp.append(f.rel)
            else:
                if entry is None:
                    entry = quarantine.put("archive", [(f.path, f.rel)], reason="file without a database row",
                                           step="sweep", source="archive sweep", release={"kind": "orphan"},
                                           move=True)
                else:
                    quarantine.add(entry, f.path, f.rel, move=True)
                report.quarantined.append(f.rel)
                report.quarantine_dir = str(entry.files_dir)
        except OSError as exc:
            raise StorageError(f"cannot sweep {f.rel}: {exc.strerror or type(exc).__name__}") from None
    if not dry_run and (report.removed_temp or report.quarantined):
        _audit(site, actor, "archive.sweep", "archive", "root", removed_temp=len(report.removed_temp),
               quarantined=len(report.quarantined))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """Result of re-hashing the archive. ``consistent`` when nothing is missing, extra or corrupt.

    ``temp`` lists in-flight or stale ``.incloud-tmp-*`` files (never data; ``sweep`` removes stale ones);
    they do not make the archive inconsistent because no reader ever sees them under a final name.
    """

    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.missing or self.extra or self.corrupt)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "consistent": self.consistent}

    def summary(self) -> str:
        return (f"{self.checked} files checked ({self.bytes} bytes): {len(self.missing)} missing, "
                f"{len(self.extra)} extra, {len(self.corrupt)} corrupt, {len(self.temp)} temp")


def verify(site: Site, actor: Actor, *, progress: Progress | None = None) -> VerifyReport:
    """Re-hash every recorded file; list files without a row (``extra``) and rows without a file (``missing``).

    A file whose size or SHA-256 differs from its row, or that cannot be read, is ``corrupt``. Files modified
    after verification started are not called extra (a writer may be about to commit their row).
    Raises PermissionDenied for non-admins and StorageError when the archive root is absent.
    """
    require_site_admin(actor, "verify the archive")
    progress = progress or _no_progress
    root = site.archive_root
    if not root.is_dir():
        raise StorageError(f"archive root {root} does not exist: run 'incloud init'")
    started = time.time()
    rows = _rows(site)
    report = VerifyReport()
    on_disk: dict[str, _DiskFile] = {}
    for f in _walk(root):
        name = PurePosixPath(f.rel).name
        if name.startswith(TMP_PREFIX):
            report.temp.append(f.rel)
        elif f.rel in rows:
            on_disk[f.rel] = f
        elif not is_dataset_metadata(PurePosixPath(f.rel)) and f.mtime < started:
            report.extra.append(f.rel)
    total = sum(size for _id, _sha, size in rows.values())
    done = 0
    progress(0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    for rel in sorted(rows):
        _fid, sha, size = rows[rel]
        f = on_disk.get(rel)
        report.checked += 1
        start = done
        if f is None:
            report.missing.append(rel)
        elif f.size != size:
            report.corrupt.append(rel)
        else:
            try:
                if _hash(f.path, advance) != sha:
                    report.corrupt.append(rel)
            except OSError:
                report.corrupt.append(rel)
            report.bytes += f.size
        done = start + size
        progress(done, total)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Backup
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class BackupReport:
    """What ``backup`` copied. ``corrupt_source``/``missing_source``: archive files that could not be backed
    up because they no longer match their row (the backup keeps its earlier good copy)."""

    backup_root: str = ""
    copied: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_copied: int = 0
    corrupt_source: list[str] = field(default_factory=list)
    missing_source: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.corrupt_source or self.missing_source)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "complete": self.complete}


def read_manifest(backup_root: Path) -> dict[str, str]:
    """relpath -> sha256 from the backup manifest (empty when there is none yet)."""
    path = backup_root / MANIFEST
    entries: dict[str, str] = {}
    if not path.is_file():
        return entries
    for line in path.read_text().splitlines():
        sha, sep, rel = line.partition("  ")
        if sep and len(sha) == 64:
            entries[rel] = sha
    return entries


def _write_manifest(backup_root: Path, entries: dict[str, str]) -> None:
    from incloud_kernel.archive.storage import atomic_write

    text = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(entries.items()))
    atomic_write(backup_root, MANIFEST, text.encode(), overwrite=True)


def _check_roots(archive: Path, backup: Path) -> None:
    a, b = archive.resolve(), backup.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise StorageError(f"backup root {backup} and archive root {archive} must not contain each other")


def backup(site: Site, actor: Actor, *, full: bool = False, progress: Progress | None = None,
           backup_root: Path | None = None) -> BackupReport:
    """Mirror the archive root to the backup root, copying only what changed (by SHA-256).

    ``backup_root``: where to mirror (default ``storage.backup_root``); ``incloud backup create DIR`` passes
    its DIR so the files and the database dump of one site backup sit side by side.

    A recorded file is skipped when the manifest holds its row's SHA-256 and the backup copy has the row's
    size (``full=True`` re-hashes every backup copy instead). Every copied file is hashed while copying and
    must match its row before it replaces the backup copy. Dataset-level files (no row) are copied when their
    hash changed. Files removed from the archive are kept in the backup (a backup never loses data).
    Raises PermissionDenied for non-admins, StorageError when a root is unusable or full.
    """
    require_site_admin(actor, "back up the archive")
    progress = progress or _no_progress
    root, broot = site.archive_root, backup_root or site.config.backup_root
    if not root.is_dir():
        raise StorageError(f"archive root {root} does not exist: run 'incloud init'")
    _check_roots(root, broot)
    try:
        broot.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"backup root {broot} is not writable: {exc.strerror or type(exc).__name__}") from None
    report = BackupReport(backup_root=str(broot))
    manifest = read_manifest(broot)
    rows = _rows(site)
    work: list[tuple[str, str | None, int]] = [(rel, sha, size) for rel, (_id, sha, size) in sorted(rows.items())]
    for f in _walk(root):
        rel = PurePosixPath(f.rel)
        if f.rel not in rows and is_dataset_metadata(rel) and not rel.name.startswith("."):
            work.append((f.rel, None, f.size))
    total, done = sum(size for _r, _s, size in work), 0
    progress(0, total)
    try:
        for rel, sha, size in work:
            src, dst = root / rel, broot / rel
            if sha is None:  # dataset-level file: compare by its current hash
                sha = sha256_file(src)
                if manifest.get(rel) == sha and dst.is_file() and dst.stat().st_size == size:
                    report.unchanged += 1
                else:
                    copy_verified(src, broot, rel, sha)
                    manifest[rel] = sha
                    report.copied.append(rel)
                    report.bytes_copied += size
            elif (not full and manifest.get(rel) == sha and dst.is_file() and dst.stat().st_size == size) or (
                    full and dst.is_file() and sha256_file(dst) == sha):
                manifest[rel] = sha
                report.unchanged += 1
            elif not src.is_file():
                report.missing_source.append(rel)
            elif dst.is_file() and rel not in manifest and sha256_file(dst) == sha:
                manifest[rel] = sha  # copied by an interrupted earlier run
                report.unchanged += 1
            else:
                try:
                    copy_verified(src, broot, rel, sha)
                except ChecksumMismatch:
                    report.corrupt_source.append(rel)
                else:
                    manifest[rel] = sha
                    report.copied.append(rel)
                    report.bytes_copied += size
            done += size
            progress(done, total)
    finally:
        _write_manifest(broot, manifest)
    _audit(site, actor, "archive.backup", "archive", "root", copied=len(report.copied),
           corrupt_source=len(report.corrupt_source), missing_source=len(report.missing_source))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class RestoreReport:
    """Per-file outcome of ``restore``; ``failed`` holds (relpath, one-line reason)."""

    restored: list[str] = field(default_factory=list)
    already_ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    quarantine_dir: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["failed"] = [{"relpath": r, "reason": why} for r, why in self.failed]
        return {**d, "complete": self.complete}


def restore(site: Site, actor: Actor, relpaths: list[str] | None = None, *,
            progress: Progress | None = None, backup_root: Path | None = None) -> RestoreReport:
    """Bring back lost or corrupt recorded files from the backup root.

    ``relpaths``: paths relative to the archive root (each must have a DataFile row); ``None`` restores every
    file that is missing or does not match its row. A backup copy is used only if its SHA-256 equals the row's;
    a corrupt archive copy is first copied to ``<quarantine>/corrupt/<stamp>/`` and then replaced atomically.
    Raises ValidationError for unsafe paths (``..``, absolute), NotFound for a path without a row,
    PermissionDenied for non-admins, StorageError when the archive root cannot be written (read-only, full).
    """
    require_site_admin(actor, "restore archive files")
    progress = progress or _no_progress
    root, broot = site.archive_root, backup_root or site.config.backup_root
    rows = _rows(site)
    if relpaths is None:
        targets = sorted(rows)
    else:
        targets = []
        for text in relpaths:
            rel = safe_relpath(text).as_posix()
            if rel not in rows:
                raise NotFound(f"no archive file is recorded at {rel}")
            targets.append(rel)
    report = RestoreReport()
    quarantine, entry = Quarantine(site.config.quarantine), None
    total, done = sum(rows[r][2] for r in targets), 0
    progress(0, total)
    for rel in targets:
        fid, sha, size = rows[rel]
        path = root / rel
        if path.is_file() and path.stat().st_size == size and sha256_file(path) == sha:
            if relpaths is not None:
                report.already_ok.append(rel)
        else:
            copy = broot / rel
            if not copy.is_file():
                report.failed.append((rel, "no backup copy"))
            elif copy.stat().st_size != size or sha256_file(copy) != sha:
                report.failed.append((rel, "backup copy does not match the recorded SHA-256"))
            else:
                if path.is_file():  # keep the damaged bytes for whoever investigates
                    if entry is None:
                        entry = quarantine.put("archive", [(path, rel)], reason="damaged archive copy",
                                               step="restore", source="archive restore",
                                               release={"kind": "damaged"})
                    else:
                        quarantine.add(entry, path, rel)
                    report.quarantine_dir = str(entry.files_dir)
                copy_verified(copy, root, rel, sha)
                report.restored.append(rel)
                _audit(site, actor, "archive.restore", "data_file", str(fid), relpath=rel)
        done += size
        progress(done, total)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Release from the quarantine
# ---------------------------------------------------------------------------------------------------------------

def release_archive(site: Site, actor: Actor, entry: Entry) -> str:
    """Put a swept orphan back at its relpath, only when a row now records that path with the file's SHA-256.

    That happens when the writer's commit landed after the sweep, or an operator recorded the file; anything
    else would adopt a file without a row (see the module docstring). A damaged copy (from ``restore``) is
    never put back. Raises ReleaseFailed (value-free reason, the entry stays) and PermissionDenied.
    """
    require_site_admin(actor, "release archive files from the quarantine")
    if entry.release.get("kind") != "orphan":
        raise ReleaseFailed("a damaged copy is never put back (the archive holds the restored one): purge it")
    rows = _rows(site)
    for held in entry.files:
        row = rows.get(held.name)
        if row is None or row[1] != held.sha256:
            raise ReleaseFailed(f"no row records {held.name} with this content: nothing to put back, purge it")
        if (site.archive_root / held.name).exists():
            raise ReleaseFailed(f"{held.name} exists in the archive again: purge the entry")
    for held in entry.files:
        copy_verified(entry.files_dir / held.name, site.archive_root, held.name, held.sha256)
    _audit(site, actor, "archive.release", "quarantine", entry.id, files=len(entry.files))
    return f"put {len(entry.files)} file(s) back into the archive"
