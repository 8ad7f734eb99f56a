"""Age, sex and scanner reach the archive at ingest, read only from what de-identification kept.

CADS (normative z-scores, the classifier) needs them for every scan; before, ingest left them empty and no report
could be made for an ingested scan outside the demo. With the site default (Retain Patient Characteristics,
Retain Device Identity) they are recorded; with a profile that drops patient characteristics they are not.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from incloud_kernel.archive.models import Participant, Session
from incloud_kernel.db import transaction
from incloud_kernel.ingest import demographics
from ingest_data import make_small_study
from test_ingest_chain import ready, run_ingest  # noqa: F401 - the fixture

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.mark.parametrize("text, years", [("045Y", 45.0), ("018M", 1.5), ("052W", 0.997), ("010D", 0.027),
                                         ("45", None), ("", None), (None, None), ("045X", None), ("999Y", None)])
def test_dicom_age_strings(text: str | None, years: float | None) -> None:
    # PS3.5 Table 6.2-1: AS is nnnD, nnnW, nnnM or nnnY.
    got = demographics.age_years(text)
    assert got == years if years is None else got == pytest.approx(years, abs=0.01)


def test_a_dataset_from_pydicoms_own_test_files() -> None:
    facts = demographics.from_dicom(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    assert facts == demographics.Demographics(age_at_scan=None, sex="F", scanner="TOSHIBA_MEC MRT50H1")
    ct = demographics.from_dicom(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert ct.sex == "O" and ct.age_at_scan == 0.0 and ct.scanner == "GE MEDICAL SYSTEMS RHAPSODE"


def test_a_sidecar_and_its_dicom_name_the_scanner_alike() -> None:
    sidecar = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma", "MagneticFieldStrength": 3,
               "PatientSex": "M", "PatientAge": 33}
    ds = pydicom.Dataset()
    ds.Manufacturer, ds.ManufacturerModelName, ds.MagneticFieldStrength = "Siemens", "Prisma", "3"
    ds.PatientSex, ds.PatientAge = "M", "033Y"
    assert demographics.from_sidecar(sidecar) == demographics.from_dicom(ds)
    assert demographics.from_dicom(ds).scanner == "Siemens Prisma 3T"


def _with_age_and_field(src: Path) -> None:
    for path in src.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientAge, ds.MagneticFieldStrength, ds.ManufacturerModelName = "045Y", "3", "Prisma"
        ds.save_as(path)


def _recorded(site) -> list[tuple[float | None, str | None, str | None]]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        return [(s.age_at_scan, s.scanner, db.get(Participant, s.participant_id).sex)
                for s in db.scalars(select(Session))]


@SQLITE
def test_ingest_records_age_sex_and_scanner_the_profile_kept(ready, tmp_path: Path) -> None:  # noqa: F811
    site, env = ready
    make_small_study(tmp_path / "src")
    _with_age_and_field(tmp_path / "src")
    result = run_ingest(env, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    assert _recorded(site) == [(45.0, "SIEMENS Prisma 3T", "F")]


@SQLITE
def test_a_profile_without_patient_characteristics_records_no_age_or_sex(ready, tmp_path: Path) -> None:  # noqa: F811
    site, env = ready
    make_small_study(tmp_path / "src")
    _with_age_and_field(tmp_path / "src")
    result = run_ingest(env, tmp_path / "src", INCLOUD_DEID_OPTIONS="retain_device_identity")
    assert result.returncode == 0, result.stderr
    assert _recorded(site) == [(None, "SIEMENS Prisma 3T", None)]
