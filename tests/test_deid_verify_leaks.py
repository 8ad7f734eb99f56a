"""Issue 11 item 1: the leak checker is not blind, Clean Descriptors cuts every identity of the patient out of
free text, and what an option retains is named as such.

The two reproductions of the issue: a surname in Sequence Name (not in Table E.1-1, so kept) under the site
default options, and a surname left in Image Comments under Clean Descriptors: ``incloud deid verify`` said
"0 leak(s)" for both, because a word the profile keeps anywhere was dropped from the identities.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from incloud_kernel.deid import DeidContext, deidentify
from incloud_kernel.deid.options import SITE_DEFAULT
from incloud_kernel.deid.verify import verify
from test_deid import KEY, NAME, PID, planted

CLEAN = SITE_DEFAULT + ("clean_descriptors",)


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _deid(src: pydicom.Dataset, options, tmp_path: Path) -> tuple[Path, Path]:
    """(source file, output file) of one planted instance de-identified with ``options``."""
    source = _write(src, tmp_path / "src" / "a.dcm")
    out = deidentify(pydicom.dcmread(source), DeidContext(key=KEY, options=tuple(options)))
    return source, _write(out, tmp_path / "out" / "a.dcm")


def _sequence_name_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source, output, leaky output): a surname typed into Sequence Name, which Table E.1-1 does not list; the
    leaky output holds it as the de-identifier used to write it (kept, like every unlisted attribute)."""
    src = planted()
    src.SequenceName = "Quixotic_tfl3d"
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    out = pydicom.dcmread(output)
    out.SequenceName = "Quixotic_tfl3d"
    return source, output, _write(out, tmp_path / "leaky" / "a.dcm")


def test_surname_in_sequence_name_under_site_default_is_cut(tmp_path):
    """The table keeps Sequence Name; the safety net cuts the patient's own name out of unlisted text."""
    source, output, _ = _sequence_name_case(tmp_path)
    assert pydicom.dcmread(output).SequenceName == "_tfl3d"
    assert verify([output], [source]).leaks == []


def test_verify_reports_a_surname_in_sequence_name(tmp_path):
    source, _, leaky = _sequence_name_case(tmp_path)
    report = verify([leaky], [source])
    assert "(0018,0024)" in [leak.where for leak in report.leaks], [str(leak) for leak in report.leaks]
    assert all("Quixotic" not in str(leak) for leak in report.leaks + report.retained)


def _cli_verify(output: Path, source: Path):
    from incloud_kernel.cli import cli

    return CliRunner().invoke(cli, ["deid", "verify", str(output), "--against", str(source)])


def test_cli_verify_fails_on_the_sequence_name_surname(tmp_path):
    source, _, leaky = _sequence_name_case(tmp_path)
    result = _cli_verify(leaky, source)
    assert result.exit_code == 1, result.output
    assert "LEAK" in result.output and "(0018,0024)" in result.output and "0 leak(s)" not in result.output
    assert "quixotic" not in result.output.lower()


def test_surname_left_in_image_comments_under_clean_descriptors_is_cut_and_would_be_reported(tmp_path):
    src = planted()
    src.PatientName = "Quixotic-Brandt^Zebulon"
    src.ImageComments = "follow-up for the Brandt family, contrast"
    source, output = _deid(src, CLEAN, tmp_path)
    out = pydicom.dcmread(output)
    assert "Brandt" not in out.ImageComments and "contrast" in out.ImageComments  # cut, the rest kept
    assert verify([output], [source]).leaks == []
    out.ImageComments = "follow-up for the Brandt family"  # what a blind scrubber would leave
    leaky = _write(out, tmp_path / "leaky" / "a.dcm")
    report = verify([leaky], [source])
    assert [(leak.where, leak.source_attribute) for leak in report.leaks if leak.where != "raw bytes"] == [
        ("(0020,4000)", "PatientName")]


def test_a_value_retained_by_option_is_named_so_and_only_in_its_own_attribute(tmp_path):
    src = planted()
    src.StationName = "QXSCANNER01"
    source, output = _deid(src, CLEAN, tmp_path)  # Retain Device Identity keeps Station Name
    report = verify([output], [source])
    assert report.leaks == []
    assert [(r.where, r.source_attribute, r.retained_by) for r in report.retained
            if r.where == "(0008,1010)"] == [("(0008,1010)", "StationName", "retain_device_identity")]
    assert any("(0008,1010) holds the value of source StationName, retained by option retain_device_identity"
               in str(r) for r in report.retained)
    out = pydicom.dcmread(output)
    out.SeriesDescription = "T1 on QXSCANNER01"  # the same value elsewhere is a leak
    leaky = _write(out, tmp_path / "leaky" / "a.dcm")
    report = verify([leaky], [source])
    assert ("(0008,103E)", "StationName") in {(leak.where, leak.source_attribute) for leak in report.leaks}


def test_cli_verify_lists_retained_values_apart_from_leaks(tmp_path):
    src = planted()
    src.StationName = "QXSCANNER01"
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    result = _cli_verify(output, source)
    assert result.exit_code == 0, result.output
    assert "RETAINED" in result.output and "retained by option retain_device_identity" in result.output
    assert " 0 leak(s)" in result.output and "qxscanner01" not in result.output.lower()


@pytest.mark.parametrize("options", [CLEAN, ("clean_descriptors",), ("clean_descriptors", "clean_structured_content")],
                         ids=["site+clean", "clean", "clean+structured"])
def test_clean_descriptors_cuts_every_identifying_attribute_of_the_patient(options, tmp_path):
    """Not only whole PN/ID values: every word of names, IDs, other IDs, addresses, institution, physicians,
    and the birth date as typed in text."""
    src = planted()  # PatientID QX-778812-ZB, OtherPatientIDs OTHQX5510, address "42 Quillfeather Lane, Zorbridge"
    src.PatientBirthDate = "19610423"
    src.PatientAddress = "42 Quillfeather Lane, Zorbridge."
    src.ReferringPhysicianName = "Dr. Marbleworth-Okafor^Ophelia"
    src.InstitutionName = "Quillfeather Memorial Clinic"
    src.RequestingPhysician = "Vantongeren^Isolde"
    src.ImageComments = ("mrn 778812, alt OTHQX5510, lives in Zorbridge; born 23.04.1961 (1961-04-23); "
                         "ref Okafor, req Vantongeren, at Quillfeather; contrast ok")
    src.SeriesDescription = "T1 MPRAGE Okafor"
    src.ProtocolName = "zorbridge_study_ep2d"
    source, output = _deid(src, options, tmp_path)
    out = pydicom.dcmread(output)
    text = " ".join(str(out.get(k, "")) for k in ("ImageComments", "SeriesDescription", "ProtocolName")).lower()
    for value in ("778812", "othqx5510", "zorbridge", "23.04.1961", "1961-04-23", "okafor", "vantongeren",
                  "quillfeather", "marbleworth", "ophelia"):
        assert value not in text, value
    assert "contrast ok" in text and "mprage" in text and "ep2d" in text  # descriptions stay useful
    assert verify([output], [source]).leaks == []


def test_generator_takes_the_strictest_type_of_an_iod_and_reads_1c_as_1(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import gen_iod_types

    data = {
        "sops.json": [{"id": "1.2.3", "ciod": "Toy Image"}, {"id": "1.2.4", "ciod": "Unknown"}],
        "ciods.json": [{"name": "Toy Image", "id": "toy-image"}],
        "ciod_to_modules.json": [{"ciodId": "toy-image", "moduleId": "a"}, {"ciodId": "toy-image", "moduleId": "b"}],
        "module_to_attributes.json": [
            {"moduleId": "a", "path": "a:00080080", "type": "3"},
            {"moduleId": "b", "path": "b:00080080", "type": "2C"},
            {"moduleId": "a", "path": "a:00081140:00080080", "type": "1C"},
            {"moduleId": "a", "path": "a:00100020", "type": "None"},
        ],
        "ciod_to_fg_macros.json": [{"ciodId": "toy-image", "macroId": "m"}],
        "macro_to_attributes.json": [{"macroId": "m", "path": "m:00081140", "type": "2"}],
    }
    built = gen_iod_types.build(data, {"00080080", "00081140", "00100020"})
    assert built["sop_classes"] == {"1.2.3": "toy-image"}
    assert built["iods"]["toy-image"] == {"top": {"00080080": "2"}, "nested": {"00080080": "1", "00081140": "2"}}


def test_unlisted_text_loses_the_patients_words_only_as_whole_words(tmp_path):
    """The safety net for text Table E.1-1 does not list cuts the patient's name and IDs as whole words, so that
    technical values that merely contain the letters stay intact (they end up in BIDS sidecars)."""
    src = planted()
    src.PatientName = "Wei^Lin"
    src.SequenceName = "weighted_se Lin"
    src.ReceiveCoilName = "QX-778812-ZB coil"  # the Patient ID
    src.TransmitCoilName = "Linear body"
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    out = pydicom.dcmread(output)
    assert (out.SequenceName, out.ReceiveCoilName, out.TransmitCoilName) == ("weighted_se", "coil", "Linear body")
    assert verify([output], [source]).leaks == []


def test_a_coded_value_equal_to_its_own_source_value_is_a_listed_coincidence_not_a_leak(tmp_path):
    """A vendor's phantom whose institution is the manufacturer: the kept Manufacturer is not a leak of the
    institution, but it is listed; the same words in a non-coded kept attribute are a leak."""
    src = planted()
    src.InstitutionName = src.Manufacturer = "Zyxworth Systems"
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    report = verify([output], [source])
    assert report.leaks == []
    assert [(c.where, c.source_attribute) for c in report.coincidences] == [("(0008,0070)", "InstitutionName")]
    result = _cli_verify(output, source)
    assert "CODED" in result.output and "1 coded coincidence(s)" in result.output, result.output
    out = pydicom.dcmread(output)
    out.SoftwareVersions = "Zyxworth Systems"
    report = verify([_write(out, tmp_path / "leaky" / "a.dcm")], [source])
    assert ("(0018,1020)", "InstitutionName") in {(leak.where, leak.source_attribute) for leak in report.leaks}


def test_the_patients_name_in_a_nested_code_meaning_is_cut_and_the_coded_parts_stay(tmp_path):
    """A procedure code whose meaning was typed with the patient's name (Procedure Code Sequence is not in Table
    E.1-1, so it is kept): the guard cuts the name from the Code Meaning; Code Value and scheme stay as coded."""
    src = planted()
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "MRHEAD", "99LOCAL"
    item.CodeMeaning = f"MR head {NAME.split('^')[0]}"
    src.ProcedureCodeSequence = [item]
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    (out,) = pydicom.dcmread(output).ProcedureCodeSequence
    assert (out.CodeValue, out.CodingSchemeDesignator, out.CodeMeaning) == ("MRHEAD", "99LOCAL", "MR head")
    assert verify([output], [source]).leaks == []


def test_a_code_meaning_is_excused_only_for_words_its_own_source_had(tmp_path):
    """The guard cuts the patient's name from a Code Meaning; what is left ("Observer type") is the source code's
    own words, which here match a nested observer's name: a listed coincidence, not a leak (pydicom's test-SR has
    the same). A Code Meaning that gained a word of another identity is a leak."""
    src = planted()
    src.OperatorsName = "Kettleby^Rita"
    observer = pydicom.Dataset()
    observer.VerifyingObserverName = "Observer^Verifying"  # nested: the guard reads top-level names only
    src.VerifyingObserverSequence = [observer]
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "X1", "99LOCAL"
    item.CodeMeaning = f"Observer type {NAME.split('^')[0]}"
    src.ProcedureCodeSequence = [item]
    source, output = _deid(src, SITE_DEFAULT, tmp_path)
    assert pydicom.dcmread(output).ProcedureCodeSequence[0].CodeMeaning == "Observer type"
    assert verify([output], [source]).leaks == []
    out = pydicom.dcmread(output)
    out.ProcedureCodeSequence[0].CodeMeaning = "Observer type Rita"
    report = verify([_write(out, tmp_path / "leaky" / "a.dcm")], [source])
    assert "(0008,0104)" in [leak.where.split(".")[-1] for leak in report.leaks]
