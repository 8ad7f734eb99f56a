"""Routing rules: study -> project by calling AE, called AE, accession number or a DICOM attribute, else inbox."""
from __future__ import annotations

import pytest
from pydicom import Dataset

from incloud_kernel.dicom.routing import route_study
from incloud_kernel.errors import ConfigError

RULES = [
    {"project": "ALZ", "calling_aet": "MRI_3T"},
    {"project": "PSY", "called_aet": "INCLOUD_PSY"},
    {"project": "EPI", "accession_number": "EPI*"},
    {"project": "KIDS", "attribute": "InstitutionalDepartmentName", "value": "paed*"},
]


def ds(**values: str) -> Dataset:
    d = Dataset()
    for k, v in values.items():
        setattr(d, k, v)
    return d


@pytest.mark.parametrize("calling, called, data, project", [
    ("MRI_3T", "INCLOUD", ds(), "ALZ"),
    ("OTHER", "INCLOUD_PSY", ds(), "PSY"),
    ("OTHER", "INCLOUD", ds(AccessionNumber="EPI0042"), "EPI"),
    ("OTHER", "INCLOUD", ds(InstitutionalDepartmentName="Paediatrics"), "KIDS"),
    ("OTHER", "INCLOUD", ds(AccessionNumber="X1"), "unassigned"),
])
def test_first_matching_rule_wins_else_unassigned(calling, called, data, project) -> None:
    route = route_study(RULES, "unassigned", calling_aet=calling, called_aet=called, dataset=data)
    assert route.project == project
    assert route.unassigned == (project == "unassigned")


def test_bad_rules_are_one_line_config_errors() -> None:
    for rules in ([{"calling_aet": "X"}], [{"project": "P"}], [{"project": "P", "attribute": "NoSuchKeyword",
                                                                "value": "x"}]):
        with pytest.raises(ConfigError):
            route_study(rules, "unassigned", calling_aet="X", called_aet=None, dataset=None)
