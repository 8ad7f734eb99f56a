"""The running site: configuration, metadata database and storage roots opened together, checked once.

Every command and service starts from ``Site.open()``; it turns an unreachable database or an unwritable
archive root into one ``IncloudError`` line before any work starts. This module is also the one place that
decides file modes (docs/security.md): site folders are created 0700, the ``incloud`` process runs with umask
077 so every file it writes is 0600, and nothing here may ever widen a mode.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from incloud_kernel.archive import schema
from incloud_kernel.config import Config, get_config
from incloud_kernel.db import check_reachable, get_engine
from incloud_kernel.errors import DatabaseError, StorageError


#: The umask of every ``incloud`` process: files 0600 and folders 0700, owned by the service user. Site data
#: (identified originals, the database, logs) is never readable by another system user (docs/security.md).
PRIVATE_UMASK = 0o077


def restrict_umask() -> int:
    """Set the process umask to ``PRIVATE_UMASK`` (the CLI does this first); returns the previous umask.

    Why a umask and not chmod after the fact: files are private from the moment they exist (no window in
    which another user could open them), including those written by libraries and child processes (Orthanc,
    dcm2niix, SQLite journals) that inherit it.
    """
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents 0700 whatever the umask; returns it.

    Raises OSError. A folder that already exists with a wider mode is narrowed (its existing parents are left
    alone): an older site created with the default umask gets its roots closed by the next ``incloud init`` or
    command that opens them.
    """
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process
            pass
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> None:
    """Narrow an existing file to 0600 (the SQLite database of a site made before modes were enforced)."""
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed (0700) and prove it is writable, or raise a one-line StorageError."""
    try:
        private_dir(path)
        probe = path / f".incloud-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"{what} {path} is not writable: {exc.strerror or type(exc).__name__}") from None
    return path


@dataclass
class Site:
    config: Config
    engine: Engine

    @classmethod
    def open(cls, config: Config | None = None, *, migrate: bool = False) -> Site:
        """Open the site; ``migrate=True`` brings the schema to head (``incloud init`` does this)."""
        config = config or get_config()
        engine = get_engine(config.database_url, config.database.connect_timeout)
        check_reachable(engine)
        if migrate:
            schema.upgrade(engine)
        else:
            current, head = schema.current_revision(engine), schema.head_revision()
            if current != head:
                raise DatabaseError(
                    f"database schema is at {current or 'nothing'}, expected {head}: run 'incloud init'"
                )
        return cls(config=config, engine=engine)

    @property
    def archive_root(self) -> Path:
        return self.config.archive_root

    def ensure_roots(self) -> None:
        """Create and check every storage root (0700, see docs/security.md) and close the SQLite database (0600).

        The site home (key, audit trail, embedded database and roots) is made private too, so that files
        written there before modes were enforced are out of other users' reach.
        """
        c = self.config
        for path, what in ((c.home, "site home"), (c.archive_root, "archive root"), (c.spool, "spool"),
                           (c.quarantine, "quarantine"), (c.backup_root, "backup root")):
            ensure_writable_dir(path, what)
        if self.sqlite_path is not None:
            try:
                private_file(self.sqlite_path)
            except OSError as exc:
                raise StorageError(f"cannot restrict {self.sqlite_path}: {exc.strerror or type(exc).__name__}") from None

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file of an embedded site (None on PostgreSQL or in-memory SQLite)."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database)

    def secret_key(self) -> bytes:
        """The site's secret key for keyed HMACs (UIDs, pseudonyms, date shifts); made once, mode 0600."""
        path = self.config.site_key_file
        if not path.exists():
            ensure_writable_dir(path.parent, "key folder")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32).hex().encode())
        return bytes.fromhex(path.read_text().strip())
