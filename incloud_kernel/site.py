"""The running site: configuration, metadata database and storage roots opened together, checked once.

Every command and service starts from ``Site.open()``; it turns an unreachable database or an unwritable
archive root into one ``IncloudError`` line before any work starts.
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


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise a one-line StorageError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
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
        """Create and check every storage root of the embedded layout."""
        c = self.config
        for path, what in ((c.archive_root, "archive root"), (c.spool, "spool"),
                           (c.quarantine, "quarantine"), (c.backup_root, "backup root")):
            ensure_writable_dir(path, what)

    def secret_key(self) -> bytes:
        """The site's secret key for keyed HMACs (UIDs, pseudonyms, date shifts); made once, mode 0600."""
        path = Path(self.config.site.key_file) if self.config.site.key_file else self.config.home / "site.key"
        if not path.exists():
            ensure_writable_dir(path.parent, "key folder")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32).hex().encode())
        return bytes.fromhex(path.read_text().strip())
