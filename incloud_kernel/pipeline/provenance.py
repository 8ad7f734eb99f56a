"""Provenance of derivatives: the key that makes a computation happen once, and what is recorded with it.

Every derivative gets a ``Provenance`` row (pipeline and stage version, parameters, input checksums, library
versions with the workstation image's digest under ``image``, host, runtime) and its pipeline folder a BIDS-derivatives ``dataset_description.json`` whose
``GeneratedBy`` names the pipeline and version. The key hashes everything that determines the outputs, and the
database holds it UNIQUE: whichever attempt inserts it first records the derivative; any other attempt (a
retry after a killed worker, a re-run) finds it and computes nothing. Never records a header value or a token.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import Provenance
from incloud_kernel.archive.storage import atomic_write
from incloud_kernel.pipeline.container import image_digest

#: Libraries every stage's provenance lists, besides the stage's own ``libraries``.
BASE_LIBRARIES = ("incloud", "numpy", "nibabel", "dask", "distributed")


def key(pipeline: str, pipeline_version: str, stage: str, stage_version: str, parameters: Mapping[str, Any],
        input_checksums: Iterable[str]) -> str:
    """SHA-256 (hex) of what determines a stage's outputs; input order does not matter."""
    payload = json.dumps({"pipeline": pipeline, "pipeline_version": pipeline_version, "stage": stage,
                          "stage_version": stage_version, "parameters": dict(parameters),
                          "inputs": sorted(input_checksums)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


#: ``libraries["image"]`` of a derivative computed outside the workstation image (a node's own environment).
NO_IMAGE = "none"


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the base libraries and ``extra`` (``"absent"`` for one not installed), and under
    ``image`` the digest of the workstation image that computed it (``NO_IMAGE`` outside one): the same digest
    means the same files, whichever node or host OS ran the stage."""
    versions = {"python": platform.python_version(), "image": image_digest() or NO_IMAGE}
    for name in (*BASE_LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def host() -> str:
    return platform.node() or "unknown"


def find(db: DB, provenance_key: str) -> Provenance | None:
    return db.scalars(select(Provenance).where(Provenance.key == provenance_key)).one_or_none()


def dataset_description(root: Path, pipeline: str, version: str, description: str = "") -> Path:
    """Write ``derivatives/<pipeline>-<version>/dataset_description.json`` once (BIDS 1.9 derivatives:
    ``DatasetType`` derivative, ``GeneratedBy`` with name and version, ``SourceDatasets`` the raw archive)."""
    rel = f"derivatives/{pipeline}-{version}/dataset_description.json"
    if not (root / rel).exists():
        digest = image_digest()
        container = ({"Type": "podman", "Tag": digest} if digest
                     else {"Type": "python", "Tag": sys.version.split()[0]})
        doc = {"Name": f"INCloud {pipeline} {version}", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
               "GeneratedBy": [{"Name": f"incloud-{pipeline}", "Version": version,
                                "Description": description or f"INCloud pipeline {pipeline}",
                                "Container": container}],
               "SourceDatasets": [{"URL": "../../"}]}
        try:
            atomic_write(root, rel, json.dumps(doc, indent=2).encode())
        except Exception:  # noqa: BLE001 - written meanwhile by a concurrent task: the same content
            if not (root / rel).exists():
                raise
    return root / rel


__all__ = ["key", "library_versions", "host", "find", "dataset_description", "BASE_LIBRARIES", "NO_IMAGE"]
