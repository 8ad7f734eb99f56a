"""``deidentify(ds, context)``: one dataset in, a new de-identified dataset out (file meta and preamble new).

This is the single entry point that ingest, the batch runner and the browser uploader share. Pixel data is
passed through as stored bytes: never decoded, never recompressed. It must never put a header value in an
exception, message or log; failures raise ``DeidError`` subclasses with value-free reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pydicom.uid
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from incloud_kernel.deid.burned_in import burned_in_reason
from incloud_kernel.deid.context import DeidContext
from incloud_kernel.deid.errors import BurnedInText, InvalidInput
from incloud_kernel.deid.peek import peek
from incloud_kernel.deid.options import BASIC_PROFILE, OPTIONS
from incloud_kernel.deid.profile import TEXT_VRS, WalkState, apply, make_scrubber, plan_for
from incloud_kernel.deid.table import load_table
from incloud_kernel.deid.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128


@dataclass
class DeidRecord:
    """What happened to one instance, without any value: attribute names per action, and the UID pair.

    ``source_sop_uid`` is identifying (it links back to the hospital's archive): it goes only to the protected
    store, never to the output or the audit log.
    """

    source_sop_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    pseudonym: str
    changes: dict[str, list[str]] = field(default_factory=dict)


def _identity_tokens(ds: Dataset, plan_tags: dict[int, str]) -> set[str]:
    """Every text value the table removes or replaces (names, IDs, addresses...), for cleaning free text."""
    tokens: set[str] = set()

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            if elem.VR not in TEXT_VRS and elem.VR not in ("PN", "DA", "DT"):
                continue
            if elem.VR != "PN" and plan_tags.get(int(elem.tag)) in (None, "K", "C", "U"):
                continue
            values = list(elem.value) if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
            for v in values:
                text = str(v or "").strip()
                if not text:
                    continue
                tokens.add(text)
                for part in text.replace("=", "^").replace(",", " ").replace("^", " ").split():
                    tokens.add(part)

    walk(ds)
    return tokens


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding if hasattr(ds, "original_encoding") else (None, None)
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def check_instance(ds: Dataset) -> None:
    """Raise InvalidInput for things that are not composite instances we may rewrite (value-free reasons)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MediaStorageDirectoryStorage:
        raise InvalidInput("DICOMDIR media directory, not an instance", reason="dicomdir")
    if "DirectoryRecordSequence" in ds:
        raise InvalidInput("DICOMDIR media directory, not an instance", reason="dicomdir")
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not _sop_value(ds, keyword):
            raise InvalidInput(f"missing {keyword}: not a composite instance", reason=f"missing-{keyword}")


def _sop_value(ds: Dataset, keyword: str) -> str:
    """SOP Class/Instance UID from the dataset, else from the file meta (PS3.10 requires them equal)."""
    value = str(peek(ds, keyword, "") or "").strip()
    meta = getattr(ds, "file_meta", None)
    if not value and meta is not None:
        value = str(meta.get("MediaStorage" + keyword, "") or "").strip()
    return value


def deidentify_with_record(ds: Dataset, context: DeidContext) -> tuple[FileDataset, DeidRecord]:
    """De-identify ``ds`` (not modified) and say what changed. See ``deidentify``."""
    check_instance(ds)
    if not context.allow_burned_in:
        reason = burned_in_reason(ds)
        if reason:
            raise BurnedInText(f"held back: {reason}", reason=reason)
    plan = plan_for(context.options)
    dates_shifted = "retain_long_modified_dates" in context.options
    offset = context.date_offset(ds) if dates_shifted else None
    pseudonym = context.pseudonym(ds)

    tokens_cache: list = []

    def scrub(text: str) -> str:
        if not tokens_cache:
            tokens_cache.append(make_scrubber(_identity_tokens(ds, plan.tags)))
        return tokens_cache[0](text)

    state = WalkState(plan=plan, map_uid=context.map_uid, date_offset=offset, scrub=scrub)
    new = apply(ds, state)

    if "SOPInstanceUID" not in new:  # only in the file meta: carry it into the dataset, mapped
        new.SOPInstanceUID = context.map_uid(_sop_value(ds, "SOPInstanceUID"))
        state.note("U", 0x00080018)
    if "SOPClassUID" not in new:
        new.SOPClassUID = _sop_value(ds, "SOPClassUID")

    # Pseudonym, and the attributes PS3.15 E.1.1 requires of a de-identifier.
    new.PatientName = pseudonym
    new.PatientID = pseudonym
    new.PatientIdentityRemoved = "YES"
    table = load_table()
    codes = [BASIC_PROFILE] + [(OPTIONS[n].code, OPTIONS[n].meaning) for n in context.options]
    new.DeidentificationMethod = ("INCloud PS3.15 E.1-1 " + table.edition.split()[0])[:64]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    new.DeidentificationMethodCodeSequence = Sequence(items)
    new.LongitudinalTemporalInformationModified = "MODIFIED" if dates_shifted else "REMOVED"
    for action in ("D", "U"):
        state.changes.setdefault(action, set())
    state.changes["D"].update({"PatientName", "PatientID"})

    # File meta: rebuilt from scratch; the source's (application titles, private info) is not carried over.
    src_meta = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = new.SOPClassUID
    meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    meta.TransferSyntaxUID = _transfer_syntax(ds)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if src_meta is not None:
        for elem in src_meta:
            if int(elem.tag) not in (0x00020000, 0x00020001, 0x00020002, 0x00020010):
                state.note("U" if int(elem.tag) == 0x00020003 else "X"
                           if int(elem.tag) not in (0x00020012, 0x00020013) else "D", int(elem.tag))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    ts = pydicom.uid.UID(str(meta.TransferSyntaxUID))
    if ts.is_transfer_syntax:
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    out = FileDataset("", new, preamble=PREAMBLE, file_meta=meta,
                      is_implicit_VR=bool(implicit), is_little_endian=little is not False)
    # Keep the source's encoding and character set, so kept raw elements are written as read (fast path).
    out.set_original_encoding(bool(implicit), little is not False, ds.original_character_set)
    record = DeidRecord(
        source_sop_uid=_sop_value(ds, "SOPInstanceUID"), sop_uid=str(new.SOPInstanceUID),
        study_uid=str(new.get("StudyInstanceUID", "")), series_uid=str(new.get("SeriesInstanceUID", "")),
        pseudonym=pseudonym, changes={a: sorted(v) for a, v in sorted(state.changes.items()) if v},
    )
    return out, record


def deidentify(ds: Dataset, context: DeidContext) -> FileDataset:
    """A NEW dataset: PS3.15 Basic Profile plus ``context.options`` applied at every depth, file meta rebuilt.

    ``ds`` is not modified. Kept elements are shared with ``ds`` (not copied), so pixel data is never copied
    or decoded; do not modify the result's kept values in place if you still need ``ds``.
    Raises ``InvalidInput`` (not a composite instance, DICOMDIR) or ``BurnedInText`` (see ``burned_in``);
    pydicom errors on malformed elements propagate unchanged (report their type only, never ``str()`` them).
    """
    return deidentify_with_record(ds, context)[0]
