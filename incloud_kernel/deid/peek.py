"""Read an element's value from a source dataset without converting it in place.

pydicom's ``ds.X`` / ``ds.get`` / ``ds[tag]`` replace the raw element in the dataset by its converted form; the
de-identifier copies kept elements from their raw bytes (see ``writer``), so checks made before the profile is
applied (pixel data size, burned-in flag, SOP UIDs) read through ``peek`` instead. Never logs a value.
"""
from __future__ import annotations

from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element

_MISSING = object()


def peek_element(ds: Dataset, keyword: str | int) -> DataElement | None:
    """The element converted to a DataElement, leaving ``ds`` unchanged (deferred values are read by pydicom)."""
    tag = tag_for_keyword(keyword) if isinstance(keyword, str) else keyword
    if tag is None:
        return None
    elem = ds._dict.get(tag)  # noqa: SLF001 - the raw form is what we must not lose
    if elem is None:
        return None
    if type(elem) is RawDataElement and (elem.value is not None or elem.length == 0):
        return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)  # noqa: SLF001
    return ds[tag]


def peek(ds: Dataset, keyword: str | int, default: Any = None) -> Any:
    """The element's value (``default`` when absent), leaving ``ds`` unchanged."""
    elem = peek_element(ds, keyword)
    return default if elem is None else elem.value


def raw_length(ds: Dataset, keyword: str | int) -> int | None:
    """The stored value length in bytes without reading or converting the value (None: absent/undefined)."""
    tag = tag_for_keyword(keyword) if isinstance(keyword, str) else keyword
    elem = ds._dict.get(tag)  # noqa: SLF001
    if elem is None:
        return None
    if type(elem) is RawDataElement:
        return None if elem.length == 0xFFFFFFFF else elem.length
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else None
