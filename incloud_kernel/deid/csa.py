"""Cleaning of Siemens CSA headers (format "SV10", CSA2) kept by Retain Safe Private.

A CSA header stores each field name and value in fixed-size, NUL-terminated buffers; the scanner leaves whatever
was in memory after the NUL, and that slack has been seen to hold the station name. Cleaning zeroes every byte
after each terminator, keeping the layout (offsets, lengths) that dcm2niix and nibabel read. A header that does not
parse as CSA2 is dropped by the caller. Never log header contents.
"""
from __future__ import annotations

import struct

NAME_LEN = 64
TAG_HEADER = struct.Struct("<64si4siii")  # name, vm, vr, syngodt, n_items, marker
ITEM_HEADER = struct.Struct("<4i")


def _zero_after_nul(buf: bytearray, start: int, length: int) -> None:
    field = buf[start:start + length]
    nul = field.find(b"\x00")
    if nul >= 0:
        buf[start + nul:start + length] = bytes(length - nul)


def clean_csa2(data: bytes) -> bytes | None:
    """The header with all slack bytes zeroed, or None if ``data`` is not a well-formed CSA2 header."""
    if data[:4] != b"SV10" or len(data) < 16:
        return None
    buf = bytearray(data)
    try:
        (n_tags,) = struct.unpack_from("<I", buf, 8)
        if n_tags < 1 or n_tags > 1000:
            return None
        pos = 16
        for _ in range(n_tags):
            _, _, _, _, n_items, _ = TAG_HEADER.unpack_from(buf, pos)
            _zero_after_nul(buf, pos, NAME_LEN)
            _zero_after_nul(buf, pos + NAME_LEN + 4, 4)  # VR
            pos += TAG_HEADER.size
            if n_items < 0 or n_items > 10000:
                return None
            for _ in range(n_items):
                x = ITEM_HEADER.unpack_from(buf, pos)
                item_len = x[1]
                pos += ITEM_HEADER.size
                padded = (item_len + 3) // 4 * 4
                if item_len < 0 or pos + padded > len(buf):
                    return None
                _zero_after_nul(buf, pos, padded)
                pos += padded
    except struct.error:
        return None
    # Anything after the last item (padding) is slack too.
    buf[pos:] = bytes(len(buf) - pos)
    return bytes(buf)
