"""Ingest: from a stable study in Orthanc (or a folder, zip or DICOMDIR) to de-identified, refaced BIDS in the archive.

Identified DICOM never enters the archive; nothing here logs a header value.
"""
