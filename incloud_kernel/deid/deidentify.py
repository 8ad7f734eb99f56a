"""``deidentify(ds, context)``: one dataset in, a new de-identified dataset out (file meta and preamble new).

This is the single entry point that ingest, the batch runner and the browser uploader share. Pixel data is
passed through as stored bytes: never decoded, never recompressed. It must never put a header value in an
exception, message or log; failures raise ``DeidError`` subclasses with value-free reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import pydicom.uid
from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from incloud_kernel.deid.burned_in import burned_in_reason
from incloud_kernel.deid.context import DeidContext
from incloud_kernel.deid.errors import BurnedInText, InvalidInput
from incloud_kernel.deid.groups import apply_in_bulk
from incloud_kernel.deid.peek import peek
from incloud_kernel.deid.options import BASIC_PROFILE, OPTIONS
from incloud_kernel.deid.profile import WalkState, apply, identity_guard, identity_tokens, make_scrubber, plan_for
from incloud_kernel.deid.table import load_table
from incloud_kernel.deid.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128
_DIRECTORY_RECORDS = BaseTag(0x00041220)  # Directory Record Sequence: a DICOMDIR


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
    if _DIRECTORY_RECORDS in ds:  # ``in`` converts nothing
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


def deidentify_with_record(ds: Dataset, context: DeidContext,
                           shared: bool = False) -> tuple[FileDataset, DeidRecord]:
    """De-identify ``ds`` (not modified) and say what changed. See ``deidentify``.

    ``shared``: the constant elements (De-identification Method and its code sequence...) are one cached object
    for all outputs of an option set (the batch runner, which only writes them); the API builds fresh ones.
    """
    check_instance(ds)
    if not context.allow_burned_in:
        reason = burned_in_reason(ds)
        if reason:
            raise BurnedInText(f"held back: {reason}", reason=reason)
    plan = plan_for(context.options, _sop_value(ds, "SOPClassUID"))  # combined actions: the IOD's Types
    dates_shifted = "retain_long_modified_dates" in context.options
    offset = context.date_offset(ds) if dates_shifted else None
    pseudonym = context.pseudonym(ds)

    tokens_cache: list = []

    def scrub(text: str) -> str:
        if not tokens_cache:
            tokens_cache.append(make_scrubber(identity_tokens(ds, plan)))
        return tokens_cache[0](text)

    state = WalkState(plan=plan, map_uid=context.map_uid, date_offset=offset, scrub=scrub,
                      guard=identity_guard(ds, plan))  # the patient's names/IDs out of unlisted text
    new = apply_in_bulk(ds, apply, state, plan.tags)  # = apply(ds, state), faster

    if "SOPInstanceUID" not in new:  # only in the file meta: carry it into the dataset, mapped
        new.SOPInstanceUID = context.map_uid(_sop_value(ds, "SOPInstanceUID"))
        state.note("U", 0x00080018)
    if "SOPClassUID" not in new:
        new.SOPClassUID = _sop_value(ds, "SOPClassUID")

    # Pseudonym, and the attributes PS3.15 E.1.1 requires of a de-identifier.
    new.add(DataElement(0x00100010, "PN", pseudonym))
    new.add(DataElement(0x00100020, "LO", pseudonym))
    for elem in _method_elements(context.options, dates_shifted, shared):
        new.add(elem)
    for action in ("D", "U"):
        state.changes.setdefault(action, set())
    state.changes["D"].update({"PatientName", "PatientID"})

    # File meta: rebuilt from scratch; the source's (application titles, private info) is not carried over.
    src_meta = getattr(ds, "file_meta", None)
    sop_class = peek(new, 0x00080016)
    sop_instance = peek(new, 0x00080018)
    meta_elements = {}
    for tag, vr, value in ((0x00020001, "OB", b"\x00\x01"), (0x00020002, "UI", sop_class),
                           (0x00020003, "UI", sop_instance), (0x00020010, "UI", _transfer_syntax(ds)),
                           (0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
                           (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME)):
        data = value if isinstance(value, bytes) else str(value).encode("ascii", "replace")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        meta_elements[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)
    meta = FileMetaDataset(meta_elements)  # raw (explicit VR LE), converted on access as read ones are
    if src_meta is not None:
        for tag in src_meta.keys():  # tags only: the values are not needed (nor converted)
            tag = int(tag)
            if tag not in (0x00020000, 0x00020001, 0x00020002, 0x00020010):
                state.note("U" if tag == 0x00020003 else "X" if tag not in (0x00020012, 0x00020013) else "D", tag)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    ts = pydicom.uid.UID(str(peek(meta, 0x00020010)))
    if ts.is_transfer_syntax:
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
    # Values left deferred in the source file (large pixel data, never read) are read from it on access.
    source = getattr(ds, "filename", None)
    out = FileDataset(source if isinstance(source, str) else "", new, preamble=PREAMBLE, file_meta=meta,
                      is_implicit_VR=bool(implicit), is_little_endian=little is not False)
    # Keep the source's encoding and character set, so kept raw elements are written as read (fast path).
    out.set_original_encoding(bool(implicit), little is not False, ds.original_character_set)
    record = DeidRecord(
        source_sop_uid=_sop_value(ds, "SOPInstanceUID"), sop_uid=str(sop_instance),
        study_uid=str(peek(new, 0x0020000D, "") or ""), series_uid=str(peek(new, 0x0020000E, "") or ""),
        pseudonym=pseudonym, changes={a: sorted(v) for a, v in sorted(state.changes.items()) if v},
    )
    return out, record


def _build_method_elements(options: tuple[str, ...], dates_shifted: bool) -> tuple[DataElement, ...]:
    """Patient Identity Removed, De-identification Method (+ CID 7050 codes), Longitudinal Temporal Info."""
    table = load_table()
    items = []
    for value, meaning in [BASIC_PROFILE] + [(OPTIONS[n].code, OPTIONS[n].meaning) for n in options]:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return (
        DataElement(0x00120062, "CS", "YES"),
        DataElement(0x00120063, "LO", ("INCloud PS3.15 E.1-1 " + table.edition.split()[0])[:64]),
        DataElement(0x00120064, "SQ", Sequence(items)),
        DataElement(0x00280303, "CS", "MODIFIED" if dates_shifted else "REMOVED"),
    )


_cached_method_elements = lru_cache(maxsize=64)(_build_method_elements)


def _method_elements(options: tuple[str, ...], dates_shifted: bool, shared: bool) -> tuple[DataElement, ...]:
    return (_cached_method_elements if shared else _build_method_elements)(options, dates_shifted)


def deidentify(ds: Dataset, context: DeidContext) -> FileDataset:
    """A NEW dataset: PS3.15 Basic Profile plus ``context.options`` applied at every depth, file meta rebuilt.

    ``ds`` is not modified. Kept elements are shared with ``ds`` (not copied), so pixel data is never copied
    or decoded; do not modify the result's kept values in place if you still need ``ds``.
    Raises ``InvalidInput`` (not a composite instance, DICOMDIR) or ``BurnedInText`` (see ``burned_in``);
    pydicom errors on malformed elements propagate unchanged (report their type only, never ``str()`` them).
    """
    return deidentify_with_record(ds, context)[0]
