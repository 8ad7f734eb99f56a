"""UID replacement: a keyed HMAC of the original UID, written as ``2.25.<decimal integer>``.

The same input UID gives the same output UID in every run, process and machine that shares the site key
(``Site.secret_key()``), so references between instances survive de-identification done at different times.
Without the key the mapping cannot be reversed or recomputed. Never log input UIDs.
"""
from __future__ import annotations

import hashlib
import hmac

from pydicom.uid import UID_dictionary

#: Our Implementation Class UID, derived (not registered) under the 2.25 UUID arc from a fixed label.
IMPLEMENTATION_CLASS_UID = "2.25." + str(int.from_bytes(hashlib.sha256(b"incloud-deid-implementation").digest()[:16], "big"))
IMPLEMENTATION_VERSION_NAME = "INCLOUD_DEID_1"


class UidMapper:
    """Maps instance UIDs to keyed-HMAC UIDs; caches per process (the map is a pure function of key and UID)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        out = self._cache.get(uid)
        if out is None:
            digest = hmac.new(self._key, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
            # 128 bits, as for UUID-derived UIDs (PS3.5 B.2): at most 39 digits, 44 characters in all.
            out = "2.25." + str(int.from_bytes(digest[:16], "big"))
            self._cache[uid] = out
        return out


def is_well_known(uid: str) -> bool:
    """True for UIDs registered in the standard (SOP classes, transfer syntaxes, coding schemes...): kept."""
    return str(uid).strip().rstrip("\x00") in UID_dictionary
