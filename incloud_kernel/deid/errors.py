"""Per-file failures of de-identification, each with a value-free reason that goes to the quarantine record.

Reasons name the problem (and at most a tag number or exception type), never a header value: pydicom's own
exception texts can embed values, so they are never turned into strings here.
"""
from __future__ import annotations

from incloud_kernel.errors import IncloudError


class DeidError(IncloudError):
    """A file could not be de-identified; ``reason`` is a short value-free code for the quarantine record."""

    reason = "deid-failed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason


class InvalidInput(DeidError):
    """The file is not a DICOM instance we can rewrite (truncated, no preamble, not DICOM, DICOMDIR...)."""

    reason = "invalid-input"


class BurnedInText(DeidError):
    """The instance may carry text burned into its pixels; held back unless the site allows it."""

    reason = "burned-in-annotation"
