"""Scanner-like DICOM headers for synthetic studies, with identities planted where hospitals' data has them.

Builds pydicom datasets module by module (Patient, General Study, Patient Study, General Series, Frame of
Reference, General Equipment, MR Image, SOP Common), plus the places identities hide in real data: Request
Attributes and Referenced Patient sequences, a vendor-like private block, descriptions. Only invented values
from ``identities`` and ``sites`` go in; this module must never copy a header from real data.
"""
from __future__ import annotations

import datetime as _dt

import hashlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from incloud_kernel.synth.identities import Identity
from incloud_kernel.synth.sites import Site

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: The private creator of the vendor-like private block; element 0x01 holds a planted identity (patient name).
PRIVATE_CREATOR = "SYNTHVENDOR MR 1.0"
PRIVATE_GROUP = 0x0029


class UidFactory:
    """Deterministic UIDs: the same seed and name always give the same UID (``2.25.`` form, PS3.5 B.2)."""

    def __init__(self, seed: int, study_key: str) -> None:
        self.seed = seed
        self.study_key = study_key

    def __call__(self, *parts: object) -> str:
        text = "|".join(["incloud-synth", str(self.seed), self.study_key, *map(str, parts)])
        return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:32], 16))


@dataclass
class StudyContext:
    """What every instance of one study shares."""

    identity: Identity
    site: Site
    uids: UidFactory
    study_uid: str
    frame_of_reference_uid: str
    patient_uid: str  # planted in Referenced Patient Sequence


def study_dataset(ctx: StudyContext) -> Dataset:
    """Patient, study, equipment and SOP-common attributes shared by every instance of the study."""
    idn, site = ctx.identity, ctx.site
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = idn.study_date
    ds.InstanceCreationTime = idn.study_time
    # Patient
    ds.PatientName = idn.patient_name
    ds.PatientID = idn.patient_id
    ds.IssuerOfPatientID = site.institution_name
    ds.PatientBirthDate = idn.birth_date
    ds.PatientSex = idn.sex
    other = Sequence()
    for oid in idn.other_ids:
        item = Dataset()
        item.PatientID = oid
        item.TypeOfPatientID = "TEXT"
        other.append(item)
    ds.OtherPatientIDsSequence = other
    ds.PatientMotherBirthName = idn.mother_birth_name
    ds.PatientAddress = idn.address
    ds.PatientTelephoneNumbers = idn.telephone
    ref_patient = Dataset()
    ref_patient.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.4"  # Detached Patient Management (retired), as PACS send it
    ref_patient.ReferencedSOPInstanceUID = ctx.patient_uid
    ds.ReferencedPatientSequence = Sequence([ref_patient])
    # General Study
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = idn.study_date
    ds.StudyTime = idn.study_time
    ds.ReferringPhysicianName = idn.referring_physician
    ds.StudyID = idn.study_id
    ds.AccessionNumber = idn.accession_number
    ds.StudyDescription = f"MR HEAD WO CONTRAST {idn.accession_number}"
    ds.PhysiciansOfRecord = idn.referring_physician
    ds.NameOfPhysiciansReadingStudy = idn.requesting_physician
    # Patient Study
    ds.PatientAge = idn.age
    ds.PatientSize = f"{idn.size_m:.2f}"
    ds.PatientWeight = f"{idn.weight_kg:.1f}"
    # General Equipment
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution_name
    ds.InstitutionAddress = site.institution_address
    ds.StationName = site.station_name
    ds.InstitutionalDepartmentName = site.department
    ds.ManufacturerModelName = site.model
    ds.DeviceSerialNumber = site.device_serial
    ds.SoftwareVersions = site.software_version
    # Frame of Reference
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Vendor-like private block with one identity value inside.
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", idn.patient_name.replace("^", " "))
    block.add_new(0x02, "LO", idn.private_note)
    block.add_new(0x03, "DS", "1.0")
    return ds


def request_attributes(ctx: StudyContext, description: str) -> Sequence:
    """Request Attributes Sequence (RIS order data copied by the modality worklist), identities inside."""
    idn = ctx.identity
    item = Dataset()
    item.RequestedProcedureID = idn.requested_procedure_id
    item.ScheduledProcedureStepID = idn.scheduled_step_id
    item.ScheduledProcedureStepDescription = description
    item.AccessionNumber = idn.accession_number
    item.StudyInstanceUID = ctx.study_uid
    item.RequestingPhysician = idn.requesting_physician
    item.RequestedProcedureDescription = f"MRI BRAIN for {idn.patient_name.split('^')[0]}"
    return Sequence([item])


def series_dataset(ctx: StudyContext, *, series_uid: str, number: int, description: str, protocol: str,
                   time: str) -> Dataset:
    """General Series attributes (modality MR) with the performing and operator names planted."""
    idn = ctx.identity
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDate = idn.study_date
    ds.SeriesTime = time
    ds.SeriesDescription = description
    ds.ProtocolName = protocol
    ds.PerformingPhysicianName = idn.performing_physician
    ds.OperatorsName = idn.operator
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.RequestAttributesSequence = request_attributes(ctx, protocol)
    ds.PerformedProcedureStepStartDate = idn.study_date
    ds.PerformedProcedureStepStartTime = idn.study_time
    ds.PerformedProcedureStepID = idn.scheduled_step_id
    ds.PerformedProcedureStepDescription = f"{protocol} {idn.patient_id}"
    return ds


def time_plus(hhmmss: str, seconds: float) -> str:
    """A DICOM TM value ``seconds`` after ``hhmmss`` (microsecond fraction kept; wraps at midnight).

    Called once per instance, so it does the clock arithmetic itself (strptime cost 35 us a call); same result
    as adding a ``timedelta(seconds=...)`` to the parsed time, which it uses for the rounding."""
    whole = hhmmss.split(".")[0]
    if len(whole) != 6 or not whole.isdigit():
        raise ValueError("time_plus needs an HHMMSS time")
    td = _dt.timedelta(seconds=seconds)
    total = (int(whole[:2]) * 3600 + int(whole[2:4]) * 60 + int(whole[4:6]) + td.days * 86400 + td.seconds) % 86400
    frac = int(round((seconds % 1) * 1e6)) % 1000000
    return f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}.{frac:06d}"


def start_series(ctx: StudyContext, study_base: Dataset, number: int, clock: float,
                 protocol: str) -> tuple[Dataset, str, str]:
    """The shared header of series ``number`` starting ``clock`` seconds into the study:
    (dataset with series and study attributes, SeriesInstanceUID, series start time)."""
    start = time_plus(ctx.identity.study_time, clock)
    series_uid = ctx.uids("series", number)
    base = series_dataset(ctx, series_uid=series_uid, number=number, description=protocol, protocol=protocol,
                          time=start)
    base.update(study_base)
    return base, series_uid, start


def mr_image_attributes(ds: Dataset, *, site: Site, scanning_sequence: str, sequence_variant: str,
                        acquisition_type: str, tr_ms: float, te_ms: float, ti_ms: float | None, flip_deg: float,
                        echo_train: int, sequence_name: str, slice_thickness: float, spacing_between: float,
                        matrix: tuple[int, int], phase_dir: str, bandwidth: float, image_type: list[str]) -> None:
    """MR Image module attributes of a classic single-frame MR series (PS3.3 C.8.3.1)."""
    ds.ImageType = image_type
    ds.ScanningSequence = scanning_sequence
    ds.SequenceVariant = sequence_variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = acquisition_type
    ds.SequenceName = sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.RepetitionTime = f"{tr_ms:g}"
    ds.EchoTime = f"{te_ms:g}"
    if ti_ms is not None:
        ds.InversionTime = f"{ti_ms:g}"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = f"{site.field_strength * 42.577478:.6f}"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = f"{site.field_strength:g}"
    ds.SpacingBetweenSlices = f"{spacing_between:g}"
    ds.EchoTrainLength = str(echo_train)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = f"{bandwidth:g}"
    ds.ReceiveCoilName = "Head_32"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, matrix[0], matrix[1], 0] if phase_dir == "ROW" else [matrix[0], 0, 0, matrix[1]]
    ds.InPlanePhaseEncodingDirection = phase_dir
    ds.FlipAngle = f"{flip_deg:g}"
    ds.VariableFlipAngleFlag = "N"
    ds.PatientPosition = "HFS"
