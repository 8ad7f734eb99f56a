"""One site backup: the metadata database and the archive's files, taken together so that they agree.

Why logical dumps (``pg_dump -Fc``) and not a base backup with WAL archiving: the archive's files are mirrored
once per run anyway, so a point-in-time database recovery finer than that run would bring back rows whose files
the backup does not hold; a dump taken in the same run as the file mirror is the consistent pair. A dump also
restores into any newer PostgreSQL major version and into a fresh, empty database without a matching cluster
(the restore drill and an upgrade need exactly that), and needs no archive_command infrastructure. SQLite sites
are copied with the sqlite3 online backup API (a consistent copy while writers keep working).

Consistency: on PostgreSQL the dump runs in a snapshot exported by a REPEATABLE READ transaction that also
reads every ``data_file`` row, so the list of (relpath, SHA-256) checked against the mirror is exactly the
dump's. Files are written before their rows commit, so every row of the dump has its file in the archive when
the mirror runs; a file replaced or removed between the dump and the mirror is reported (``changed``) and the
run exits non-zero, so a scheduled job retries rather than keeping a backup that would not restore whole.

Layout of DIR: the archive mirror (``sub-*``, ``derivatives/``..., ``incloud-backup.sha256``, exactly as
``incloud archive backup``) and ``database/incloud-db-<UTC stamp>.dump|.sqlite`` with a ``.json`` beside each
(backend, schema revision, version, row count; no secret and no identifying value).

This module must never put a key (the site key, the registry key ring) into DIR: the registry's identities are
sealed with that key (docs/security.md) and a key stored next to the dump would open them. ``keys_to`` copies
the keys to a separate place, which must not be inside DIR, nor DIR inside it. Restore refuses a database that
already holds tables (it never merges into or overwrites a live site).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Engine, inspect, text

from incloud_kernel import __version__
from incloud_kernel.archive import integrity, schema
from incloud_kernel.archive.permissions import Actor, require_site_admin
from incloud_kernel.archive.storage import replacing, write_synced
from incloud_kernel.config import Config
from incloud_kernel.db import check_reachable, get_engine
from incloud_kernel.errors import DatabaseError, StorageError, ValidationError
from incloud_kernel.site import Site, ensure_writable_dir, private_dir

#: Sub-folder of DIR holding the database dumps (never a BIDS name, so it cannot meet an archive path).
DB_DIR = "database"
#: Dumps kept by default (one a night: a week).
DEFAULT_KEEP = 7
PREFIX = "incloud-db-"


@dataclass
class SiteBackupReport:
    """What ``create`` did. ``changed``: files whose row in the dump has no matching copy in the mirror."""

    dest: str
    dump: str
    backend: str
    revision: str
    rows: int
    archive: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    keys_copied: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.changed and bool(self.archive.get("complete", True))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


@dataclass
class SiteRestoreReport:
    """What ``restore`` did; ``keys_missing`` names the key files the restored site still lacks."""

    dump: str
    backend: str
    revision_in_dump: str
    revision_now: str
    archive: dict[str, Any]
    dataset_files: int = 0
    keys_restored: list[str] = field(default_factory=list)
    keys_missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.archive.get("complete", True)) and not self.keys_missing

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


# ---------------------------------------------------------------------------------------------------------------
# Keys: never beside the dump
# ---------------------------------------------------------------------------------------------------------------

def key_files(config: Config) -> dict[str, Path]:
    """The secret files a site needs besides its database: name in a key backup -> where the site keeps it."""
    from incloud_kernel.acquisition.keyring import key_path

    return {"site.key": config.site_key_file, "registry-keys.json": key_path(config)}


def _apart(a: Path, b: Path, what: str) -> None:
    ra, rb = a.resolve(), b.resolve()
    if ra == rb or ra in rb.parents or rb in ra.parents:
        raise ValidationError(f"{what}: {a} and {b} must not contain each other (keys never sit with the dump)")


def _copy_private(src: Path, dst: Path) -> None:
    """Copy a secret file, 0600 from the moment it exists (``storage.replacing``), renamed into place."""
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_keys(config: Config, keys_to: Path, dest: Path) -> list[str]:
    """Copy the site key and the registry key ring to ``keys_to`` (0700 folder, 0600 files); names copied."""
    _apart(keys_to, dest, "the key folder and the backup folder")
    _apart(keys_to, config.archive_root, "the key folder and the archive root")
    ensure_writable_dir(keys_to, "key backup folder")
    copied = []
    for name, path in key_files(config).items():
        if path.is_file():
            _copy_private(path, keys_to / name)
            copied.append(name)
    return copied


def load_keys(config: Config, keys_from: Path) -> list[str]:
    """Put saved keys back where the site keeps them; an existing different key is never overwritten."""
    restored = []
    for name, path in key_files(config).items():
        saved = keys_from / name
        if not saved.is_file():
            continue
        if path.is_file():
            if path.read_bytes() != saved.read_bytes():
                raise ValidationError(f"{path} exists and differs from the saved key {saved}: move it away first")
            continue
        private_dir(path.parent)
        _copy_private(saved, path)
        restored.append(name)
    return restored


# ---------------------------------------------------------------------------------------------------------------
# The database dump
# ---------------------------------------------------------------------------------------------------------------

def _libpq(engine: Engine) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it (never on a command line,
    where ``ps`` would show it)."""
    url = engine.url
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise StorageError(f"{cmd[0]} not found: install the PostgreSQL client matching the server")
    out = subprocess.run([tool, *cmd[1:]], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise DatabaseError(f"{what} failed: {lines[-1] if lines else f'exit {out.returncode}'}")


def _rows_of(conn: Any) -> dict[str, str]:
    return {rel: sha for rel, sha in conn.execute(text("SELECT relpath, sha256 FROM data_file"))}


def _dump_postgres(engine: Engine, target: Path) -> dict[str, str]:
    uri, env = _libpq(engine)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            rows = _rows_of(conn)
            _run(["pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--file={target}", f"--dbname={uri}"],
                 env, "pg_dump")
    return rows


def _dump_sqlite(path: Path, target: Path) -> dict[str, str]:
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst)
        return dict(dst.execute("SELECT relpath, sha256 FROM data_file").fetchall())
    finally:
        src.close()
        dst.close()


def dump_database(site: Site, folder: Path, stamp: str) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Write one consistent dump into ``folder`` (0600, renamed into place when complete); returns its path,
    the (relpath -> SHA-256) of every data_file row it holds and the metadata written beside it (``.json``)."""
    sqlite_path = site.sqlite_path
    backend = "sqlite" if sqlite_path is not None else site.engine.url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"cannot back up a {backend} database (SQLite file or PostgreSQL only)")
    final = folder / f"{PREFIX}{stamp}.{'sqlite' if backend == 'sqlite' else 'dump'}"
    try:
        with replacing(final) as tmp:  # an empty 0600 file; an empty file is an empty SQLite database
            if sqlite_path is not None:
                rows = _dump_sqlite(sqlite_path, tmp)
            else:
                rows = _dump_postgres(site.engine, tmp)
    except OSError as exc:
        raise StorageError(f"cannot write the database dump into {folder}: "
                           f"{exc.strerror or type(exc).__name__}") from None
    meta = {"backend": backend, "revision": schema.current_revision(site.engine), "incloud": __version__,
            "rows": len(rows), "created": stamp,
            "keys_in_use": sorted(name for name, path in key_files(site.config).items() if path.is_file())}
    write_synced(folder / f"{final.name}.json", (json.dumps(meta, indent=2) + "\n").encode())
    return final, rows, meta


def dumps(dest: Path) -> list[Path]:
    """The dumps in a backup folder, oldest first (the UTC stamp in the name sorts by time)."""
    folder = dest / DB_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.suffix in (".dump", ".sqlite"))


def prune(dest: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` dumps (the archive mirror is never pruned: it never loses a file)."""
    gone = []
    for old in dumps(dest)[:-keep] if keep > 0 else []:
        old.unlink()
        old.with_name(old.name + ".json").unlink(missing_ok=True)
        gone.append(old.name)
    return gone


# ---------------------------------------------------------------------------------------------------------------
# Create and restore
# ---------------------------------------------------------------------------------------------------------------

def create(site: Site, actor: Actor, dest: Path, *, keep: int = DEFAULT_KEEP, keys_to: Path | None = None,
           progress: integrity.Progress | None = None) -> SiteBackupReport:
    """Back up the database (a dump in ``dest/database``) and then mirror the archive's files into ``dest``.

    Raises PermissionDenied (not a site admin), StorageError (``dest`` not writable, full, or inside the
    archive root), DatabaseError (the dump tool failed), ValidationError (``keys_to`` overlaps ``dest``).
    """
    require_site_admin(actor, "back up the site")
    if keep < 1:
        raise ValidationError("keep at least one dump")
    integrity._check_roots(site.archive_root, dest)
    if keys_to is not None:
        _apart(keys_to, dest, "the key folder and the backup folder")
    ensure_writable_dir(dest, "backup folder")
    folder = ensure_writable_dir(dest / DB_DIR, "backup folder")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if (folder / f"{PREFIX}{stamp}.dump").exists() or (folder / f"{PREFIX}{stamp}.sqlite").exists():
        time.sleep(1.0)  # two runs in one second: keep both
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dump, rows, meta = dump_database(site, folder, stamp)
    mirror = integrity.backup(site, actor, progress=progress, backup_root=dest)
    manifest = integrity.read_manifest(dest)
    changed = sorted(rel for rel, sha in rows.items() if manifest.get(rel) != sha)
    report = SiteBackupReport(dest=str(dest), dump=str(dump), backend=meta["backend"],
                              revision=meta["revision"] or "", rows=len(rows), archive=mirror.to_dict(),
                              changed=changed)
    report.pruned = prune(dest, keep)
    if keys_to is not None:
        report.keys_copied = save_keys(site.config, keys_to, dest)
    integrity._audit(site, actor, "site.backup", "site", "database", rows=len(rows), changed=len(changed),
                     copied=len(mirror.copied))
    return report


def _empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def _restore_postgres(engine: Engine, dump: Path) -> None:
    uri, env = _libpq(engine)
    _run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
          f"--dbname={uri}", str(dump)], env, "pg_restore")


def _restore_sqlite(target: Path, dump: Path) -> None:
    src = sqlite3.connect(f"file:{dump}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        src.close()
        dst.close()
    os.chmod(target, 0o600)


def restore(config: Config, dest: Path, *, dump: Path | None = None, keys_from: Path | None = None,
            progress: integrity.Progress | None = None) -> SiteRestoreReport:
    """Restore a site from ``dest``: the newest dump (or ``dump``) into the configured, empty database, then
    migrate it to this version's head (a dump from an older version is upgraded on the way), then every
    recorded file and the dataset-level files from the mirror; ``keys_from`` puts saved keys back.

    Raises ValidationError (no dump, database not empty), DatabaseError, StorageError.
    """
    if not dest.is_dir():
        raise ValidationError(f"backup folder {dest} does not exist")
    if keys_from is not None and not keys_from.is_dir():
        raise ValidationError(f"key folder {keys_from} does not exist")
    if dump is None:
        found = dumps(dest)
        if not found:
            raise ValidationError(f"no database dump in {dest / DB_DIR}: not an 'incloud backup create' folder")
        dump = found[-1]
    if not dump.is_file():
        raise ValidationError(f"database dump {dump} does not exist")
    meta_path = dump.with_name(dump.name + ".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    backend = "sqlite" if dump.suffix == ".sqlite" else "postgresql"
    engine = get_engine(config.database_url, config.database.connect_timeout)
    if engine.url.get_backend_name() != backend:
        raise ValidationError(f"the dump is a {backend} dump but database.url is "
                              f"{engine.url.get_backend_name()}: restore into the same kind of database")
    check_reachable(engine)
    if not _empty(engine):
        raise ValidationError("the site database is not empty: restore only into a new, empty database "
                              "(drop and create it, or point database.url at a new one)")
    keys_restored = load_keys(config, keys_from) if keys_from is not None else []  # a conflict stops us here
    if backend == "sqlite":
        engine.dispose()
        _restore_sqlite(Path(str(engine.url.database)), dump)
    else:
        _restore_postgres(engine, dump)
    schema.upgrade(engine)
    report = SiteRestoreReport(dump=str(dump), backend=backend, revision_in_dump=str(meta.get("revision", "")),
                               revision_now=schema.current_revision(engine) or "", archive={},
                               keys_restored=keys_restored)
    site = Site(config=config, engine=engine)
    site.ensure_roots()
    console = Actor.console()
    files = integrity.restore(site, console, progress=progress, backup_root=dest)
    report.archive = files.to_dict()
    report.dataset_files = _restore_dataset_files(site, dest)
    report.keys_missing = _missing_keys(site.config, meta.get("keys_in_use", []))
    integrity._audit(site, console, "site.restore", "site", "database", dump=dump.name,
                     restored=len(files.restored), failed=len(files.failed))
    return report


def _restore_dataset_files(site: Site, dest: Path) -> int:
    """Put back the dataset-level files (``dataset_description.json``, ``participants.tsv``...) the mirror holds
    and the archive lacks; they have no row, so the manifest's hash is what their copy is checked against."""
    rows = integrity._rows(site)
    n = 0
    for rel, sha in integrity.read_manifest(dest).items():
        if rel in rows or not integrity.is_dataset_metadata(PurePosixPath(rel)):
            continue
        if not (site.archive_root / rel).exists() and (dest / rel).is_file():
            integrity.copy_verified(dest / rel, site.archive_root, rel, sha)
            n += 1
    return n


def _missing_keys(config: Config, in_use: list[str]) -> list[str]:
    """Where the site should hold a key it held when the backup was taken, but does not (restore it from the
    key backup: without the site key new pseudonyms and UIDs would not match the old ones, without the registry
    key ring the sealed identities cannot be read)."""
    from incloud_kernel.acquisition.keyring import in_environment

    from_env = in_environment(config)
    return [str(path) for name, path in key_files(config).items()
            if name in in_use and not path.is_file() and not (name == "registry-keys.json" and from_env)]
