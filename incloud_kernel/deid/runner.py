"""Batch de-identification over files, folders, DICOMDIR files and zip archives, in N processes.

Output tree: ``OUT/<pseudonym>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (new UIDs).
Every file that cannot be passed goes to the site quarantine (``incloud_kernel.quarantine``, origin ``deid``) with
its original bytes, a value-free reason and what a release needs (output folder, options); the batch continues.
Messages and reasons never carry header values (pydicom exception texts are never used, and pydicom's warnings,
which can quote values, are silenced in workers).
"""
from __future__ import annotations

import gzip
import io
import itertools
import logging
import mmap
import multiprocessing as mp
import os
import struct
import time
import warnings
import zipfile
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from incloud_kernel.deid.context import DeidContext
from incloud_kernel.deid.deidentify import deidentify_with_record
from incloud_kernel.deid.errors import DeidError
from incloud_kernel.deid.peek import peek
from incloud_kernel.deid import groups
from incloud_kernel.deid.writer import start_write_file
from incloud_kernel.dicom.part10 import LONG_VRS
from incloud_kernel.quarantine import Entry, Quarantine

PIXEL_DATA = 0x7FE00010
_PIXEL_DATA_TAG = BaseTag(PIXEL_DATA)
#: Elements larger than this are read from disk only when written (pixel data of big multi-frames).
DEFER_SIZE = 2 * 1024 * 1024
#: Files up to this size are read with one system call and parsed from memory.
WHOLE_READ_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Job:
    """One input: a file path, or a member of a zip archive (``member`` set)."""

    path: str
    member: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path


@dataclass
class Result:
    job: Job
    status: str  # "done" | "quarantined" | "failed"
    output: str | None = None
    reason: str | None = None
    record: dict | None = None


@dataclass
class Summary:
    done: int = 0
    quarantined: int = 0
    failed: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.done + self.quarantined + self.failed


def _is_dicomdir(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR"


def _dicomdir_files(path: Path) -> Iterator[Path]:
    """Files referenced by a DICOMDIR (value-free: only Referenced File IDs are read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fs = pydicom.fileset.FileSet(pydicom.dcmread(path))
        for instance in fs:
            yield Path(instance.path)
    except Exception:  # noqa: BLE001 - a broken DICOMDIR: its folder is walked instead
        yield from (p for p in sorted(path.parent.rglob("*")) if p.is_file() and not _is_dicomdir(p))


def enumerate_jobs(sources: list[str | Path]) -> list[Job]:
    """Expand sources: folders are walked (DICOMDIR files there are themselves inputs, to be quarantined),
    a DICOMDIR given directly stands for the files it references, a .zip for its members."""
    jobs: list[Job] = []
    seen: set[str] = set()

    def add(job: Job) -> None:
        if job.label not in seen:
            seen.add(job.label)
            jobs.append(job)

    for src in sources:
        p = Path(src)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    add(_zip_or_file(f, jobs, add))
        elif _is_dicomdir(p) and p.is_file():
            for f in _dicomdir_files(p):
                add(Job(str(f)))
        elif p.is_file():
            add(_zip_or_file(p, jobs, add))
        else:
            raise DeidError(f"source not found: {p}", reason="no-source")
    return [j for j in jobs if j is not None]


def _zip_or_file(f: Path, jobs: list[Job], add: Callable[[Job], None]) -> Job:
    if f.suffix.lower() == ".zip" and zipfile.is_zipfile(f):
        with zipfile.ZipFile(f) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/")]
        for m in members[:-1]:
            add(Job(str(f), m))
        return Job(str(f), members[-1]) if members else Job(str(f))
    return Job(str(f))


# --- worker side -------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(context: DeidContext, out_root: str, quarantine_root: str | None) -> None:
    warnings.simplefilter("ignore")  # pydicom warnings can quote header values
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    _WORKER.update(context=context, out=Path(out_root), quarantine=Path(quarantine_root) if quarantine_root else None,
                   made=set())


def _read_bytes(job: Job) -> bytes:
    if job.member is None:
        return Path(job.path).read_bytes()
    with zipfile.ZipFile(job.path) as zf:
        return zf.read(job.member)


GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(job: Job) -> bool:
    with open(job.path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def _native_pixel_length(ds: pydicom.Dataset) -> int | None:
    """Expected Pixel Data length for uncompressed transfer syntaxes (None when not applicable).

    Reads through ``peek`` so that the elements stay raw (written back as read, see ``writer``).
    """
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) if hasattr(ds, "file_meta") else None
    if ts is None or not ts or ts.is_compressed:
        return None
    try:
        rows, cols = int(peek(ds, "Rows")), int(peek(ds, "Columns"))
        spp, bits = int(peek(ds, "SamplesPerPixel", 1) or 1), int(peek(ds, "BitsAllocated"))
        frames = int(peek(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if str(peek(ds, "PhotometricInterpretation", "")).strip() in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        spp = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    return (rows * cols * spp * frames * bits + 7) // 8


_EXPLICIT_META = struct.Struct("<HH2s")
_TRANSFER_SYNTAX = BaseTag(0x00020010)
_FAST_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # -> implicit VR


def _parse_part10(data: bytes | mmap.mmap, path: str | None = None) -> pydicom.FileDataset | None:
    """Parse a well-formed little-endian Part 10 file, as ``dcmread`` would; None: use ``dcmread``.

    Why: for small files ``dcmread`` spends much of its time in file-meta handling. Here the file meta (explicit
    VR little endian, PS3.10 7.1) is split by hand into raw elements and the dataset is read by pydicom's own
    ``read_dataset`` (functional groups sequences kept raw, see ``groups.read_dataset``); anything unusual (no
    DICM prefix, odd meta, deflated, big-endian or private transfer syntaxes, read errors) is left to ``dcmread``
    so that its handling (and its quarantine reasons) stay.
    ``data``: the whole file in memory, or (``path`` given) an mmap of the file at ``path``: then values larger
    than ``DEFER_SIZE`` (pixel data) are not read but left deferred, and the writer copies them file to file.
    """
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    raw_meta: dict[BaseTag, RawDataElement] = {}
    pos, size = 132, len(data)
    while pos + 8 <= size:
        group, element, vr = _EXPLICIT_META.unpack_from(data, pos)
        if group != 2:
            break
        if not vr.isalpha() or not vr.isupper():
            return None
        vr_text = vr.decode("ascii")
        if vr_text in LONG_VRS:
            if pos + 12 > size:
                return None
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > size:
            return None
        tag = BaseTag((group << 16) | element)
        raw_meta[tag] = RawDataElement(tag, vr_text, length, data[start:start + length], start, False, True)
        pos = start + length
    meta = FileMetaDataset(raw_meta)  # raw elements, converted on access as dcmread's would be
    ts_elem = meta.get_item(_TRANSFER_SYNTAX)
    if ts_elem is None:
        return None
    ts = ts_elem.value.decode("ascii", "replace").strip(" \x00")
    if ts in _FAST_SYNTAXES:
        implicit = _FAST_SYNTAXES[ts]
    else:
        uid = UID(ts)
        if not uid.is_transfer_syntax or not uid.is_compressed or not uid.is_little_endian or \
                uid.is_deflated or uid in pydicom.uid.PrivateTransferSyntaxes:
            return None
        implicit = False
    fp: BinaryIO = io.BytesIO(data) if path is None else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        fp.seek(pos)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded (never shown): any warning sends the file to dcmread
            dataset = groups.read_dataset(fp, data, implicit, DEFER_SIZE if path is not None else None)
    except Exception:  # noqa: BLE001 - dcmread decides what this file is, and says why
        return None
    finally:
        if path is not None:
            fp.close()
    if caught:  # truncated or odd: let dcmread's own handling (and warnings, silenced) decide
        return None
    ds = pydicom.FileDataset(path or fp, dataset, data[:128], meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)  # noqa: SLF001
    return ds


def _parse_mapped(path: str) -> pydicom.FileDataset | None:
    """``_parse_part10`` on a memory map of the file: only the header is read; large values stay deferred."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return _parse_part10(mapped, path)


def _read(job: Job) -> pydicom.FileDataset:
    """Parse one input or raise DeidError with a value-free reason."""
    size = os.path.getsize(job.path) if job.member is None else None
    if size == 0:
        raise DeidError("empty file", reason="empty-file")
    try:
        if size is not None and size > WHOLE_READ_SIZE and not _is_gzip(job):
            ds = _parse_mapped(job.path) or pydicom.dcmread(job.path, defer_size=DEFER_SIZE)  # big: pixels deferred
        else:
            data = _read_bytes(job)  # one read of the whole file
            if data[:2] == GZIP_MAGIC:  # e.g. nibabel's *.dcm.gz test files; the quarantine keeps the .gz
                data = gzip.decompress(data)
            ds = _parse_part10(data) or pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise DeidError("not a DICOM Part 10 file (no preamble and DICM prefix)", reason="not-part10") from None
    except (EOFError, OSError, gzip.BadGzipFile):
        raise DeidError("truncated or unreadable file", reason="truncated") from None
    except Exception as exc:  # noqa: BLE001 - type only: pydicom messages can hold values
        raise DeidError(f"unreadable DICOM ({type(exc).__name__})", reason=f"unreadable:{type(exc).__name__}") from None
    if "PixelData" in ds:
        expected = _native_pixel_length(ds)
        try:
            raw = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)  # kept raw (or deferred): copied as read
            if type(raw) is RawDataElement and raw.value is not None:
                actual = len(raw.value)
            elif type(raw) is RawDataElement and raw.length != 0xFFFFFFFF and size is not None:
                actual = min(raw.length, size - raw.value_tell)  # deferred: what the file really holds
            else:
                actual = len(ds[PIXEL_DATA].value or b"")  # read once (deferred elements are read here)
        except Exception as exc:  # noqa: BLE001
            raise DeidError("pixel data unreadable", reason=f"truncated:{type(exc).__name__}") from None
        if expected is not None and actual < expected:
            raise DeidError("pixel data shorter than Rows x Columns x frames says: truncated file", reason="truncated")
    return ds


def _quarantine(job: Job, reason: str, root: Path) -> str:
    """Hold the original bytes in a new quarantine entry (0700/0600); returns the entry id.

    The record keeps what ``release_deid`` needs: the output folder, the options and ``original`` (the input's
    path: the entry holds identified bytes anyway, and a reviewer must know where they came from).
    """
    ctx: DeidContext = _WORKER["context"]
    gz = job.member is None and _is_gzip(job)
    source: Path | bytes = Path(job.path) if job.member is None else _read_bytes(job)
    entry = Quarantine(root).put(
        "deid", [(source, "original.dcm.gz" if gz else "original.dcm")], reason=reason, step="deidentify",
        source="zip member" if job.member else "file",
        release={"out": str(_WORKER["out"]), "options": list(ctx.options), "allow_burned_in": ctx.allow_burned_in,
                 "original": job.label})
    return entry.id


_WRITES = itertools.count()


@dataclass
class _Writing:
    """A de-identified file being written (its pixel data possibly still being copied by the kernel)."""

    job: Job
    tmp: Path
    target: Path
    result: Result
    finish: Callable[[], None]


def process(job: Job) -> Result:
    """De-identify one input inside a worker (or the parent when jobs=1)."""
    return _end(_begin(job))


def _begin(job: Job, background: Executor | None = None) -> _Writing | Result:
    """Read, de-identify and start writing one input; a Result when it ended already (quarantined...).

    With ``background`` the kernel copy of its pixel data runs there: ``_end`` waits for it, then renames.
    """
    ctx: DeidContext = _WORKER["context"]
    try:
        ds = _read(job)
        new, record = deidentify_with_record(ds, ctx, shared=True)
        rel = Path(record.pseudonym) / record.study_uid / record.series_uid / f"{record.sop_uid}.dcm"
        target = _WORKER["out"] / rel
        made = _WORKER["made"]
        if target.parent not in made:  # one mkdir per series folder, not per file
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        # own name per write in flight: two inputs can give the same output (a file sent twice)
        tmp = target.with_suffix(f".tmp{os.getpid()}.{next(_WRITES)}")
        # deferred pixels: kernel copy
        finish = start_write_file(new, tmp, job.path if job.member is None else None, background)
        return _Writing(job, tmp, target, Result(job, "done", output=str(rel), record=dict(vars(record))), finish)
    except DeidError as exc:
        return _held(job, exc.reason)
    except Exception as exc:  # noqa: BLE001 - type only, never the text
        return _held(job, f"error:{type(exc).__name__}")


def _end(step: _Writing | Result) -> Result:
    """The outcome of ``_begin``'s step: the file complete and renamed into place, or held in quarantine."""
    if isinstance(step, Result):
        return step
    try:
        step.finish()
        os.replace(step.tmp, step.target)
        return step.result
    except Exception as exc:  # noqa: BLE001 - type only, never the text
        step.tmp.unlink(missing_ok=True)
        return _held(step.job, f"error:{type(exc).__name__}")


def _held(job: Job, reason: str) -> Result:
    """The input kept in quarantine with ``reason`` (never with a value)."""
    try:
        if _WORKER["quarantine"] is not None:  # None: a release, whose entry already holds the bytes
            _quarantine(job, reason, _WORKER["quarantine"])
        return Result(job, "quarantined", reason=reason)
    except Exception as exc:  # noqa: BLE001 - even quarantine failed (disk full...): report, keep going
        return Result(job, "failed", reason=f"quarantine-failed:{type(exc).__name__}")


def _pipelined(jobs: list[Job]) -> Iterator[Result]:
    """``process`` over ``jobs`` in this process, each file's pixel data copied by the kernel (one helper
    thread) while the next file is read and de-identified; results in input order.

    Why: for a large multi-frame file the copy is a third of the time and needs no Python; overlapping it with
    the next file's header work is what keeps one process near copy speed (docs/benchmarks.md, issue 11).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="deid-copy") as background:
        pending: _Writing | Result | None = None
        for job in jobs:
            step = _begin(job, background)
            if pending is not None:
                yield _end(pending)
            pending = step
        if pending is not None:
            yield _end(pending)


def run_batch(jobs: list[Job], context: DeidContext, out_root: Path, quarantine_root: Path, *,
              n_jobs: int = 1, on_result: Callable[[Result], None] | None = None) -> Summary:
    """Process ``jobs`` with ``n_jobs`` processes; ``on_result`` is called in this process for each file."""
    summary = Summary()
    start = time.perf_counter()
    out_root.mkdir(parents=True, exist_ok=True)
    initargs = (context, str(out_root), str(quarantine_root))

    def handle(result: Result) -> None:
        if result.status == "done":
            summary.done += 1
        else:
            setattr(summary, result.status, getattr(summary, result.status) + 1)
            summary.reasons[result.reason or "?"] = summary.reasons.get(result.reason or "?", 0) + 1
        if on_result:
            on_result(result)

    if n_jobs <= 1:
        saved = dict(_WORKER)
        with warnings.catch_warnings():
            _init_worker(*initargs)
            for result in _pipelined(jobs):
                handle(result)
        _WORKER.clear()
        _WORKER.update(saved)
    else:
        # forkserver, not fork: the workers start from a clean server process, never from a copy of a caller that
        # may hold native threads (a notebook's, the API's, a test session's browser driver or thread pools),
        # which made forked workers die at birth and the pool re-fork them without end. The context and the
        # worker functions pickle (module-level functions; the callbacks are built to go to worker processes).
        ctx = mp.get_context("forkserver")
        with ctx.Pool(n_jobs, initializer=_init_worker, initargs=initargs) as pool:
            chunk = max(1, min(64, len(jobs) // (n_jobs * 8) or 1))
            for result in pool.imap_unordered(process, jobs, chunksize=chunk):
                handle(result)
    summary.seconds = time.perf_counter() - start
    return summary


def release_deid(entry: Entry, context: DeidContext) -> Result:
    """De-identify the entry's held file again into its recorded output folder (``Result.output`` is relative to it).

    ``context`` is built by the caller from the recorded options (and ``allow_burned_in``, which a reviewer may
    grant for this release). Raises DeidError (value-free reason) when it fails again: the entry stays, and no
    second entry is made.
    """
    (held,) = entry.paths()
    saved = dict(_WORKER)
    try:
        with warnings.catch_warnings():
            _init_worker(context, entry.release["out"], None)
            result = process(Job(str(held)))
    finally:
        _WORKER.clear()
        _WORKER.update(saved)
    if result.status != "done":
        raise DeidError("de-identification failed again", reason=result.reason or "deid-failed")
    return result
