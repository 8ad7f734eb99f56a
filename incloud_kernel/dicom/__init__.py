"""The DICOM network edge: Orthanc configured from the site config, supervised, and read over its REST API.

Identified data lives in Orthanc only until the ingest worker has taken a study; nothing here logs a header value.
"""
