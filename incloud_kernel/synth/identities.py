"""Planted identities: the fake patient, staff and visit values written into synthetic DICOM headers.

Every value is made up from a seeded random generator, so a cohort is reproducible and every planted string is
known in advance and listed in the ground truth for leak checkers to search for. These are NOT real people;
this module must never read, copy or derive anything from real patient data.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field

import numpy as np

FAMILY = ["GARCIA", "MARTIN", "KOWALSKI", "NAKAMURA", "OKAFOR", "LINDQVIST", "MORETTI", "DUBOIS", "HALVORSEN",
          "PETROVA", "ALVES", "OYELARAN", "FITZGERALD", "KAPOOR", "VARGA", "TANAKA", "MULLER", "SORENSEN",
          "HERRERA", "ABERNATHY", "QUISPE", "NIEMINEN", "WOJCIK", "MBEKI"]
GIVEN_F = ["AMELIA", "BEATRIZ", "CHIARA", "DORA", "ELIN", "FATIMA", "GRETA", "HANA", "INES", "JOANNA", "KEIKO", "LUCIA"]
GIVEN_M = ["ANDRES", "BRUNO", "CARSTEN", "DAVID", "EMEKA", "FELIX", "GORAN", "HIROSHI", "IVAN", "JONAS", "KARIM", "LUKAS"]
STREETS = ["Lindenweg", "Calle del Olmo", "Rue des Tilleuls", "Birch Lane", "Via dei Pini", "Elm Street", "Sakura Dori"]
CITIES = ["Springfield", "Kingsbridge", "Villanova", "Oakdale", "Riverton", "Fairhaven"]


@dataclass
class Person:
    """A staff member (referring, performing, operator) as a DICOM PN string ``FAMILY^GIVEN``."""

    name: str


@dataclass
class Identity:
    """All identifying values planted into one participant's study.

    Dates are DICOM ``YYYYMMDD`` strings, times ``HHMMSS.ffffff``; ``age`` is a DICOM AS string (``045Y``).
    ``other_ids``, ``mother_birth_name``, ``address`` and ``telephone`` are free text the way hospital
    systems fill them. Staff names are per study (a study has one referring physician, one operator...).
    """

    patient_name: str
    patient_id: str
    other_ids: list[str]
    birth_date: str
    sex: str
    age: str
    size_m: float
    weight_kg: float
    address: str
    telephone: str
    mother_birth_name: str
    accession_number: str
    requested_procedure_id: str
    scheduled_step_id: str
    study_id: str
    study_date: str
    study_time: str
    referring_physician: str
    performing_physician: str
    operator: str
    requesting_physician: str
    private_note: str
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def strings(self) -> list[str]:
        """Every planted string, as written in headers, to search for in de-identified output.

        Includes the name's parts (``FAMILY`` and ``GIVEN`` separately) because a leak can split them.
        """
        out: list[str] = []
        for key, value in self.as_dict().items():
            if key in ("sex", "size_m", "weight_kg", "extra"):
                continue
            if isinstance(value, list):
                out.extend(value)
            else:
                out.append(str(value))
        out.extend(self.extra.values())
        for pn in (self.patient_name, self.referring_physician, self.performing_physician, self.operator,
                   self.requesting_physician):
            out.extend(p for p in pn.split("^") if p)
        seen: dict[str, None] = {}
        for s in out:
            if s and s not in seen:
                seen[s] = None
        return list(seen)


def _name(rng: np.random.Generator, sex: str) -> str:
    given = GIVEN_F if sex == "F" else GIVEN_M
    return f"{rng.choice(FAMILY)}{rng.integers(10, 99)}^{rng.choice(given)}"


def make_identity(rng: np.random.Generator, age_years: int, sex: str, study_date: _dt.date) -> Identity:
    """A fresh fake identity for a participant of ``age_years`` scanned on ``study_date``.

    Family names carry two digits (``GARCIA37``) so that each planted name is unique in a cohort and a
    search for it never matches ordinary text.
    """
    birth = study_date - _dt.timedelta(days=int(age_years * 365.25 + rng.integers(1, 300)))
    hour, minute, second = int(rng.integers(7, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    staff_sex = lambda: "F" if rng.random() < 0.5 else "M"  # noqa: E731
    pid = f"PID{rng.integers(10**7, 10**8)}"
    return Identity(
        patient_name=_name(rng, sex),
        patient_id=pid,
        other_ids=[f"MRN{rng.integers(10**6, 10**7)}", f"NHS{rng.integers(10**9, 10**10)}"],
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age=f"{age_years:03d}Y",
        size_m=round(float(rng.uniform(1.55, 1.95)), 2),
        weight_kg=round(float(rng.uniform(52, 105)), 1),
        address=f"{rng.integers(1, 200)} {rng.choice(STREETS)}, {rng.choice(CITIES)} {rng.integers(10000, 99999)}",
        telephone=f"+1-555-{rng.integers(100, 999)}-{rng.integers(1000, 9999)}",
        mother_birth_name=f"{rng.choice(FAMILY)}{rng.integers(10, 99)}^{rng.choice(GIVEN_F)}",
        accession_number=f"ACC{rng.integers(10**7, 10**8)}",
        requested_procedure_id=f"RP{rng.integers(10**6, 10**7)}",
        scheduled_step_id=f"SPS{rng.integers(10**6, 10**7)}",
        study_id=f"S{rng.integers(10**4, 10**5)}",
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{hour:02d}{minute:02d}{second:02d}.000000",
        referring_physician=_name(rng, staff_sex()),
        performing_physician=_name(rng, staff_sex()),
        operator=_name(rng, staff_sex()),
        requesting_physician=_name(rng, staff_sex()),
        private_note=f"PT {pid} CALLBACK",
    )
