"""Which project a study goes to: first matching rule of ``dicom.routing``, else the unassigned inbox.

Rules are data in the site config (calling AE, called AE, accession number, or any DICOM attribute by keyword,
exact or ``*``/``?`` glob). The router reads header values to decide but must never log or return them: the
result is a project code and the index of the rule that matched.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword

from incloud_kernel.errors import ConfigError

MATCH_KEYS = ("calling_aet", "called_aet", "accession_number", "attribute")


@dataclass(frozen=True)
class Route:
    project: str
    #: Index of the matching rule in ``dicom.routing``; None for the unassigned inbox.
    rule: int | None

    @property
    def unassigned(self) -> bool:
        return self.rule is None


def _matches(pattern: Any, value: str | None) -> bool:
    if value is None:
        return False
    return fnmatch.fnmatchcase(value.strip().upper(), str(pattern).strip().upper())


def check_rules(rules: list[Mapping[str, Any]]) -> None:
    """Raise ConfigError (one line) for a rule without a project, without a match key, or with a bad keyword."""
    for i, rule in enumerate(rules):
        if not rule.get("project"):
            raise ConfigError(f"dicom.routing[{i}] has no project")
        if not any(k in rule for k in MATCH_KEYS):
            raise ConfigError(f"dicom.routing[{i}] needs one of {', '.join(MATCH_KEYS)}")
        if "attribute" in rule:
            if tag_for_keyword(str(rule["attribute"])) is None:
                raise ConfigError(f"dicom.routing[{i}]: {rule['attribute']!r} is not a DICOM keyword")
            if "value" not in rule:
                raise ConfigError(f"dicom.routing[{i}]: attribute needs a value")


def route_study(rules: list[Mapping[str, Any]], unassigned: str, *, calling_aet: str | None,
                called_aet: str | None, dataset: Dataset | None) -> Route:
    """The project for a study; every key present in a rule must match (AND), rules are tried in order."""
    check_rules(rules)
    for i, rule in enumerate(rules):
        ok = True
        if "calling_aet" in rule:
            ok &= _matches(rule["calling_aet"], calling_aet)
        if "called_aet" in rule:
            ok &= _matches(rule["called_aet"], called_aet)
        if "accession_number" in rule:
            value = None if dataset is None else str(dataset.get("AccessionNumber", "") or "")
            ok &= _matches(rule["accession_number"], value)
        if "attribute" in rule:
            value = None
            if dataset is not None and str(rule["attribute"]) in dataset:
                value = str(dataset.data_element(str(rule["attribute"])).value)
            ok &= _matches(rule["value"], value)
        if ok:
            return Route(str(rule["project"]), i)
    return Route(unassigned, None)
