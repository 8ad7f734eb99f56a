"""A session's age, sex and scanner, read from the *de-identified* DICOM at ingest.

Normative models and diagnostic classifiers (``incloud_kernel.cads``) need age, sex and scanner for every scan;
without them a report cannot be made. The site's de-identification profile decides what survives PS3.15: with
"Retain Patient Characteristics" (on by default, ``deid.options``) Patient's Age and Sex stay, with "Retain Device
Identity" the manufacturer, model and field strength stay. This module only ever reads the de-identified dataset,
so it can never record a value the profile removed.

The scanner label is "<Manufacturer> <Model> <field strength>T", the same text whether it comes from DICOM or a
BIDS sidecar (``scanner_label``), so models trained on one source recognise scans from the other.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

#: DICOM Age String (PS3.5 Table 6.2-1): three digits and a unit, days/weeks/months/years.
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class Demographics:
    """What the archive keeps about a session: None where the de-identified data does not say."""

    age_at_scan: float | None = None
    sex: str | None = None
    scanner: str | None = None


def age_years(value: Any) -> float | None:
    """Years from a DICOM Age String ("045Y", "018M", "003W", "010D"); None for anything else."""
    match = _AGE.match(str(value or "").strip().upper())
    if match is None:
        return None
    years = int(match.group(1)) * _DAYS_PER[match.group(2)] / 365.25
    return round(years, 2) if 0 <= years <= 150 else None


def scanner_label(manufacturer: Any, model: Any, field_strength: Any) -> str | None:
    """One line naming the scanner (no person, no serial number): used as the site/batch in harmonisation."""
    words = " ".join(str(v).strip() for v in (manufacturer, model) if v is not None and str(v).strip())
    if not words:
        return None
    try:
        strength = float(field_strength)
    except (TypeError, ValueError):
        strength = None
    label = f"{words} {strength:g}T" if strength else words
    return "".join(c for c in label if c.isprintable())[:128]


def from_dicom(ds: Any) -> Demographics:
    """Age, sex and scanner of a de-identified dataset (pydicom ``Dataset``)."""
    sex = str(getattr(ds, "PatientSex", "") or "").strip().upper()
    return Demographics(
        age_at_scan=age_years(getattr(ds, "PatientAge", None)),
        sex=sex if sex in ("M", "F", "O") else None,
        scanner=scanner_label(getattr(ds, "Manufacturer", None), getattr(ds, "ManufacturerModelName", None),
                              getattr(ds, "MagneticFieldStrength", None)))


def from_sidecar(meta: Mapping[str, Any]) -> Demographics:
    """The same from a BIDS sidecar written by dcm2niix (its key names differ from DICOM's)."""
    age = meta.get("PatientAge")
    sex = str(meta.get("PatientSex") or "").strip().upper()
    return Demographics(
        age_at_scan=float(age) if isinstance(age, (int, float)) and 0 <= age <= 150 else age_years(age),
        sex=sex if sex in ("M", "F", "O") else None,
        scanner=scanner_label(meta.get("Manufacturer"), meta.get("ManufacturersModelName"),
                              meta.get("MagneticFieldStrength")))
