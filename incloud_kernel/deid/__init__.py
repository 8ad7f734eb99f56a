"""DICOM PS3.15 de-identification: the Basic Application Level Confidentiality Profile with options.

Public API: ``deidentify(ds, context) -> new Dataset`` (ingest and the browser uploader reuse it),
``DeidContext`` (site key, options, pseudonym callback, date-offset source) and ``run_batch`` for folders.
Nothing in this package may put a DICOM header value into a message, log line or exception.
"""
from __future__ import annotations

from incloud_kernel.deid.context import DeidContext
from incloud_kernel.deid.deidentify import deidentify
from incloud_kernel.deid.errors import BurnedInText, DeidError, InvalidInput

__all__ = ["DeidContext", "deidentify", "DeidError", "InvalidInput", "BurnedInText"]
