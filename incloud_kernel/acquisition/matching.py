"""Duplicate detection for the participant registry: normalisation, blocking codes and EpiLink-weighted scores.

The method is the one Mainzelliste's default matcher implements, EpiLink (Contiero et al., Methods Inf Med
2005): a Fellegi-Sunter weight per field, ``w = log2((1 - e) / f)`` from the field's error rate ``e`` and the
frequency ``f`` of a chance agreement, and a score ``sum(w * s) / sum(w)`` in 0..1 where ``s`` is the field's
similarity (Jaro-Winkler for names, equality for date parts and sex). Comparators and phonetic codes come from
``jellyfish`` (a maintained Rust implementation); ``recordlinkage`` was not taken: its last release (2023)
predates pandas 3, which this venv runs. Comparison only ever runs on identities decrypted in memory for the
candidates of one registration; nothing here stores, logs or raises with a value.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Mapping

import jellyfish

#: Frequency of a chance agreement per field (our estimates: 1/31 days, 1/12 months, birth years spread over
#: about 100 years, sex 1/2; name frequencies of the order of a common European surname and given name) and a
#: 1% error rate for every field.
FREQUENCY: dict[str, float] = {"family_name": 3e-5, "given_names": 2.5e-4, "birth_day": 1 / 31,
                               "birth_month": 1 / 12, "birth_year": 1 / 100, "sex": 1 / 2}
ERROR_RATE = 0.01
#: Jaro-Winkler below this counts as no agreement at all (two unrelated names still share letters).
NAME_FLOOR = 0.8


def _weight(name: str) -> float:
    import math

    return math.log2((1 - ERROR_RATE) / FREQUENCY[name])


WEIGHTS = {name: _weight(name) for name in FREQUENCY}


def normalise_name(value: str) -> str:
    """Upper case, accents dropped (NFKD), ß as SS, only letters A-Z kept: "Müller-Lüdenscheidt" -> MULLERLUDENSCHEIDT."""
    value = value.replace("ß", "ss").replace("ẞ", "SS")
    plain = unicodedata.normalize("NFKD", value)
    return "".join(c for c in plain.upper() if "A" <= c <= "Z")


def normalise_record_number(value: str) -> str:
    """A hospital record number without spaces, dashes and dots, upper case."""
    return "".join(c for c in value.upper() if c.isalnum())


def blocking_codes(identity: Mapping[str, str]) -> dict[str, str]:
    """The codes candidates are looked up by (each kept only as a keyed blind index): the birth year, and the
    Soundex code of the family name (a typo in the year or in the name still meets the other block)."""
    family = normalise_name(identity["family_name"])
    return {"blk_year": identity["birth_date"][:4], "blk_phon": jellyfish.soundex(family) if family else ""}


def exact_keys(identity: Mapping[str, str]) -> dict[str, str]:
    """The exact look-up keys: record number (when given) and family name + given names + birth date."""
    keys = {"name_dob": "|".join((normalise_name(identity["family_name"]), normalise_name(identity["given_names"]),
                                  identity["birth_date"]))}
    if identity.get("record_number"):
        keys["mrn"] = normalise_record_number(identity["record_number"])
    return keys


def _fields(identity: Mapping[str, str]) -> dict[str, str]:
    year, month, day = identity["birth_date"].split("-")
    out = {"family_name": normalise_name(identity["family_name"]), "given_names": normalise_name(identity["given_names"]),
           "birth_day": day, "birth_month": month, "birth_year": year}
    if identity.get("sex") in ("M", "F"):
        out["sex"] = identity["sex"]
    return out


@dataclass(frozen=True)
class Score:
    """One comparison: the weighted similarity in 0..1 and per field similarity (names of fields only)."""

    value: float
    fields: dict[str, float]


def score(a: Mapping[str, str], b: Mapping[str, str]) -> Score:
    """The EpiLink score of two identities (dicts with family_name, given_names, birth_date YYYY-MM-DD, sex).

    Fields missing in either (sex unknown) are left out of both sums, as EpiLink does.
    """
    fa, fb = _fields(a), _fields(b)
    total = weight = 0.0
    sims: dict[str, float] = {}
    for name in WEIGHTS:
        if name not in fa or name not in fb:
            continue
        if name in ("family_name", "given_names"):
            s = jellyfish.jaro_winkler_similarity(fa[name], fb[name]) if fa[name] and fb[name] else 0.0
            s = s if s >= NAME_FLOOR else 0.0
        else:
            s = 1.0 if fa[name] == fb[name] else 0.0
        sims[name] = round(s, 4)
        total += WEIGHTS[name] * s
        weight += WEIGHTS[name]
    return Score(round(total / weight, 4) if weight else 0.0, sims)
