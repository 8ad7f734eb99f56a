"""Date shifting for Retain Longitudinal Temporal Information with Modified Dates.

Each participant gets one secret offset in whole days (a keyed HMAC of the participant key), so every date of
that participant moves by the same amount and intervals between visits survive. Times of day are kept.
Never log a date or the offset of a named participant.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Callable

from pydicom import Dataset

from incloud_kernel.deid.pseudonyms import participant_key

#: (dataset before de-identification) -> offset in days (negative: back in time).
DateOffsetSource = Callable[[Dataset], int]

MIN_SHIFT_DAYS = 365
MAX_SHIFT_DAYS = 3650


class HmacDateOffset:
    """Default: minus 365..3650 days, from HMAC-SHA256(site key, participant key). A class so workers get it."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, ds: Dataset) -> int:
        digest = hmac.new(self._key, b"dateshift:" + participant_key(ds).encode("utf-8", "replace"), hashlib.sha256)
        span = MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1
        return -(MIN_SHIFT_DAYS + int.from_bytes(digest.digest()[:8], "big") % span)

    def __repr__(self) -> str:
        return "HmacDateOffset()"


def hmac_date_offset(key: bytes) -> DateOffsetSource:
    """The default date-offset source for a site key."""
    return HmacDateOffset(key)


def shift_da(value: str, days: int) -> str | None:
    """Shift a DA value (YYYYMMDD) by ``days``; None if it is not a full date (the caller then removes it)."""
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
    try:
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT value (YYYYMMDD[HHMMSS.FFFFFF][&ZZXX]); the rest is kept."""
    value = value.strip()
    head = shift_da(value[:8], days) if len(value) >= 8 else None
    return None if head is None else head + value[8:]
