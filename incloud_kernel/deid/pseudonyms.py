"""Pseudonyms: what Patient Name and Patient ID become. A callback; by default a keyed HMAC of the Patient ID.

The participant registry plugs its own callback in here (it knows the participant's internal ID). The default
is stable for a site key and irreversible without it. Never log the original ID.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable

from pydicom import Dataset

#: (dataset before de-identification) -> pseudonym used as PatientID and PatientName.
PseudonymCallback = Callable[[Dataset], str]


def participant_key(ds: Dataset) -> str:
    """The identity a participant is recognised by in the source: Patient ID, else name and birth date.

    Returns "" when the source carries none of them (then everything such a file holds maps to one pseudonym).
    """
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return "id:" + pid
    name = str(ds.get("PatientName", "") or "").strip()
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    return f"name:{name}|{birth}" if (name or birth) else ""


class HmacPseudonym:
    """Default callback: ``INC`` + 12 upper-case hex digits of HMAC-SHA256(site key, participant key).

    A class (not a closure) so that worker processes can receive it.
    """

    def __init__(self, key: bytes, prefix: str = "INC") -> None:
        self._key, self._prefix = key, prefix

    def __call__(self, ds: Dataset) -> str:
        digest = hmac.new(self._key, b"pseudonym:" + participant_key(ds).encode("utf-8", "replace"), hashlib.sha256)
        return self._prefix + digest.hexdigest()[:12].upper()

    def __repr__(self) -> str:
        return "HmacPseudonym()"


def hmac_pseudonym(key: bytes, prefix: str = "INC") -> PseudonymCallback:
    """The default pseudonym callback for a site key."""
    return HmacPseudonym(key, prefix)
