"""De-identification API: every action code and option on a real attribute, sequences, file meta, UIDs.

Inputs are pydicom's real MR_small with identities planted everywhere (top level, sequences three deep,
private blocks, file meta). The leak checker (``verify``) is what decides "no leak".
"""
from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence

from incloud_kernel.deid import BurnedInText, DeidContext, InvalidInput, deidentify
from incloud_kernel.deid.deidentify import deidentify_with_record
from incloud_kernel.deid.options import OPTIONS, SITE_DEFAULT
from incloud_kernel.deid.profile import plan_for
from incloud_kernel.deid.table import load_table
from incloud_kernel.deid.verify import check_output, identities_for, source_candidates

KEY = b"test-site-key-0123456789abcdef01"
NAME = "Zebulon^Quixotic"
PID = "QX-778812-ZB"
BIRTH = "19610423"
ADDRESS = "42 Quillfeather Lane, Zorbridge"
INSTITUTION = "Quillfeather Memorial Clinic"
REFERRER = "Marbleworth^Ophelia"
ACCESSION = "ACCQX99123"
PLANTED = [NAME, PID, BIRTH, ADDRESS, INSTITUTION, REFERRER, ACCESSION, "Zebulon", "Quixotic", "Marbleworth",
           "Zorbridge", "QXSCANNER01", "OTHQX5510"]


def planted(study_uid: str = "1.2.826.0.1.3680043.8.498.1", sop_uid: str = "1.2.826.0.1.3680043.8.498.1.1",
            ref_uid: str | None = None, study_date: str = "20200315") -> pydicom.FileDataset:
    """MR_small with identities planted at every level; ``ref_uid`` adds a Referenced Image Sequence."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = NAME
    ds.PatientID = PID
    ds.PatientBirthDate = BIRTH
    ds.PatientAddress = ADDRESS
    ds.PatientTelephoneNumbers = "+44-1632-960123"
    ds.OtherPatientIDs = "OTHQX5510"
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = ADDRESS
    ds.ReferringPhysicianName = REFERRER
    ds.OperatorsName = REFERRER
    ds.AccessionNumber = ACCESSION
    ds.ImageComments = f"patient {NAME} from Zorbridge"
    ds.SeriesDescription = "T1 MPRAGE Quixotic"
    ds.StudyDescription = "Brain for Zebulon"
    ds.PatientAge = "058Y"
    ds.PatientSex = "F"
    ds.PatientWeight = "71"
    ds.DeviceSerialNumber = "SN-4471"
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.SourceApplicationEntityTitle = "QXSCANNER01"
    # Sequences three deep: a name, an ID and a UID reference at depth 3.
    inner = Dataset()
    inner.PersonName = NAME
    inner.TextValue = f"seen by {REFERRER} at {INSTITUTION}"
    inner.ValueType = "TEXT"
    mid = Dataset()
    mid.ContentSequence = Sequence([inner])
    mid.ScheduledProcedureStepID = PID
    mid.ReferencedSOPInstanceUID = sop_uid
    top = Dataset()
    top.RequestAttributesSequence = Sequence([mid])
    top.RequestedProcedureID = ACCESSION
    ds.ContentSequence = Sequence([copy.deepcopy(inner)])
    ds.ProcedureCodeSequence = Sequence([top])  # not in the table: walked, its items cleaned by the table
    # Depth 3 through sequences the table does not list: a name, an ID, a UID and a private name.
    leaf = Dataset()
    leaf.PersonName = NAME
    leaf.PatientID = PID
    leaf.ReferencedSOPInstanceUID = sop_uid
    leaf.private_block(0x0013, "ACME HOSPITAL", create=True).add_new(0x01, "LO", NAME)
    level2 = Dataset()
    level2.DerivationCodeSequence = Sequence([leaf])
    level1 = Dataset()
    level1.PlanePositionSequence = Sequence([level2])
    ds.SharedFunctionalGroupsSequence = Sequence([level1])
    if ref_uid:  # at the top level (X/Z/U*: Type 3 in the MR IOD, so removed) and nested (strictest Type: U)
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ref_uid
        ds.ReferencedImageSequence = Sequence([ref])
        ds.DerivationImageSequence = Sequence([Dataset()])
        ds.DerivationImageSequence[0].SourceImageSequence = Sequence([copy.deepcopy(ref)])
    # A private block with a name, and a private sequence holding a name.
    block = ds.private_block(0x0011, "ACME HOSPITAL", create=True)
    block.add_new(0x01, "LO", NAME)
    item = Dataset()
    item.PatientName = NAME
    block.add_new(0x02, "SQ", Sequence([item]))
    return ds


def ctx(options=SITE_DEFAULT, **kw) -> DeidContext:
    return DeidContext(key=KEY, options=tuple(options), **kw)


def leaks_of(src: Dataset, out: pydicom.FileDataset, options, tmp_path: Path) -> list:
    path = tmp_path / "out.dcm"
    out.save_as(path, enforce_file_format=True)
    ids = identities_for(source_candidates(src), tuple(options))
    return check_output(path, pydicom.dcmread(path), ids, "out.dcm")


def raw_bytes(ds: pydicom.FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- the table -----------------------------------------------------------------------------------------------

def test_table_is_the_generated_full_table_with_its_edition():
    table = load_table()
    basic = table.rule_sets["basic_profile"]
    assert len(basic.tags) >= 600 and basic.private == "X"
    assert table.edition.startswith("20") and "idiscore" in table.source
    for option in OPTIONS.values():
        assert table.rule_sets[option.table_key].code == option.code


#: The shape of idiscore's ``_public_dicom.py`` (the generator's input), a few rows of it.
IDISCORE_SAMPLE = '''
from idiscore.identifiers import PrivateTags, RepeatingGroup, SingleTag
from idiscore.nema import ActionCodes, RawNemaRuleSet

basic_profile = RawNemaRuleSet(
    name="Basic Application Level Confidentiality Profile",
    code="113100",
    rules=[
        (SingleTag("00080050"), ActionCodes.EMPTY),  # AccessionNumber
        (
            SingleTag("0008002a"),
            ActionCodes.REMOVE_OR_EMPTY_OR_DUMMY,
        ),  # AcquisitionDateTime
        (RepeatingGroup("60xx4000"), ActionCodes.REMOVE),  # OverlayComments
        (PrivateTags(), ActionCodes.REMOVE),  # Private Attributes
    ],
)
retain_safe_private = RawNemaRuleSet(
    name="Retain Safe Private Option",
    code="113111",
    rules=[(PrivateTags(), ActionCodes.CLEAN)],  # Private Attributes
)
'''


def test_generator_parses_idiscores_table_without_idiscore():
    """idiscore (GPL, not importable with pydicom 3) is no dependency: the generator reads its data file as text."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import gen_deid_table

    sets = gen_deid_table.parse(IDISCORE_SAMPLE)
    assert sets["basic_profile"]["tags"] == {"00080050": "Z", "0008002a": "X/Z/D"}
    assert sets["basic_profile"]["repeating"] == {"60xx4000": "X"} and sets["basic_profile"]["private"] == "X"
    assert sets["retain_safe_private"]["private"] == "C"
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("idiscore") for d in deps["dependencies"])


def test_combined_actions_resolve_to_the_strictest_type_for_an_unknown_sop_class():
    tag = pydicom.datadict.tag_for_keyword
    for plan in (plan_for(()), plan_for((), "1.2.3.4.5.6.7.8.9")):  # no class / a private class
        assert plan.tags[tag("AcquisitionDate")] == "Z"  # X/Z
        assert plan.tags[tag("ProtocolName")] == "D"  # X/D
        assert plan.tags[tag("ContentDate")] == "D"  # Z/D
        assert plan.tags[tag("InstitutionName")] == "D"  # X/Z/D
        assert plan.tags[tag("ReferencedImageSequence")] == "U"  # X/Z/U*
        assert plan.iod is None


MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_combined_actions_resolve_from_the_attribute_type_in_the_iod():
    """PS3.3 Types per IOD (generated table): Type 3 -> X, Type 2 -> Z, Type 1 -> D/U, at the top level; inside
    sequence items the IOD's nested Type."""
    tag = pydicom.datadict.tag_for_keyword
    mr = plan_for((), MR_IMAGE)
    assert mr.iod == "mr-image"
    assert mr.tags[tag("InstitutionName")] == "X"  # X/Z/D, General Equipment: Type 3
    assert mr.tags[tag("ProtocolName")] == "X"  # X/D, General Series: Type 3
    assert mr.tags[tag("ContentDate")] == "Z"  # Z/D, General Image: Type 2C
    assert mr.tags[tag("AcquisitionDate")] == "X"  # X/Z, General Image: Type 3
    assert mr.tags[tag("ReferencedImageSequence")] == "X"  # X/Z/U*, General Image: Type 3
    assert mr.tags[tag("PatientID")] == "Z"  # Z/D, Patient: Type 2
    assert mr.tags[tag("ContrastBolusAgent")] == "Z"  # Z/D, Contrast/Bolus: Type 2
    enhanced = plan_for((), ENHANCED_MR_IMAGE)
    assert enhanced.tags[tag("ContentDate")] == "D"  # Multi-frame: Type 1
    assert enhanced.tags[tag("DeviceSerialNumber")] == "D"  # Enhanced General Equipment: Type 1
    assert enhanced.nested[tag("ReferencedImageSequence")] == "Z"  # in functional groups: Type 2
    assert mr.nested[tag("InstitutionName")] == "D"  # only nested where Type 1 (e.g. Equivalent Code...)
    ct = plan_for((), CT_IMAGE)
    assert ct.tags[tag("InstitutionName")] == "X" and ct.tags[tag("ContentDate")] == "Z"
    out = deidentify(planted(), ctx(()))  # MR_small: MR Image Storage
    assert "InstitutionName" not in out and not out.ContentDate and "ProtocolName" not in out


# --- one test per action code, on a real attribute -----------------------------------------------------------

def test_action_X_removes_image_comments():
    out = deidentify(planted(), ctx(()))
    assert "ImageComments" not in out and "PatientAddress" not in out


def test_action_Z_empties_accession_number():
    out = deidentify(planted(), ctx(()))
    assert "AccessionNumber" in out and not out.AccessionNumber


def test_action_D_replaces_a_dummy():
    src = planted()
    src.ClinicalTrialSponsorName = "Quillfeather Trials"  # D
    out = deidentify(src, ctx(()))
    assert out.ClinicalTrialSponsorName == "ANONYMOUS"
    enhanced = planted()
    enhanced.SOPClassUID = ENHANCED_MR_IMAGE  # Content Date is Type 1 in the enhanced IOD: Z/D -> D
    assert deidentify(enhanced, ctx(())).ContentDate == "19000101"


def test_action_K_keeps_device_serial_number_under_retain_device_identity():
    assert deidentify(planted(), ctx(("retain_device_identity",))).DeviceSerialNumber == "SN-4471"
    assert deidentify(planted(), ctx(())).get("DeviceSerialNumber") != "SN-4471"


def test_action_C_shifts_study_date_by_the_participant_offset():
    src = planted()
    context = ctx(("retain_long_modified_dates",))
    out = deidentify(src, context)
    offset = context.date_offset(src)
    assert -3650 <= offset <= -365
    import datetime as dt

    assert dt.datetime.strptime(out.StudyDate, "%Y%m%d") - dt.datetime.strptime(src.StudyDate, "%Y%m%d") == \
        dt.timedelta(days=offset)


def test_action_U_maps_uids_to_keyed_2_25_uids():
    src = planted()
    out = deidentify(src, ctx(()))
    assert out.StudyInstanceUID.startswith("2.25.") and out.StudyInstanceUID != src.StudyInstanceUID
    assert out.FrameOfReferenceUID == DeidContext(key=KEY).map_uid(src.FrameOfReferenceUID)
    assert len(out.SOPInstanceUID) <= 64
    assert out.SOPClassUID == src.SOPClassUID  # class UIDs are not identities


# --- options ------------------------------------------------------------------------------------------------

def test_every_output_says_identity_removed_and_lists_its_cid7050_codes():
    for options in [(), SITE_DEFAULT, tuple(OPTIONS)]:
        out = deidentify(planted(), ctx(options))
        assert out.PatientIdentityRemoved == "YES"
        codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
        assert codes == ["113100"] + [OPTIONS[o].code for o in OPTIONS if o in options]
        assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)


def test_retain_long_modified_dates_keeps_intervals_between_visits():
    context = ctx(("retain_long_modified_dates",))
    a = deidentify(planted(study_date="20200315"), context)
    b = deidentify(planted(study_uid="1.2.3.9", sop_uid="1.2.3.9.1", study_date="20210420"), context)
    import datetime as dt

    days = lambda s: dt.datetime.strptime(s, "%Y%m%d")  # noqa: E731
    assert (days(b.StudyDate) - days(a.StudyDate)).days == (days("20210420") - days("20200315")).days
    assert a.StudyDate != "20200315" and a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert deidentify(planted(), ctx(())).LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_patient_characteristics_keeps_sex_age_weight():
    out = deidentify(planted(), ctx(("retain_patient_characteristics",)))
    assert (out.PatientSex, out.PatientAge, str(out.PatientWeight)) == ("F", "058Y", "71")
    basic = deidentify(planted(), ctx(()))
    assert "PatientAge" not in basic and "PatientWeight" not in basic and not basic.PatientSex


def test_retain_device_identity_keeps_station_and_serial():
    out = deidentify(planted(), ctx(("retain_device_identity",)))
    assert out.DeviceSerialNumber == "SN-4471" and out.StationName == planted().StationName


def test_retain_safe_private_keeps_only_the_allow_list(tmp_path):
    import gzip

    import nibabel

    raw = gzip.decompress((Path(nibabel.__file__).parent / "nicom/tests/data/siemens_dwi_1000.dcm.gz").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.dcmread(io.BytesIO(raw))
    src.private_block(0x0011, "ACME HOSPITAL", create=True).add_new(0x01, "LO", NAME)
    out = deidentify(src, ctx(("retain_safe_private",)))
    from nibabel.nicom import csareader

    kept = csareader.read(out.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value)["tags"]
    orig = csareader.read(src.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value)["tags"]
    assert {k: v["items"] for k, v in kept.items()} == {k: v["items"] for k, v in orig.items()}  # cleaned slack only
    assert str(src.StationName).encode() not in out.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value
    assert not any((e.tag.group == 0x0011) for e in out)
    assert not any(e.tag.is_private for e in deidentify(src, ctx(())))
    assert leaks_of(src, out, ("retain_safe_private",), tmp_path) == []


def test_clean_descriptors_keeps_descriptions_without_identities():
    out = deidentify(planted(), ctx(("clean_descriptors",)))
    assert "MPRAGE" in out.SeriesDescription and "Quixotic" not in out.SeriesDescription
    assert "SeriesDescription" not in deidentify(planted(), ctx(()))


def test_clean_structured_content_cleans_text_in_content_sequence():
    out = deidentify(planted(), ctx(("clean_structured_content",)))
    text = out.ContentSequence[0].TextValue
    assert "seen by" in text and "Marbleworth" not in text and INSTITUTION not in text
    assert deidentify(planted(), ctx(())).ContentSequence[0].TextValue == "ANONYMOUS"


# --- depth, meta, leaks -------------------------------------------------------------------------------------

def test_actions_apply_at_every_depth_and_in_file_meta():
    src = planted()
    out = deidentify(src, ctx(()))
    item = out.ProcedureCodeSequence[0]
    assert "RequestAttributesSequence" not in item and "RequestedProcedureID" not in item  # X at depth 1
    leaf = out.SharedFunctionalGroupsSequence[0].PlanePositionSequence[0].DerivationCodeSequence[0]
    assert leaf.PersonName == "ANONYMOUS" and leaf.PatientID == "ANONYMOUS"  # D (Z/D) at depth 3
    assert leaf.ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert not any(e.tag.is_private for e in leaf)
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.preamble == b"\x00" * 128
    data = raw_bytes(out)
    assert data[:128] == b"\x00" * 128 and data[128:132] == b"DICM"


@pytest.mark.parametrize("options", [(), SITE_DEFAULT, ("clean_descriptors", "clean_structured_content"),
                                     tuple(OPTIONS), ("retain_long_modified_dates",),
                                     ("retain_patient_characteristics", "retain_device_identity")],
                         ids=lambda o: "+".join(o) or "basic")
def test_no_planted_identity_leaks_for_any_option_combination(options, tmp_path):
    src = planted(ref_uid="1.2.826.0.1.3680043.8.498.1.2")
    out = deidentify(src, ctx(options))
    assert leaks_of(src, out, options, tmp_path) == []
    data = raw_bytes(out).lower()
    for value in PLANTED:
        assert value.lower().encode() not in data


def _decoded(ds: pydicom.FileDataset) -> list[tuple[str, str, str]]:
    from incloud_kernel.deid.writer import encode_file

    back = pydicom.dcmread(io.BytesIO(encode_file(ds)))
    return sorted((str(e.tag), e.VR, repr(e.value)) for e in [*back.file_meta, *back.iterall()])


@pytest.mark.parametrize("options", [(), SITE_DEFAULT, tuple(OPTIONS)], ids=lambda o: "+".join(o) or "basic")
def test_raw_fast_path_gives_what_the_converted_path_gives(options):
    """Files are de-identified from raw (unconverted) elements; in-memory datasets through converted ones.
    Both must give the same output and the same audit record."""
    src = planted(ref_uid="1.2.826.0.1.3680043.8.498.1.2")
    src.SeriesDate, src.StudyTime, src.StudyID = "", "101500", ""
    buf = io.BytesIO()
    src.save_as(buf, enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw_src = pydicom.dcmread(io.BytesIO(buf.getvalue()))  # every element still raw
        src = pydicom.dcmread(io.BytesIO(buf.getvalue()))
        for _ in src.iterall():  # converts every element, at every depth, in place
            pass
    fast, rec_f = deidentify_with_record(raw_src, ctx(options), shared=True)
    slow, rec_s = deidentify_with_record(src, ctx(options))
    assert _decoded(fast) == _decoded(slow)
    assert rec_f.changes == rec_s.changes and rec_f.sop_uid == rec_s.sop_uid


def test_verify_finds_a_planted_leak(tmp_path):
    """The checker is not vacuous: an output that still holds a name is reported, without the value."""
    src = planted()
    out = deidentify(src, ctx(()))
    out.ImageComments = "note about Quixotic"
    leaks = leaks_of(src, out, (), tmp_path)
    assert leaks and all("Quixotic" not in str(leak) for leak in leaks)


def test_input_dataset_is_not_modified():
    src = planted()
    before = raw_bytes(src)
    deidentify(src, ctx(tuple(OPTIONS)))
    assert raw_bytes(src) == before


# --- UIDs, pseudonyms ------------------------------------------------------------------------------------------

def test_references_follow_the_instances_they_point_to():
    a_uid, b_uid = "1.2.826.0.1.3680043.8.498.7.1", "1.2.826.0.1.3680043.8.498.7.2"
    a = deidentify(planted(sop_uid=a_uid), ctx())
    b = deidentify(planted(sop_uid=b_uid, ref_uid=a_uid), ctx())
    assert "ReferencedImageSequence" not in b  # X/Z/U*: Type 3 in the MR Image IOD, so X
    assert b.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.StudyInstanceUID == a.StudyInstanceUID and b.PatientID == a.PatientID
    deep = b.ProcedureCodeSequence[0]
    assert "RequestAttributesSequence" not in deep


def test_same_study_twice_and_in_another_process_gives_identical_uids():
    src = planted()
    first, second = deidentify(src, ctx()), deidentify(planted(), DeidContext(key=KEY))
    assert (first.SOPInstanceUID, first.StudyInstanceUID, first.SeriesInstanceUID, first.PatientID) == \
        (second.SOPInstanceUID, second.StudyInstanceUID, second.SeriesInstanceUID, second.PatientID)
    code = ("import sys; sys.path.insert(0, %r); import test_deid as t; from incloud_kernel.deid import deidentify;"
            "o = deidentify(t.planted(), t.ctx()); print(o.SOPInstanceUID, o.StudyInstanceUID, o.PatientID)"
            % str(Path(__file__).parent))
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert other == [first.SOPInstanceUID, first.StudyInstanceUID, first.PatientID]
    assert deidentify(planted(), DeidContext(key=b"another-key-0123456789abcdef0123")).SOPInstanceUID != \
        first.SOPInstanceUID


def test_pseudonym_comes_from_the_callback():
    out = deidentify(planted(), ctx(pseudonym=lambda ds: "sub-0042"))
    assert out.PatientName == "sub-0042" and out.PatientID == "sub-0042"
    default = deidentify(planted(), ctx())
    assert default.PatientID.startswith("INC") and PID not in default.PatientID


def test_audit_record_names_attributes_and_actions_without_values():
    _, record = deidentify_with_record(planted(), ctx())
    text = repr(record.changes)
    assert "ImageComments" in record.changes["X"] and "StudyInstanceUID" in record.changes["U"]
    for value in PLANTED:
        assert value not in text


# --- pixel data and refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "JPEG-lossy.dcm", "MR_small_bigendian.dcm"])
def test_pixel_data_passes_through_untouched_and_stays_compressed(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.dcmread(get_testdata_file(name))
        out = pydicom.dcmread(io.BytesIO(raw_bytes(deidentify(src, ctx(allow_burned_in=True)))))
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert out.PixelData == src.PixelData


def test_burned_in_annotation_is_held_back_unless_allowed():
    src = planted()
    src.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInText) as err:
        deidentify(src, ctx())
    assert NAME not in str(err.value) and err.value.reason.startswith("burned-in")
    assert deidentify(src, ctx(allow_burned_in=True)).PatientIdentityRemoved == "YES"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = pydicom.dcmread(get_testdata_file("SC_rgb.dcm") or get_testdata_file("SC_rgb_rle.dcm"))
    with pytest.raises(BurnedInText):
        deidentify(sc, ctx())


def test_dicomdir_and_non_instances_are_refused_without_values():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomdir = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    with pytest.raises(InvalidInput) as err:
        deidentify(dicomdir, ctx())
    assert err.value.reason == "dicomdir"
    with pytest.raises(InvalidInput):
        deidentify(Dataset(), ctx())
