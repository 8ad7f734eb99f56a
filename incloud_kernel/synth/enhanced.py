"""Enhanced MR Image Storage (multi-frame) for synthetic BOLD and DWI series.

Turns a classic series description (the shared header built by ``headers``, per-slice positions, per-volume
times and diffusion values) into one Enhanced MR instance: Shared and Per-frame Functional Groups (pixel
measures, plane orientation/position, frame content with a stack/in-stack/temporal dimension index, MR timing,
echo, diffusion) and the Multi-frame Dimension module, as scanners of the XA/Ingenia generation write them.
Builds datasets only (``writer.write_multiframe`` writes them); never logs a header value.
"""
from __future__ import annotations

from typing import Any, Sequence as Seq

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: Classic MR Image attributes that an Enhanced MR instance holds inside functional groups instead.
_CLASSIC_ONLY = ("ScanningSequence", "SequenceVariant", "ScanOptions", "SliceThickness", "RepetitionTime",
                 "EchoTime", "InversionTime", "NumberOfAverages", "ImagingFrequency", "ImagedNucleus", "EchoNumbers",
                 "SpacingBetweenSlices", "EchoTrainLength", "PercentSampling", "PercentPhaseFieldOfView",
                 "PixelBandwidth", "ReceiveCoilName", "TransmitCoilName", "AcquisitionMatrix",
                 "InPlanePhaseEncodingDirection", "FlipAngle", "VariableFlipAngleFlag", "AngioFlag", "SequenceName",
                 "WindowCenter", "WindowWidth", "NumberOfTemporalPositions")

FRAME_CONTENT = 0x00209111
STACK_ID = 0x00209056
IN_STACK_POSITION = 0x00209057
TEMPORAL_POSITION_INDEX = 0x00209128


def _item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def to_enhanced(base: Dataset, *, dimension_uid: str, flavor: str, contrast: str, datetime0: str,
                duration_ms: float, diffusion: bool) -> Dataset:
    """Shared Functional Groups item built from ``base``'s classic attributes (removed from ``base``, which
    gains the Enhanced MR Image, Multi-frame Dimension and MR Pulse Sequence attributes instead)."""
    g = lambda k: base.get(k)  # noqa: E731
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([_item(PixelSpacing=base.get("PixelSpacing"),
                                                   SliceThickness=g("SliceThickness"),
                                                   SpacingBetweenSlices=g("SpacingBetweenSlices"))])
    shared.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=base.get("ImageOrientationPatient"))])
    shared.MRTimingAndRelatedParametersSequence = Sequence([_item(
        RepetitionTime=g("RepetitionTime"), FlipAngle=g("FlipAngle"), EchoTrainLength=int(g("EchoTrainLength") or 1),
        RFEchoTrainLength=1, GradientEchoTrainLength=int(g("EchoTrainLength") or 1))])
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(g("EchoTime")))])
    shared.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection={"COL": "COLUMN"}.get(g("InPlanePhaseEncodingDirection"),
                                                            g("InPlanePhaseEncodingDirection")), MRAcquisitionFrequencyEncodingSteps=base.Columns
        if "Columns" in base else int(g("AcquisitionMatrix")[1] or g("AcquisitionMatrix")[0]),
        MRAcquisitionPhaseEncodingStepsInPlane=int(max(g("AcquisitionMatrix"))),
        PercentSampling=g("PercentSampling"), PercentPhaseFieldOfView=g("PercentPhaseFieldOfView"))])
    shared.MRImageFrameTypeSequence = Sequence([_item(
        FrameType=["ORIGINAL", "PRIMARY", flavor, "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=contrast)])
    shared.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept="0", RescaleSlope="1",
                                                              RescaleType="US")])
    shared.MRModifierSequence = Sequence([_item(InversionRecovery="NO", FlowCompensation="NONE", Spoiling="NONE",
                                                T2Preparation="NO", SpectrallySelectedExcitation="NONE",
                                                SpatialPresaturation="NONE", PartialFourier="NO",
                                                ParallelAcquisition="NO")])
    shared.MRImagingModifierSequence = Sequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=float(g("ImagingFrequency")), PixelBandwidth=float(g("PixelBandwidth")))])
    shared.FrameAnatomySequence = Sequence([_item(FrameLaterality="U", AnatomicRegionSequence=Sequence([_item(
        CodeValue="12738006", CodingSchemeDesignator="SCT", CodeMeaning="Brain")]))])
    manufacturer = g("Manufacturer") or ""
    shared.MRReceiveCoilSequence = Sequence([_item(ReceiveCoilName=g("ReceiveCoilName"), ReceiveCoilType="VOLUME",
                                                   QuadratureReceiveCoil="NO",
                                                   ReceiveCoilManufacturerName=manufacturer)])
    shared.MRTransmitCoilSequence = Sequence([_item(TransmitCoilName=g("TransmitCoilName"), TransmitCoilType="BODY",
                                                    TransmitCoilManufacturerName=manufacturer)])
    timing = shared.MRTimingAndRelatedParametersSequence[0]
    timing.OperatingModeSequence = Sequence([_item(OperatingModeType=t, OperatingMode="IEC_NORMAL")
                                             for t in ("STATIC FIELD", "RF", "GRADIENT")])
    timing.SpecificAbsorptionRateSequence = Sequence([_item(SpecificAbsorptionRateDefinition="IEC_HEAD",
                                                            SpecificAbsorptionRateValue=0.4)])
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages=g("NumberOfAverages"))])
    field_strength = g("MagneticFieldStrength")
    sequence_name = g("SequenceName")
    for key in _CLASSIC_ONLY + ("PixelSpacing", "ImageOrientationPatient"):
        if key in base:
            del base[key]
    base.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
    base.PixelPresentation = "MONOCHROME"
    base.VolumetricProperties = "VOLUME"
    base.VolumeBasedCalculationTechnique = "NONE"
    base.ComplexImageComponent = "MAGNITUDE"
    base.AcquisitionContrast = contrast
    base.ContentQualification = "PRODUCT"
    base.ResonantNucleus = "1H"
    base.KSpaceFiltering = "NONE"
    base.MagneticFieldStrength = field_strength
    base.ApplicableSafetyStandardAgency = "IEC"
    base.ImageComments = ""
    base.AcquisitionContextSequence = Sequence()
    base.AcquisitionDateTime = datetime0
    base.AcquisitionDuration = round(duration_ms / 1000.0, 3)
    base.BurnedInAnnotation = "NO"
    base.LossyImageCompression = "00"
    base.PresentationLUTShape = "IDENTITY"
    base.PulseSequenceName = sequence_name
    base.MRAcquisitionType = "2D"
    base.EchoPulseSequence = "GRADIENT" if not diffusion else "SPIN"
    if diffusion:
        base.MultipleSpinEcho = "NO"
    base.MultiPlanarExcitation = "NO"
    base.PhaseContrast = "NO"
    base.TimeOfFlightContrast = "NO"
    base.SteadyStatePulseSequence = "NONE"
    base.EchoPlanarPulseSequence = "YES"
    base.SaturationRecovery = "NO"
    base.SpectrallySelectedSuppression = "NONE"
    base.OversamplingPhase = "NONE"
    base.GeometryOfKSpaceTraversal = "RECTILINEAR"
    base.SegmentedKSpaceTraversal = "SINGLE"
    base.RectilinearPhaseEncodeReordering = "LINEAR"
    base.NumberOfKSpaceTrajectories = 1
    base.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dimension_uid)])
    dims = []
    for pointer, label in ((STACK_ID, "Stack ID"), (IN_STACK_POSITION, "In-Stack Position Number"),
                           (TEMPORAL_POSITION_INDEX, "Temporal Position Index")):
        dims.append(_item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=pointer,
                          FunctionalGroupPointer=FRAME_CONTENT, DimensionDescriptionLabel=label))
    base.DimensionIndexSequence = Sequence(dims)
    return shared


def per_frame_groups(positions: Seq[Seq[float]], volumes: int, frame_datetime: Any, duration_ms: float,
                     diffusion: Seq[tuple[float, Seq[float] | None]] | None = None) -> list[Dataset]:
    """Per-frame items, volume-major (all slices of volume 1, then volume 2...): frame content with dimension
    index (stack 1, in-stack position, temporal position = volume), plane position, and the MR diffusion
    values of the volume when ``diffusion`` gives (b-value, LPS gradient direction or None) per volume.
    ``frame_datetime(v, k)`` returns the DT string of volume v, slice k."""
    out = []
    for v in range(volumes):
        for k, ipp in enumerate(positions):
            item = Dataset()
            when = frame_datetime(v, k)
            item.FrameContentSequence = Sequence([_item(
                FrameAcquisitionNumber=v + 1, FrameReferenceDateTime=when, FrameAcquisitionDateTime=when,
                FrameAcquisitionDuration=duration_ms, StackID="1", InStackPositionNumber=k + 1,
                TemporalPositionIndex=v + 1, DimensionIndexValues=[1, k + 1, v + 1])])
            item.PlanePositionSequence = Sequence([_item(ImagePositionPatient=list(ipp))])
            if diffusion is not None:
                b, direction = diffusion[v]
                diff = _item(DiffusionBValue=float(b), DiffusionDirectionality="DIRECTIONAL" if b > 0 else "NONE")
                if b > 0 and direction is not None:
                    diff.DiffusionGradientDirectionSequence = Sequence([_item(
                        DiffusionGradientOrientation=[float(x) for x in direction])])
                item.MRDiffusionSequence = Sequence([diff])
            out.append(item)
    return out
