"""The burned-in text rule: which instances may carry identifying text in their pixels, and are held back.

An instance is held back when Burned In Annotation is YES, or when it is absent and the SOP Class is one that
commonly carries text in pixels (secondary captures, screenshots, video, ultrasound, documents). We never look at
pixels here. The reason returned is value-free.
"""
from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import UID_dictionary

from incloud_kernel.deid.peek import peek

#: SOP Class keywords (pydicom's UID dictionary) likely to carry burned-in text when the attribute is absent.
_LIKELY_TEXT_KEYWORDS = (
    "SecondaryCaptureImageStorage", "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage", "EncapsulatedPDFStorage", "EncapsulatedCDAStorage",
    "VideoEndoscopicImageStorage", "VideoMicroscopicImageStorage", "VideoPhotographicImageStorage",
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "VLPhotographicImageStorage",
    "VLEndoscopicImageStorage", "VLMicroscopicImageStorage", "VLSlideCoordinatesMicroscopicImageStorage",
)
LIKELY_TEXT_CLASSES = frozenset(uid for uid, entry in UID_dictionary.items() if entry[4] in _LIKELY_TEXT_KEYWORDS)


def burned_in_reason(ds: Dataset) -> str | None:
    """None when the instance may pass; else a value-free reason for the quarantine record."""
    flag = str(peek(ds, "BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "burned-in-annotation: BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    sop_class = str(peek(ds, "SOPClassUID", "") or "").strip()
    if sop_class in LIKELY_TEXT_CLASSES:
        return f"burned-in-annotation: attribute absent and SOP Class {UID_dictionary[sop_class][4]} often carries text"
    return None
