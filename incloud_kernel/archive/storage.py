"""Files under the archive root: BIDS-safe relative paths and crash-safe atomic writes with SHA-256.

A write is: temp file in the target folder, fsync, atomic rename, fsync of the folder. Only then may the
caller record the file's row in the database (in one transaction); ``archive.integrity`` sweeps what a crash
between the two leaves behind. Never writes outside the root, never follows a name with ``..``, never makes a
file readable by another system user (files are created 0600 whatever the umask; docs/security.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

from incloud_kernel.errors import StorageError, ValidationError

#: Prefix of in-flight temp files; the sweeper removes any it finds.
TMP_PREFIX = ".incloud-tmp-"
CHUNK = 1 << 20
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_label(value: str, what: str = "label") -> str:
    """A BIDS entity label: letters and digits only (no ``-``, ``_``, ``/``, dots or spaces)."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise ValidationError(f"{what} must be letters and digits only (BIDS-safe), got {value!r}")
    return value


def safe_relpath(relpath: str | PurePosixPath) -> PurePosixPath:
    """Validate a path relative to the archive root: no absolute paths, no ``..``, BIDS-safe parts."""
    text = str(relpath)
    if not text or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or "\\" in text:
        raise ValidationError(f"archive paths must be relative, got {text!r}")
    path = PurePosixPath(text)
    for part in path.parts:
        if part in ("..", ".") or not _PATH_PART.fullmatch(part):
            raise ValidationError(f"unsafe archive path component {part!r} in {text!r}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the folder entry, not only the file's bytes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write the new file to; when the block ends cleanly the file is
    fsynced and renamed over ``target`` (readers see the old file or the whole new one), and when it raises
    the temporary file is removed. Its name starts with a dot and ends in ``.tmp``, so no reader's glob of
    ``*.parquet`` or ``*.tsv`` ever matches it. For files outside the archive's own ``atomic_write``."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _chunks(source: bytes | Path | BinaryIO) -> Iterable[bytes]:
    if isinstance(source, bytes):
        yield source
    elif isinstance(source, Path):
        with open(source, "rb") as fh:
            yield from iter(lambda: fh.read(CHUNK), b"")
    else:
        yield from iter(lambda: source.read(CHUNK), b"")


def write_synced(path: Path, source: bytes | Path | BinaryIO) -> tuple[str, int]:
    """Write ``source`` to exactly ``path`` and fsync it; return (sha256 hex, size in bytes).

    The building block of atomic writes: callers write under a temp or staging name, then rename.
    The file is created 0600 (an existing one keeps its mode). Raises OSError; callers turn it into a
    StorageError that names the archive path.
    """
    digest, size = hashlib.sha256(), 0
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        for chunk in _chunks(source):
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest(), size


def atomic_write(root: Path, relpath: str | PurePosixPath, source: bytes | Path | BinaryIO,
                 *, overwrite: bool = False) -> tuple[str, int]:
    """Write ``source`` to ``root/relpath`` atomically; return (sha256 hex, size in bytes).

    Readers see either no file or the whole file, never a part. Raises StorageError when the root cannot be
    written (permissions, full disk) and ValidationError for unsafe paths or an existing file.
    """
    rel = safe_relpath(relpath)
    target = root / rel
    if target.exists() and not overwrite:
        raise ValidationError(f"archive file already exists: {rel}")
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{target.name}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = write_synced(tmp, source)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished folder: nothing was left there anyway
            pass
        raise StorageError(f"cannot write {rel} under {root}: {exc.strerror or type(exc).__name__}") from None
    return digest, size


def ensure_dataset(root: Path, name: str = "INCloud archive") -> None:
    """Make ``root`` a BIDS dataset: ``dataset_description.json``, ``participants.tsv`` and ``.bidsignore``.

    ``root`` is created 0700 (and narrowed to it) like every site root."""
    from incloud_kernel.site import private_dir

    private_dir(root)
    if not (root / "dataset_description.json").exists():
        description = {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
                       "GeneratedBy": [{"Name": "INCloud"}]}
        atomic_write(root, "dataset_description.json", json.dumps(description, indent=2).encode())
    if not (root / "participants.tsv").exists():
        atomic_write(root, "participants.tsv", b"participant_id\n")
    if not (root / ".bidsignore").exists():
        (root / ".bidsignore").write_text(f"{TMP_PREFIX}*\n")
