"""Small identified MR studies for ingest tests: T1w, BOLD and DWI series as classic MR Image Storage files.

Used only when the synthetic cohort generator (``incloud_kernel.synth.make_study``) is not available; the values
are invented (no real person) but look identifying, so the leak checker has something to find.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "HOSP123456", "PatientBirthDate": "19800101",
           "PatientSex": "F", "InstitutionName": "Saint Example Hospital", "ReferringPhysicianName": "House^Greg",
           "AccessionNumber": "ACC778899", "StudyID": "S4242"}


def _slice(study: dict, series_uid: str, number: int, description: str, z: int, nz: int, volume: int,
           pixels: np.ndarray, tr: float, extra: dict) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    sop = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    for k, v in {**PATIENT, **study}.items():
        if k.startswith("_"):
            continue
        setattr(ds, k, v)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.ProtocolName = description
    ds.FrameOfReferenceUID = study["FrameOfReferenceUID"]
    ds.InstanceNumber = volume * nz + z + 1
    ds.AcquisitionNumber = volume + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient = [-32.0, -32.0, float(z * 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [4, 4], 4
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = tr * 1000, 30, 90, 3
    ds.AcquisitionTime = f"1000{volume % 60:02d}.000000"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def make_small_study(out: Path, *, seed: int = 0, nz: int = 8, bold_volumes: int = 4,
                     patient_id: str = PATIENT["PatientID"], extra_series: tuple[str, ...] = (),
                     study_uid: str | None = None) -> dict[str, list[Path]]:
    """Write a T1w, a BOLD and a DWI series under ``out``, plus one single-volume series per description in
    ``extra_series`` (e.g. ``gre_field_mapping``: no default BIDS rule names it); returns description -> files."""
    rng = np.random.default_rng(seed)
    study = {"StudyInstanceUID": study_uid or generate_uid(), "StudyDate": "20260102", "StudyTime": "101500",
             "FrameOfReferenceUID": generate_uid(), "PatientID": patient_id}
    yy, xx = np.mgrid[:16, :16]
    head = ((yy - 8) ** 2 + (xx - 8) ** 2 < 40).astype(float)
    written: dict[str, list[Path]] = {}
    specs = [("t1_mprage", 1, 1, 2.3, {}), ("bold_rest", 2, bold_volumes, 2.0, {}),
             ("dwi_b1000", 3, 4, 6.0, {})]
    specs += [(description, 4 + i, 1, 0.5, {}) for i, description in enumerate(extra_series)]
    for description, number, volumes, tr, _ in specs:
        series_uid = generate_uid()
        folder = out / description
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(volumes):
            extra: dict = {}
            if description.startswith("dwi"):
                b = 0 if v == 0 else 1000
                extra = {"DiffusionBValue": b,
                         "DiffusionGradientOrientation": [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]][v]}
            if volumes > 1:
                extra["TemporalPositionIdentifier"] = v + 1
                extra["NumberOfTemporalPositions"] = volumes
            for z in range(nz):
                pixels = 500 * head + rng.integers(0, 50, size=head.shape)
                ds = _slice(study, series_uid, number, description, z, nz, v, pixels, tr, extra)
                path = folder / f"{v:03d}_{z:03d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written.setdefault(description, []).append(path)
    return written


def _companion(like: Path, sop_class: str, modality: str, number: int) -> FileDataset:
    """A new single-instance series of ``sop_class`` in the study (and of the patient) of ``like``."""
    import pydicom

    src = pydicom.dcmread(like)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    for keyword in (*PATIENT, "StudyInstanceUID", "StudyDate", "StudyTime"):
        if keyword in src:
            setattr(ds, keyword, src.data_element(keyword).value)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), number, 1
    return ds


def _save(ds: FileDataset, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    ds.save_as(path, enforce_file_format=True)
    return path


def add_secondary_capture(out: Path, like: Path) -> Path:
    """A burned-in secondary capture (BurnedInAnnotation YES) in the study of ``like``, in its own series."""
    from pydicom.uid import SecondaryCaptureImageStorage

    ds = _companion(like, SecondaryCaptureImageStorage, "OT", 99)
    ds.ConversionType, ds.SeriesDescription, ds.BurnedInAnnotation = "WSD", "screen save", "YES"
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(256)
    return _save(ds, out, "sc_000.dcm")


#: Identities planted by ``plant_identities``: every value is made of distinctive words only, so a scan for
#: them (``leakscan.identity_needles``) cannot match ordinary text. Device attributes (StationName,
#: DeviceSerialNumber) are left out: the site's default options retain them by choice.
PLANTED = {
    "PatientName": "Quenzelmark^Ottiline",
    "PatientID": "QZ90817263",
    "PatientBirthDate": "19610723",
    "OtherPatientIDs": "QZOTHER4711",
    "AccessionNumber": "ACQZ55102",
    "InstitutionName": "Brightwater Ostmarkklinik",
    "InstitutionAddress": "Zwiebelfeldweg Hinterbrunnstadt",
    "ReferringPhysicianName": "Vandersloot^Hieronymus",
    "OperatorsName": "Krzyzanowska^Dobromila",
    "RequestingPhysician": "Pfefferkorn^Adalbrand",
}
#: Where the surname and other tokens are planted beyond the identifying attributes themselves (issue 11,
#: item 1 and "Done when"): free text the profile keeps or cleans, private tags and nested sequences.
PLANTED_TEXT = {
    "SequenceName": "*tfl_Quenzelmark",
    "ImageComments": "Quenzelmark ACQZ55102 Ostmarkklinik",
    "ProtocolName": "Quenzelmark Vandersloot",  # X/D in the basic profile
    "RequestedProcedureDescription": "Quenzelmark Ottiline",  # X/Z
    "StudyComments": "QZ90817263 Hinterbrunnstadt",
    "AdditionalPatientHistory": "Ottiline 19610723",
    "PatientComments": "Vandersloot Krzyzanowska",
}


def plant_identities(files: list[Path]) -> set[str]:
    """Rewrite ``files`` with ``PLANTED`` and ``PLANTED_TEXT`` values, a private block and nested sequences that
    hold them too (and an original UID); returns the original UIDs now in the files (to look for them later)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    referenced = generate_uid()
    uids: set[str] = {referenced}
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in {**PLANTED, **PLANTED_TEXT}.items():
            if keyword == "ProtocolName":  # keep the naming rules' word in it
                value = f"{ds.SeriesDescription} {value}"
            setattr(ds, keyword, value)
        block = ds.private_block(0x0029, "QZVENDOR 1.0", create=True)
        block.add_new(0x10, "LO", PLANTED["PatientName"])
        block.add_new(0x11, "LT", PLANTED_TEXT["ImageComments"])
        block.add_new(0x12, "UI", referenced)
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "QZ1", "99QZ", "Quenzelmark Ottiline"
        request = Dataset()
        request.RequestedProcedureDescription = PLANTED_TEXT["RequestedProcedureDescription"]
        request.ScheduledProcedureStepDescription = "Vandersloot Ostmarkklinik"
        request.RequestedProcedureID = "RPQZ4411"
        request.ScheduledProtocolCodeSequence = Sequence([code])  # nested two levels deep
        ds.RequestAttributesSequence = Sequence([request])
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = referenced
        ds.ReferencedStudySequence = Sequence([ref])
        ds.ProcedureCodeSequence = Sequence([code])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            uids.add(str(ds.get(keyword)))
        ds.save_as(path, enforce_file_format=True)
    return uids


def make_ct(paths: list[Path]) -> None:
    """Turn a series written by ``make_small_study`` into a CT series (CT Image Storage, Hounsfield rescale)."""
    import pydicom
    from pydicom.uid import CTImageStorage

    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.Modality, ds.RescaleIntercept, ds.RescaleSlope, ds.KVP = "CT", -1024, 1, 120
        ds.save_as(path, enforce_file_format=True)


def add_structured_report(out: Path, like: Path) -> Path:
    """A Basic Text SR (a dose report's kind: no pixels, nothing dcm2niix converts) in the study of ``like``."""
    ds = _companion(like, "1.2.840.10008.5.1.4.1.1.88.11", "SR", 90)  # Basic Text SR Storage
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    return _save(ds, out, "sr_000.dcm")
