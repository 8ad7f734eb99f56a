"""Fast Part 10 encoder for de-identified datasets: kept (raw) elements are copied as read, never converted.

``encode_chunks(ds, source)`` gives a Part 10 file (128-byte zero preamble, ``DICM``, file meta rebuilt by hand,
then the dataset) as chunks for ``dicom.part10.write_file`` for little-endian transfer syntaxes, the case that
matters for speed: a value pydicom left deferred in the source file (large pixel data) becomes a ``FileRange`` of
``source`` and is copied by the kernel, never read into Python. Anything else (big endian, a dataset whose
encoding differs from its source, buffered values) is written by pydicom's own ``dcmwrite``.

Why: pydicom's writer spends most of its time in per-element Python overhead even for elements it writes verbatim;
de-identification keeps most elements (pixel data included) unchanged, so those are copied here as byte slices.
Elements the profile changed are DataElements and are encoded by pydicom's ``write_data_element``, so their
encoding rules (character sets, padding, multi-values, AT, ambiguous VRs) stay pydicom's.
This module must never log or raise with an element value; errors propagate as pydicom raised them (the runner
reports the exception type only).
"""
from __future__ import annotations

import io
import struct
from concurrent.futures import Executor
from functools import lru_cache
from pathlib import Path
from typing import Callable

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element

from incloud_kernel.dicom import part10

#: VRs whose values pydicom writes as (padded) strings; with ASCII values they are written here directly.
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: Binary integer VRs: a single int value is packed here directly.
_NUMBERS = {"US": struct.Struct("<H"), "SS": struct.Struct("<h"), "UL": struct.Struct("<I"), "SL": struct.Struct("<i")}
UNDEFINED = part10.UNDEFINED_LENGTH
#: Transfer syntaxes whose dataset is deflated as a whole: written by pydicom.
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
_header = part10.header  # raises NotEncodable: no VR, or a short-VR value over 64 KiB (pydicom makes it UN)


class NotFastPath(part10.NotEncodable):
    """The dataset needs pydicom's general writer (never carries a value)."""


@lru_cache(maxsize=64)
def _python_codecs(charset: object) -> tuple[str, ...]:
    return tuple(convert_encodings(list(charset) if isinstance(charset, tuple) else charset))


def _codecs(charset: object) -> tuple[str, ...]:
    """The Python codecs a Specific Character Set value (or pydicom's converted list) stands for."""
    return _python_codecs(tuple(charset) if isinstance(charset, (list, MultiValue)) else charset)


def _encode_dataset(ds: Dataset, implicit: bool, parent_encoding: object, out: list, source: str | None = None,
                    marks: list[tuple[int, int]] | None = None) -> None:
    """Append the encoding of ``ds`` (same transfer syntax as its source) to ``out``.

    ``source``: the file the dataset was read from; a value pydicom deferred (not read) is appended as a
    ``FileRange`` of it. Without ``source`` such a dataset is left to pydicom (``NotFastPath``).
    ``marks``: if given, receives (tag, index in ``out``) where each top-level element starts.
    """
    raw_ok = False  # raw elements may be copied only if read with this encoding and character set
    elements = ds._dict  # noqa: SLF001 - the hot loop: one dict lookup per element (get_item costs ~10x more)
    encoding = parent_encoding
    charset = elements.get(0x00080005)
    if charset is not None:
        encoding = ds.get("SpecificCharacterSet", parent_encoding)
    for tag in sorted(elements, key=int):  # int keys: BaseTag's own comparisons are slow
        if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
            continue  # retired group lengths are not written (PS3.5 7.2), as pydicom does
        if marks is not None:
            marks.append((int(tag), len(out)))
        elem = elements[tag]
        if type(elem) is RawDataElement:
            if not raw_ok:
                # Raw bytes are written as read only if read with this transfer syntax and the character set
                # they are written under here (the dataset's own, else its parent's): else pydicom re-encodes.
                if ds.original_encoding != (implicit, True) or \
                        _codecs(ds.original_character_set) != _codecs(encoding):
                    raise NotFastPath
                raw_ok = True
            value = elem.value
            if elem.is_buffered:
                raise NotFastPath
            if value is None:
                if elem.length != 0:
                    if source is None or elem.length == UNDEFINED:
                        raise NotFastPath  # deferred read: left to pydicom
                    out.append(_header(tag, elem.VR, elem.length, implicit))
                    out.append(part10.FileRange(source, elem.value_tell, elem.length))  # copied by the kernel
                    continue
                value = b""
            if elem.length == UNDEFINED:  # encapsulated pixel data: value read up to its delimiter
                out.append(_header(tag, elem.VR, UNDEFINED, implicit))
                out.append(value)
                out.append(part10.SEQUENCE_DELIMITER)
            else:
                out.append(_header(tag, elem.VR, len(value), implicit))
                out.append(value)
            continue
        if elem.is_buffered:
            raise NotFastPath
        vr = elem.VR
        if vr == "SQ":
            items: list[bytes] = []
            for item in elem.value:
                chunks: list[bytes] = []
                _encode_dataset(item, implicit, encoding, chunks)
                body = b"".join(chunks)
                items.append(part10.item(body))
            body = b"".join(items)
            out.append(_header(tag, "SQ", len(body), implicit))
            out.append(body)
            continue
        value = elem.value
        if vr in STRING_VRS:
            text = _simple_text(value)
            if text is not None:
                data = text.encode("ascii")
                if len(data) % 2:
                    data += b"\x00" if vr == "UI" else b" "
                out.append(_header(tag, vr, len(data), implicit))
                out.append(data)
                continue
        elif vr == "PN" and type(value) is PersonName:
            text = str(value)
            if text.isascii():
                data = text.encode("ascii")
                if len(data) % 2:
                    data += b" "
                out.append(_header(tag, vr, len(data), implicit))
                out.append(data)
                continue
        elif vr in _NUMBERS and type(value) is int:
            fmt = _NUMBERS[vr]
            out.append(_header(tag, vr, fmt.size, implicit))
            out.append(fmt.pack(value))
            continue
        if vr is None or len(vr) != 2:
            elem = correct_ambiguous_vr_element(elem, ds, True)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        write_data_element(fp, elem, encoding)
        out.append(fp.getvalue())


def _simple_text(value: object) -> str | None:
    """The text to write for an ASCII string value (multi-values joined), else None (pydicom encodes it).

    ASCII encodes identically under every character set a dataset may declare, so no charset logic is needed.
    """
    if value is None:
        return ""
    kind = type(value)
    if kind is str or kind is UID:
        return value if value.isascii() else None
    if kind is MultiValue or kind is list:
        if all(type(v) is str or type(v) is UID for v in value):
            text = "\\".join(value)
            return text if text.isascii() else None
    return None


def encode_each(ds: Dataset, implicit: bool, parent_encoding: object) -> dict[int, bytes]:
    """{tag: encoded element} for each element of ``ds`` (an item of a sequence; ``parent_encoding`` as for
    ``_encode_dataset``): the bytes the item's encoding is made of, element by element."""
    out: list = []
    marks: list[tuple[int, int]] = []
    _encode_dataset(ds, implicit, parent_encoding, out, marks=marks)
    bounds = [i for _, i in marks] + [len(out)]
    return {tag: b"".join(out[bounds[k]:bounds[k + 1]]) for k, (tag, _) in enumerate(marks)}


def encode_meta(meta: Dataset) -> bytes:
    """The file meta group (explicit VR little endian) with its group length, from string/bytes values."""
    elements = []
    for tag in sorted(meta.keys()):
        if tag == 0x00020000:
            continue
        raw = meta.get_item(tag)  # raw elements are taken as they are
        if type(raw) is RawDataElement and raw.VR and raw.is_little_endian and not raw.is_implicit_VR \
                and raw.value is not None and raw.length != UNDEFINED:
            elements.append((int(tag), raw.VR, raw.value))
            continue
        elem = meta[tag]
        vr = elem.VR
        value = elem.value
        if vr in ("OB", "UN"):
            data = bytes(value or b"")
        elif vr in ("UI", "SH", "AE", "CS", "LO"):
            data = str(value or "").encode("ascii")
        else:
            raise NotFastPath
        elements.append((int(tag), vr, data))
    return part10.meta_group(elements)


def encode_chunks(ds: FileDataset, source: str | None = None) -> list[part10.Chunk]:
    """Part 10 file of ``ds`` (preamble zeroed, file meta as given) as chunks for ``part10.write_file``.

    ``source``: the file ``ds`` was read from, for values left deferred there (see ``_encode_dataset``).
    Falls back to pydicom's writer (one chunk) when the fast path does not apply.
    """
    implicit, little = ds.original_encoding
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if little is True and implicit is not None and ts not in DEFLATED:
        try:
            chunks: list = [part10.PREAMBLE, encode_meta(ds.file_meta)]
            _encode_dataset(ds, bool(implicit), "iso8859", chunks, source)
            return chunks
        except part10.NotEncodable:
            pass
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return [buf.getvalue()]


def encode_file(ds: FileDataset, source: str | None = None) -> bytes:
    """Part 10 bytes of ``ds``: ``encode_chunks`` joined (deferred values read from ``source``)."""
    return part10.to_bytes(encode_chunks(ds, source))


def start_write_file(ds: FileDataset, path: Path, source: str | None = None,
                     background: Executor | None = None) -> Callable[[], None]:
    """Write ``ds`` as a Part 10 file at ``path``; deferred values are copied from ``source`` by the kernel.

    Returns ``finish()`` (``part10.start_write``): with ``background`` the kernel copy of deferred pixel data
    runs there, so that a batch reads and de-identifies the next file while this one is copied; the file is
    complete only when ``finish()`` returns. Without it the file is complete on return."""
    return part10.start_write(path, encode_chunks(ds, source), background=background)
