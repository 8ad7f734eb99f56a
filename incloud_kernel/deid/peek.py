"""Read an element's value from a source dataset without converting it in place.

pydicom's ``ds.X`` / ``ds.get`` / ``ds[tag]`` replace the raw element in the dataset by its converted form; the
de-identifier copies kept elements from their raw bytes (see ``writer``), so checks made before the profile is
applied (pixel data size, burned-in flag, SOP UIDs) read through ``peek`` instead. Never logs a value.
"""
from __future__ import annotations

import struct
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.tag import BaseTag

_US = struct.Struct("<H")
#: Tags read on every file, so their implicit-VR raw elements can be decoded without a dictionary lookup.
_FAST_VRS = {0x00280010: "US", 0x00280011: "US", 0x00280002: "US", 0x00280100: "US", 0x00280004: "CS",
             0x00080016: "UI", 0x00080018: "UI", 0x00280301: "CS", 0x00020010: "UI", 0x00020002: "UI",
             0x00020003: "UI"}
_TAGS: dict[str | int, BaseTag] = {}


def _tag(keyword: str | int) -> BaseTag | None:
    """The tag of a keyword (or int), as a BaseTag: pydicom's lookups take those without converting."""
    tag = _TAGS.get(keyword)
    if tag is None:
        number = tag_for_keyword(keyword) if isinstance(keyword, str) else keyword
        if number is None:
            return None
        tag = _TAGS[keyword] = BaseTag(number)
    return tag


def peek_element(ds: Dataset, keyword: str | int) -> DataElement | None:
    """The element converted to a DataElement, leaving ``ds`` unchanged (deferred values are read by pydicom)."""
    tag = _tag(keyword)
    if tag is None:
        return None
    elem = ds.get_item(tag, keep_deferred=True)  # the raw form is what we must not lose
    if elem is None:
        return None
    if type(elem) is RawDataElement and (elem.value is not None or elem.length == 0):
        return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)  # noqa: SLF001
    return ds[tag]


def peek(ds: Dataset, keyword: str | int, default: Any = None) -> Any:
    """The element's value (``default`` when absent), leaving ``ds`` unchanged.

    Fast paths for the checks made on every file: a single little-endian US value, and ASCII UI/CS strings
    (as pydicom would return them: stripped of padding); anything else is converted by pydicom.
    """
    tag = _tag(keyword)
    raw = ds.get_item(tag, keep_deferred=True) if tag is not None else None
    if raw is None and tag is not None:
        return default
    if type(raw) is RawDataElement and raw.is_little_endian and raw.value is not None:
        vr, value = raw.VR, raw.value
        if vr is None and raw.is_implicit_VR:
            vr = _FAST_VRS.get(tag)
        if vr == "US" and len(value) == 2:
            return _US.unpack(value)[0]
        if vr in ("UI", "CS") and value.isascii() and b"\\" not in value:
            text = value.decode("ascii").strip(" \x00")
            return text
    elem = peek_element(ds, keyword)
    return default if elem is None else elem.value


def raw_length(ds: Dataset, keyword: str | int) -> int | None:
    """The stored value length in bytes without reading or converting the value (None: absent/undefined)."""
    tag = _tag(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return None
    if type(elem) is RawDataElement:
        return None if elem.length == 0xFFFFFFFF else elem.length
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else None
