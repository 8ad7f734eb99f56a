"""Sequences kept as stored bytes: where an undefined-length value ends, where its items and their elements lie.

pydicom keeps a defined-length sequence as raw bytes until it is accessed, but parses an undefined-length one at
once, item by item, to find where it ends; for an enhanced multi-frame file that is tens of thousands of elements
(the per-frame functional groups) parsed into objects before anything is decided. The functions here find the
same boundaries from the element headers alone (tag, VR, length: no value is read, converted or copied), so
the functional groups can be read as raw bytes and de-identified in bulk (``deid.groups``). ``RawSequence`` is a
pydicom ``Sequence`` whose items pydicom parses from those bytes on first access.

Little endian only (explicit or implicit VR). Malformed input raises ``MalformedSequence`` (no value in it);
callers then leave the file to pydicom's own reader, which decides how to treat it.
"""
from __future__ import annotations

import io
import struct

import numpy as np

from pydicom.filereader import read_sequence
from pydicom.sequence import Sequence

from incloud_kernel.dicom.part10 import LONG_VRS, UNDEFINED_LENGTH

_TAG_LENGTH = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_UL = struct.Struct("<I")
_LONG = frozenset(vr.encode("ascii") for vr in LONG_VRS)
#: Explicit VRs with a 2-byte length (PS3.5 Table 7.1-2); any other VR bytes are not walked here.
_SHORT = frozenset(vr.encode("ascii") for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO",
                                                  "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"))
ITEM, ITEM_END, SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
#: One read per header in ``undefined_end``: the four 16-bit words after the tag's, as integers. The VR's two
#: bytes read as one little-endian word, for the VRs above.
_WORDS = struct.Struct("<HHHH")
_LONG_WORDS = frozenset(int.from_bytes(vr, "little") for vr in _LONG)
_SHORT_WORDS = frozenset(int.from_bytes(vr, "little") for vr in _SHORT)


class MalformedSequence(ValueError):
    """Element headers that do not add up (truncated, bad VR, stray delimiter); carries no value."""


#: tag, element start, value start, value length, element end, and for an undefined length the number of items
#: at its first level (-1 for a defined length: not walked)
Span = tuple[int, int, int, int, int, int]


def element_end(buf: bytes, pos: int, implicit: bool) -> Span:
    """(tag, ``pos``, value start, value length, end, items) of the element whose header starts at ``pos``.

    ``end`` is past the value, or past the Sequence Delimitation Item for an undefined length (whatever nests
    inside: items of defined or undefined length, sequences, encapsulated fragments).
    """
    try:
        if implicit:
            group, element, length = _TAG_LENGTH.unpack_from(buf, pos)
            start = pos + 8
        else:
            group, element, vr, length = _EXPLICIT.unpack_from(buf, pos)
            if vr in _LONG:
                length = _UL.unpack_from(buf, pos + 8)[0]
                start = pos + 12
            elif vr in _SHORT:
                start = pos + 8
            else:
                raise MalformedSequence("not a known explicit VR")
    except struct.error:
        raise MalformedSequence("truncated element header") from None
    if group == 0xFFFE:
        raise MalformedSequence("delimiter where an element was expected")
    if length != UNDEFINED_LENGTH:
        end = start + length
        if end > len(buf):
            raise MalformedSequence("value runs past the end")
        return (group << 16) | element, pos, start, length, end, -1
    end, count = undefined_end(buf, start, implicit)
    return (group << 16) | element, pos, start, length, end, count


def undefined_end(buf: bytes, pos: int, implicit: bool) -> tuple[int, int]:
    """(position past the Sequence Delimitation Item closing the undefined-length value starting at ``pos``,
    number of items at its first level).

    Only headers are read: items of defined length and elements of defined length are stepped over by their
    length; undefined lengths open a level that a Sequence Delimitation Item closes.
    """
    depth = 1
    count = 0
    size = len(buf)
    unpack = _WORDS.unpack_from  # one read per header: tag, then the VR and/or length words
    unpack_ul = _UL.unpack_from
    long_vrs, short_vrs = _LONG_WORDS, _SHORT_WORDS
    try:
        while True:
            group, element, low, high = unpack(buf, pos)
            if group == 0xFFFE:
                pos += 8
                if element == ITEM:
                    if depth == 1:
                        count += 1
                    if low != 0xFFFF or high != 0xFFFF:
                        pos += low | (high << 16)
                elif element == SEQUENCE_END:
                    depth -= 1
                    if depth == 0:
                        return pos, count
                elif element != ITEM_END:
                    raise MalformedSequence("unknown delimiter")
            elif implicit:
                pos += 8
                if low == 0xFFFF and high == 0xFFFF:
                    depth += 1
                else:
                    pos += low | (high << 16)
            elif low in short_vrs:
                pos += 8 + high
            elif low in long_vrs:
                length = unpack_ul(buf, pos + 8)[0]
                pos += 12
                if length == UNDEFINED_LENGTH:
                    depth += 1
                    continue
                pos += length
            else:
                raise MalformedSequence("not a known explicit VR")
            if pos > size:
                raise MalformedSequence("value runs past the end")
    except struct.error:
        raise MalformedSequence("no delimiter before the end") from None


def flat_item(value: bytes) -> list[tuple[int, int, int, int, int]] | None:
    """(tag, VR as a 16-bit word, element start, value start, end) of each element of a sequence value (explicit
    VR, without its closing delimiter) that holds exactly one item of elements of defined length; None for
    anything else (several items, a nested undefined length, a delimiter out of place, a truncated header).

    The quick walk of a functional group macro (``deid.groups``): None only means "walk it the general way".
    """
    size = len(value)
    if size < 8:
        return None
    group, element, low, high = _WORDS.unpack_from(value, 0)
    if group != 0xFFFE or element != ITEM:
        return None
    undefined = low == 0xFFFF and high == 0xFFFF
    end = size if undefined else 8 + (low | (high << 16))
    if end != size:
        return None  # a second item follows (or the length is wrong)
    unpack, unpack_ul, short_vrs, long_vrs = _WORDS.unpack_from, _UL.unpack_from, _SHORT_WORDS, _LONG_WORDS
    elements = []
    pos = 8
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, low, high = unpack(value, pos)
        if group == 0xFFFE:  # the item's own delimiter, then nothing more
            return elements if undefined and element == ITEM_END and pos + 8 == size and not (low or high) else None
        if low in short_vrs:
            start = pos + 8
            stop = start + high
        elif low in long_vrs and pos + 12 <= end:
            length = unpack_ul(value, pos + 8)[0]
            if length == UNDEFINED_LENGTH:
                return None
            start = pos + 12
            stop = start + length
        else:
            return None
        if stop > end:
            return None
        elements.append(((group << 16) | element, low, pos, start, stop))
        pos = stop
    return None if undefined else elements


def item_elements(value: bytes, implicit: bool) -> list[list[Span]]:
    """The elements (``Span``s) of each item of a sequence value (the value without its closing delimiter)."""
    return sequence_items(value, implicit)[0]


def sequence_items(value: bytes | memoryview, implicit: bool, closed: bool = False,
                   reuse: bool = True) -> tuple[list[list[Span]], int]:
    """(the elements of each item, where the walk ended) of the sequence value at the start of ``value``.

    ``closed``: the value runs on to its Sequence Delimitation Item (an undefined length read from a file);
    the walk ends past it, and a value without one is malformed. Otherwise the walk ends at the end of ``value``.
    ``reuse``: an item that stores the header bytes of an item walked before is not walked again (``_Walks``).
    """
    result: list[list[Span]] = []
    pos, size = 0, len(value)
    walks = _Walks(value, implicit) if reuse else None
    try:
        while pos < size:
            group, element, length = _TAG_LENGTH.unpack_from(value, pos)
            if (group, element) == (0xFFFE, SEQUENCE_END):
                if closed:
                    return result, pos + 8
                break
            if (group, element) != (0xFFFE, ITEM):
                raise MalformedSequence("not an item")
            known = walks.match(pos) if walks is not None else None
            if known is not None:
                spans, pos = known
                result.append(spans)
                continue
            item_start = pos
            pos += 8
            end = pos + length if length != UNDEFINED_LENGTH else size
            if end > size:
                raise MalformedSequence("item runs past the end")
            spans: list[Span] = []
            while pos < end:
                group, element, _ = _TAG_LENGTH.unpack_from(value, pos)
                if group == 0xFFFE:
                    if element != ITEM_END or length != UNDEFINED_LENGTH:
                        raise MalformedSequence("stray delimiter in an item")
                    pos += 8
                    break
                span = element_end(value, pos, implicit)
                spans.append(span)
                pos = span[4]
            else:
                if length == UNDEFINED_LENGTH or pos != end:
                    raise MalformedSequence("item not closed")
            result.append(spans)
            if walks is not None:
                walks.learn(item_start, pos, spans)
    except struct.error:
        raise MalformedSequence("truncated item") from None
    if closed:
        raise MalformedSequence("no delimiter before the end")
    return result, pos


class _Walks:
    """Walks of items already made, reused for a later item that stores the same bytes at the same offsets
    everywhere except inside the values of defined length (which no walk reads: it steps over them).

    Why: the 176 items of an enhanced MR's per-frame functional groups hold the same elements with values of the
    same lengths, frame after frame; only the values differ. The walk reads nothing but element and item
    headers, so an item whose header bytes all equal a walked item's (compared in one numpy operation) walks
    the same way: its elements are the walked item's, shifted. The index of compared bytes is made from the real
    walk of the first item (``_leaf_values``), so the two cannot disagree; an item that matches no walk is walked.
    """

    KEPT = 6  # walks kept per sequence: the distinct shapes of a frame's item, tried most recent first

    def __init__(self, value: bytes | memoryview, implicit: bool) -> None:
        self.value, self.implicit, self.size = value, implicit, len(value)
        self.array: np.ndarray | None = None
        self.known: list[tuple[int, np.ndarray, bytes, list[Span]]] = []  # (length, index, expected, spans at 0)
        self.learned = 0

    def match(self, pos: int) -> tuple[list[Span], int] | None:
        """(the elements, the end) of the item at ``pos`` when it stores a known walk's header bytes."""
        for k, (length, index, expected, spans) in enumerate(self.known):
            if pos + length <= self.size and self.array[index + pos].tobytes() == expected:  # type: ignore[index]
                if k:
                    self.known.insert(0, self.known.pop(k))
                return [(t, a + pos, v + pos, n, e + pos, c) for t, a, v, n, e, c in spans], pos + length
        return None

    def learn(self, start: int, end: int, spans: list[Span]) -> None:
        """Keep the walk of the item at ``start`` (up to ``end``) whose elements are ``spans``."""
        if self.learned >= 2 * self.KEPT:
            return  # items that never repeat a shape: stop paying for the index
        self.learned += 1
        try:
            leaves: list[tuple[int, int]] = []
            _leaf_values(self.value, spans, self.implicit, leaves)
        except MalformedSequence:
            return
        if self.array is None:
            self.array = np.frombuffer(self.value, dtype=np.uint8)
        read = np.ones(end - start, dtype=bool)
        for a, b in leaves:
            read[a - start:b - start] = False
        index = np.flatnonzero(read)
        expected = self.array[index + start].tobytes()
        relative = [(t, a - start, v - start, n, e - start, c) for t, a, v, n, e, c in spans]
        self.known.insert(0, (end - start, index, expected, relative))
        del self.known[self.KEPT:]


def _leaf_values(buf: bytes | memoryview, spans: list[Span], implicit: bool, out: list[tuple[int, int]]) -> None:
    """(start, end) of every value of defined length under ``spans``, found by the walk itself (recursively into
    values of undefined length); everything else there is header bytes, which any walk of it reads."""
    for _, _, start, length, end, _ in spans:
        if length != UNDEFINED_LENGTH:
            out.append((start, end))
            continue
        for item in sequence_items(memoryview(buf)[start:end - 8], implicit, reuse=False)[0]:
            _leaf_values(buf, [(t, a + start, v + start, n, e + start, c) for t, a, v, n, e, c in item], implicit, out)


class RawSequence(Sequence):
    """A sequence held as its stored value; pydicom parses the items on first access (iteration, len, index).

    What nobody looks into (a private sequence the profile removes whole) is never parsed. ``value`` is the
    sequence's value as stored, without the closing delimiter; ``encoding`` is the enclosing character set.
    """

    def __init__(self, value: bytes, implicit: bool, encoding: object, undefined_length: bool) -> None:
        self._raw: bytes | None = value
        self._implicit = implicit
        self._encoding = encoding
        super().__init__()
        self.is_undefined_length = undefined_length

    @property
    def parsed(self) -> bool:
        """Whether anything has looked into the items yet."""
        return self._raw is None

    @property
    def _list(self) -> list:  # type: ignore[override]
        if self._raw is not None:
            raw, self._raw = self._raw, None
            parsed = read_sequence(io.BytesIO(raw), self._implicit, True, len(raw), self._encoding)
            self.__dict__["_items"] = parsed._list  # noqa: SLF001 - the parsed items become this sequence's
        return self.__dict__["_items"]

    @_list.setter
    def _list(self, items: list) -> None:
        self.__dict__["_items"] = items
