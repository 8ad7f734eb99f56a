"""Fast Part 10 encoder for de-identified datasets: kept (raw) elements are copied as read, never converted.

``encode_file(ds)`` gives the bytes of a Part 10 file (128-byte zero preamble, ``DICM``, file meta rebuilt by hand,
then the dataset) for little-endian transfer syntaxes, the case that matters for speed; anything else (big endian,
a dataset whose encoding differs from its source, buffered values) is written by pydicom's own ``dcmwrite``.

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

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element

#: VRs whose values pydicom writes as (padded) strings; with ASCII values they are written here directly.
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: Binary integer VRs: a single int value is packed here directly.
_NUMBERS = {"US": struct.Struct("<H"), "SS": struct.Struct("<h"), "UL": struct.Struct("<I"), "SL": struct.Struct("<i")}
PREAMBLE = b"\x00" * 128 + b"DICM"
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
UNDEFINED = 0xFFFFFFFF
#: Transfer syntaxes whose dataset is deflated as a whole: written by pydicom.
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
_ITEM = struct.Struct("<HHI")
ITEM_DELIM_TAGS = (0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD)
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_IMPLICIT = struct.Struct("<HHI")


class NotFastPath(Exception):
    """The dataset needs pydicom's general writer (never carries a value)."""


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    if vr is None or len(vr) != 2:
        raise NotFastPath
    if vr in LONG_VRS:
        return _LONG.pack(group, element, vr.encode("ascii"), length)
    if length > 0xFFFF:
        raise NotFastPath  # pydicom turns it into UN with a warning; leave that rare case to it
    return _SHORT.pack(group, element, vr.encode("ascii"), length)


def _encode_dataset(ds: Dataset, implicit: bool, parent_encoding: object, out: list[bytes]) -> None:
    """Append the encoding of ``ds`` (same transfer syntax as its source) to ``out``."""
    raw_ok = False  # raw elements may be copied only if read with this encoding and character set
    elements = ds._dict
    encoding = parent_encoding
    charset = elements.get(0x00080005)
    if charset is not None:
        encoding = ds.get("SpecificCharacterSet", parent_encoding)
    for tag in sorted(elements, key=int):  # int keys: BaseTag's own comparisons are slow
        if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
            continue  # retired group lengths are not written (PS3.5 7.2), as pydicom does
        elem = elements[tag]
        if type(elem) is RawDataElement:
            if not raw_ok:
                if ds.original_encoding != (implicit, True) or ds.original_character_set != ds._character_set:
                    raise NotFastPath  # raw elements would need re-encoding: pydicom does that
                raw_ok = True
            value = elem.value
            if elem.is_buffered:
                raise NotFastPath
            if value is None:
                if elem.length != 0:
                    raise NotFastPath  # deferred read: left to pydicom
                value = b""
            if elem.length == UNDEFINED:  # encapsulated pixel data: value read up to its delimiter
                out.append(_header(tag, elem.VR, UNDEFINED, implicit))
                out.append(value)
                out.append(_SEQ_DELIMITER)
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
                items.append(_ITEM.pack(0xFFFE, 0xE000, len(body)))
                items.append(body)
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


def _meta_element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    return _header(tag, vr, len(value), False) + value


def encode_meta(meta: Dataset) -> bytes:
    """The file meta group (explicit VR little endian) with its group length, from string/bytes values."""
    body = []
    for tag in sorted(meta._dict):
        if tag == 0x00020000:
            continue
        raw = meta._dict[tag]  # noqa: SLF001
        if type(raw) is RawDataElement and raw.VR and raw.is_little_endian and not raw.is_implicit_VR \
                and raw.value is not None and raw.length != UNDEFINED:
            body.append(_header(tag, raw.VR, len(raw.value), False) + raw.value)
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
        body.append(_meta_element(tag, vr, data))
    group = b"".join(body)
    return _meta_element(0x00020000, "UL", struct.pack("<I", len(group))) + group


def encode_file(ds: FileDataset) -> bytes:
    """Part 10 bytes of ``ds`` (preamble zeroed, file meta as given). Falls back to pydicom when needed."""
    implicit, little = ds.original_encoding
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if little is True and implicit is not None and ts not in DEFLATED:
        try:
            chunks = [PREAMBLE, encode_meta(ds.file_meta)]
            _encode_dataset(ds, bool(implicit), "iso8859", chunks)
            return b"".join(chunks)
        except NotFastPath:
            pass
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
