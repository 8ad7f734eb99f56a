"""Errors that users see as one line, and the rule that no patient-identifying value goes into them.

Every expected failure raises an ``IncloudError`` subclass whose message is a complete, single-line sentence
safe to print and log: it may name files, internal IDs and settings, never a DICOM header value.
The CLI turns these into ``error: <message>`` and a non-zero exit, never a traceback.
"""
from __future__ import annotations


class IncloudError(Exception):
    """Base of all user-facing errors; ``exit_code`` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(IncloudError):
    """The site configuration file or an ``INCLOUD_*`` variable is invalid."""


class DatabaseError(IncloudError):
    """The metadata database is unreachable or not at the expected schema."""


class StorageError(IncloudError):
    """The archive root (or another storage root) cannot be written or read."""


class ValidationError(IncloudError):
    """Input failed validation (bad names, path traversal, duplicate codes...)."""


class PermissionDenied(IncloudError):
    """The acting user lacks the role for this action."""

    exit_code = 3


class NotFound(IncloudError):
    """The object does not exist, or the user may not know that it exists."""

    exit_code = 4
