"""DICOM Part 10 files written by hand: element headers, the File Meta Information group, and the file itself.

The one Part 10 writer shared by ``synth`` (files generated from arrays) and ``deid`` (files rewritten from a
source). Both assemble a file as a list of chunks: encoded bytes, memoryviews of pixel arrays, and ranges of
another file (``FileRange``: pixel data copied by the kernel with ``copy_file_range``, never through Python).
Only little-endian encodings are written here (PS3.5 7.1.2/7.1.3); anything else is pydicom's job.
This module never reads, logs or raises with an element value: errors name the tag at most.
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import Executor, Future
from typing import Callable, Iterable, Union

#: 128-byte zero preamble and the ``DICM`` prefix (PS3.10 7.1): identifying preambles are never copied.
PREAMBLE = b"\x00" * 128 + b"DICM"
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Sequence Delimitation Item (FFFE,E0DD) with its zero length.
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_IMPLICIT = struct.Struct("<HHI")
_ITEM = struct.Struct("<HHI")


class NotEncodable(ValueError):
    """The element cannot be written by this module (odd VR, a short-VR value over 64 KiB); no value inside."""


def header(tag: int, vr: str | None, length: int, implicit: bool = False) -> bytes:
    """Tag, VR and length of one little-endian element (``length`` may be ``UNDEFINED_LENGTH``)."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    if vr is None or len(vr) != 2:
        raise NotEncodable(f"no explicit VR for ({group:04X},{element:04X})")
    if vr in LONG_VRS:
        return _LONG.pack(group, element, vr.encode("ascii"), length)
    if length > 0xFFFF:
        raise NotEncodable(f"value of ({group:04X},{element:04X}) too long for its VR")  # pydicom makes it UN
    return _SHORT.pack(group, element, vr.encode("ascii"), length)


def item(body: bytes) -> bytes:
    """A sequence item of defined length holding ``body`` (the encoded elements of one dataset)."""
    return _ITEM.pack(0xFFFE, 0xE000, len(body)) + body


def pad(value: bytes, vr: str) -> bytes:
    """``value`` padded to even length as PS3.5 6.2 says: NUL for UI (and OB), space for the other VRs."""
    if len(value) % 2:
        return value + (b"\x00" if vr in ("UI", "OB") else b" ")
    return value


def element_bytes(tag: int, vr: str, value: bytes, implicit: bool = False) -> bytes:
    """One little-endian element (``value`` already padded to even length)."""
    return header(tag, vr, len(value), implicit) + value


def meta_group(elements: Iterable[tuple[int, str, bytes]]) -> bytes:
    """The File Meta Information group (explicit VR little endian) with its group length first.

    ``elements``: (tag, VR, unpadded value) in ascending tag order, (0002,0000) excluded.
    """
    body = b"".join(element_bytes(tag, vr, pad(value, vr)) for tag, vr, value in elements)
    return element_bytes(0x00020000, "UL", struct.pack("<I", len(body))) + body


@functools.lru_cache(maxsize=64)
def _meta_parts(sop_class_uid: str, transfer_syntax: str, implementation_uid: str,
                version_name: str) -> tuple[bytes, bytes]:
    """The meta elements before and after Media Storage SOP Instance UID: the same for a whole series."""
    head = element_bytes(0x00020001, "OB", b"\x00\x01") + element_bytes(0x00020002, "UI", pad(sop_class_uid.encode("ascii"), "UI"))
    tail = b"".join(element_bytes(tag, vr, pad(value.encode("ascii"), vr)) for tag, vr, value in (
        (0x00020010, "UI", transfer_syntax), (0x00020012, "UI", implementation_uid), (0x00020013, "SH", version_name)))
    return head, tail


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, implementation_uid: str,
              version_name: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) of a new file.

    Version 00 01, Media Storage SOP Class/Instance, Transfer Syntax, our Implementation Class UID and Version
    Name; nothing of a source's meta (application entity titles, private information) is carried over.
    """
    head, tail = _meta_parts(sop_class_uid, transfer_syntax, implementation_uid, version_name)
    body = head + element_bytes(0x00020003, "UI", pad(sop_instance_uid.encode("ascii"), "UI")) + tail
    return PREAMBLE + element_bytes(0x00020000, "UL", struct.pack("<I", len(body))) + body


@dataclass(frozen=True)
class FileRange:
    """``length`` bytes of the file ``path`` from ``offset``: copied file to file by the kernel when written."""

    path: str
    offset: int
    length: int

    def read(self) -> bytes:
        """The bytes themselves (for callers that need the file in memory); raises OSError if the file is short."""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.length)
        if len(data) != self.length:
            raise OSError("source file shorter than recorded")
        return data


Chunk = Union[bytes, bytearray, memoryview, FileRange]


def to_bytes(chunks: Iterable[Chunk]) -> bytes:
    """The file as one bytes object (file ranges read into memory)."""
    return b"".join(c.read() if isinstance(c, FileRange) else bytes(c) for c in chunks)


def write_file(path: Path | str, chunks: Iterable[Chunk], mode: int = 0o666) -> None:
    """Create ``path`` (permissions ``mode`` less the umask) and write the chunks in order.

    Consecutive in-memory chunks go out with one ``writev``; a ``FileRange`` is copied by ``copy_file_range``
    (``sendfile`` where that is refused, e.g. across file systems on old kernels), so large pixel data never
    passes through Python. Raises OSError (disk full, a short source file...); the caller removes the partial
    file (write to a temporary name and rename, as the callers here do).
    """
    start_write(path, chunks, mode)()


#: File ranges at least this large are copied in the background by ``start_write`` when given an executor.
BACKGROUND_COPY = 1 << 20


def start_write(path: Path | str, chunks: Iterable[Chunk], mode: int = 0o666,
                background: Executor | None = None) -> Callable[[], None]:
    """``write_file``, returning before a large ``FileRange`` is copied: the kernel copy (and whatever follows
    it) runs on ``background`` (one thread), so that a batch can read and de-identify the next file meanwhile.

    Why a thread does only the copy: the copy releases the GIL for its whole length, while the small writes
    around it would each wait for the GIL behind the busy main thread. Returns ``finish()``, which waits for the
    file to be complete, closes it and raises what the writing raised; call it exactly once. Without
    ``background`` (or without a large range) the file is complete on return and ``finish`` does nothing.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        todo = list(chunks)
        if background is not None:
            for k, chunk in enumerate(todo):
                if type(chunk) is FileRange and chunk.length >= BACKGROUND_COPY:
                    _write_chunks(fd, todo[:k])
                    return functools.partial(_finish, fd, background.submit(_write_chunks, fd, todo[k:]))
        _write_chunks(fd, todo)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return _nothing


def _finish(fd: int, copying: Future) -> None:
    try:
        copying.result()
    finally:
        os.close(fd)


def _nothing() -> None:
    """``finish`` of a file already complete."""


def _write_chunks(fd: int, chunks: list[Chunk]) -> None:
    views: list[memoryview] = []  # written with one writev: encoded runs joined, memoryviews as they are
    run: list = []
    for chunk in chunks:
        kind = type(chunk)
        if kind is bytes or kind is bytearray:
            run.append(chunk)
            continue
        if run:
            views.append(memoryview(b"".join(run)))
            run = []
        if kind is FileRange:
            _writev_all(fd, views)
            views = []
            _copy_range(chunk, fd)
        else:  # a memoryview (pixels of an array): not copied
            view = memoryview(chunk)
            views.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
    if run:
        views.append(memoryview(b"".join(run)))
    _writev_all(fd, views)


def _writev_all(fd: int, views: list[memoryview]) -> None:
    while views:
        done = os.writev(fd, views[:1024])  # IOV_MAX
        while views and done >= views[0].nbytes:
            done -= views[0].nbytes
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]


def _copy_range(chunk: FileRange, fd_out: int) -> None:
    fd_in = os.open(chunk.path, os.O_RDONLY)
    try:
        offset, left = chunk.offset, chunk.length
        use_sendfile = not hasattr(os, "copy_file_range")
        while left:
            try:
                if use_sendfile:
                    n = os.sendfile(fd_out, fd_in, offset, left)
                else:
                    n = os.copy_file_range(fd_in, fd_out, left, offset)
            except OSError:
                if use_sendfile:
                    raise
                use_sendfile = True  # EXDEV, ENOSYS, EINVAL on some file systems: sendfile does the same job
                continue
            if n == 0:
                raise OSError("source file shorter than recorded")
            offset += n
            left -= n
    finally:
        os.close(fd_in)
