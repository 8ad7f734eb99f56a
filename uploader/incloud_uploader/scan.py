"""What a folder, a zip or a DICOMDIR (a CD/DVD) holds: its DICOM series, for the local page to list.

The series list carries the patient's identities (name, ID, birth date) because the clinic's user must see whose
scans they pick; it is shown only on the local page (127.0.0.1, one-time token) and is never sent anywhere nor
written to disk. Files that are not DICOM, corrupt instances and burned-in series are counted and explained, never
silently dropped. Inputs are expanded by ``incloud_kernel.deid.runner.enumerate_jobs`` (folders walked, a
DICOMDIR's referenced files, zip members), the same expansion ``incloud deid`` uses.
"""
from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from incloud_kernel.deface.dicom import contrast_of
from incloud_kernel.deid.burned_in import burned_in_reason
from incloud_kernel.deid.errors import DeidError
from incloud_kernel.deid.runner import Job, enumerate_jobs

#: SOP class of a DICOMDIR (an index of the disc, not an image).
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff")


class ScanError(Exception):
    """The chosen input cannot be read at all; the message is for the page (no header value)."""


@dataclass
class FoundSeries:
    """One series found in the input. ``patient`` holds identities: local page only, never sent or logged."""

    key: str  # a local handle (index), never the Series Instance UID on the page
    series_uid: str
    study_uid: str
    patient: dict[str, str]
    description: str
    date: str
    modality: str
    number: int
    kind: str | None  # structural head contrast (T1w, T2w, FLAIR, PD): refaced before upload
    jobs: list[Job] = field(default_factory=list)
    blocked: str | None = None  # why the series stays on this computer

    @property
    def images(self) -> int:
        return len(self.jobs)

    def summary(self) -> dict[str, Any]:
        return {"key": self.key, "description": self.description, "date": self.date, "modality": self.modality,
                "number": self.number, "images": self.images, "kind": self.kind, "blocked": self.blocked,
                "patient": self.patient, "study": self.study_key}

    @property
    def study_key(self) -> str:
        return self.patient.get("_study", "")


@dataclass
class ScanResult:
    series: list[FoundSeries]
    not_dicom: int = 0
    images: int = 0  # of the files that are not DICOM, how many are picture files (JPEG, PNG...)
    corrupt: int = 0
    dicomdirs: int = 0

    def messages(self) -> list[str]:
        out = []
        if self.not_dicom:
            kind = f" ({self.images} picture files such as JPEG: not DICOM, cannot be uploaded)" if self.images else ""
            out.append(f"{self.not_dicom} file(s) are not DICOM and were left out{kind}.")
        if self.corrupt:
            out.append(f"{self.corrupt} DICOM file(s) are damaged; their series are kept on this computer.")
        if not self.series:
            out.append("No DICOM series found in this folder, zip or disc.")
        return out


def read_job(job: Job, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read one input (a file or a zip member); pydicom's warnings (they quote values) are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if job.member is not None:
            with zipfile.ZipFile(job.path) as zf:
                data = io.BytesIO(zf.read(job.member))
            return pydicom.dcmread(data, stop_before_pixels=stop_before_pixels)
        return pydicom.dcmread(job.path, stop_before_pixels=stop_before_pixels)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return " ".join(str(ds.get(keyword, "") or "").split())


def _complete_pixels(ds: pydicom.Dataset) -> bool:
    """False when the pixel data is shorter than the image it claims (a truncated copy from a disc)."""
    if "PixelData" not in ds:
        return True
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and pydicom.uid.UID(str(ts)).is_compressed:
        return True
    try:
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * \
            int(ds.get("SamplesPerPixel", 1) or 1) * (int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return False
    return len(ds.PixelData) >= need


def scan(source: str | Path) -> ScanResult:
    """The series in ``source`` (a folder, a ``.zip`` or a DICOMDIR), sorted by study and series number."""
    source = Path(source)
    if not source.exists():
        raise ScanError("the chosen folder, zip or disc does not exist")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        jobs = enumerate_jobs([source])
    except (DeidError, OSError, zipfile.BadZipFile):
        raise ScanError("the chosen input cannot be read (not a folder, a zip or a DICOMDIR)") from None
    result = ScanResult(series=[])
    by_uid: dict[str, FoundSeries] = {}
    broken: set[str] = set()
    studies: dict[str, str] = {}
    for job in jobs:
        try:
            ds = read_job(job)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError,
                zipfile.BadZipFile):
            name = (job.member or job.path).lower()
            result.not_dicom += 1
            result.images += name.endswith(IMAGE_SUFFIXES)
            continue
        except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
            result.corrupt += 1
            continue
        sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
        if "DirectoryRecordSequence" in ds or sop_class == DICOMDIR_SOP:
            result.dicomdirs += 1  # the disc's index: its referenced files are walked themselves
            continue
        suid = str(ds.get("SeriesInstanceUID", "") or "")
        if not suid or not ds.get("SOPInstanceUID"):
            result.not_dicom += 1
            continue
        series = by_uid.get(suid)
        if series is None:
            study = str(ds.get("StudyInstanceUID", "") or "")
            studies.setdefault(study, f"study{len(studies) + 1}")
            patient = {"name": _text(ds, "PatientName").replace("^", " "), "id": _text(ds, "PatientID"),
                       "birth_date": _text(ds, "PatientBirthDate"), "_study": studies[study],
                       "_dicom_name": _text(ds, "PatientName")}
            try:
                number = int(ds.get("SeriesNumber", 0) or 0)
            except (TypeError, ValueError):
                number = 0
            series = FoundSeries(key="", series_uid=suid, study_uid=study, patient=patient,
                                 description=_text(ds, "SeriesDescription") or _text(ds, "ProtocolName"),
                                 date=_text(ds, "SeriesDate") or _text(ds, "StudyDate"),
                                 modality=_text(ds, "Modality"), number=number, kind=contrast_of(ds))
            series.blocked = burned_in_reason(ds) and \
                "may show text burned into its pixels (burned-in annotation): kept on this computer"
            by_uid[suid] = series
        if not _complete_pixels(ds):
            result.corrupt += 1
            broken.add(suid)
        series.jobs.append(job)
    for suid in broken:
        by_uid[suid].blocked = by_uid[suid].blocked or "a damaged (truncated) instance: kept on this computer"
    result.series = sorted(by_uid.values(), key=lambda s: (s.study_key, s.number, s.description))
    for i, s in enumerate(result.series):
        s.key = f"s{i + 1}"
    return result
