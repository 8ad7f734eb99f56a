"""Planted identities for the registry tests, and the ways each may appear in clear text.

Names are rare enough that no ciphertext, digest, pseudonym or timestamp contains them by chance; birth dates lie
before 1980, so no timestamp or key id of a test run (2026...) holds one.
"""
from __future__ import annotations

from typing import Any

PEOPLE: list[dict[str, str]] = [
    {"family_name": "Quennevillier", "given_names": "Ottoline", "birth_date": "1961-04-23", "sex": "F",
     "record_number": "MRN-4417-2209", "contact": "+44 1632 960999, 7 Zanzibar Lane"},
    {"family_name": "Brightwaterson", "given_names": "Eustachius", "birth_date": "1948-11-02", "sex": "M",
     "record_number": "KX88310457", "contact": "eustachius@nowhere.invalid"},
    {"family_name": "Okonkwo-Varga", "given_names": "Theodolinda", "birth_date": "1972-07-19", "sex": "F",
     "record_number": "H-55190263"},
]


def date_forms(iso: str) -> list[str]:
    """The forms a birth date is typed in (ISO, DICOM DA, European, US, with dots or slashes)."""
    y, m, d = iso.split("-")
    return [iso, y + m + d, f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}"]


def needles(people: list[dict[str, Any]] = PEOPLE) -> dict[str, str]:
    """Every clear-text value to search for -> which planted field it is (the finding names the field only)."""
    out: dict[str, str] = {}
    for n, p in enumerate(people):
        for key in ("family_name", "given_names", "record_number"):
            out[p[key]] = f"person {n} {key}"
        for part in p["family_name"].split("-"):
            out[part] = f"person {n} family_name part"
        out[p["record_number"].replace("-", "")] = f"person {n} record_number (normalised)"
        for form in date_forms(p["birth_date"]):
            out[form] = f"person {n} birth_date"
        if p.get("contact"):
            out[p["contact"]] = f"person {n} contact"
    return out


def find_leaks(blob: bytes, where: str, people: list[dict[str, Any]] = PEOPLE) -> list[str]:
    """Findings "<where>: <field>" for every planted value in ``blob`` (UTF-8, UTF-16 and case-insensitive)."""
    lower = blob.lower()
    found = []
    for value, what in needles(people).items():
        for enc in ("utf-8", "utf-16-le"):
            if value.lower().encode(enc) in lower:
                found.append(f"{where}: {what}")
                break
    return found
