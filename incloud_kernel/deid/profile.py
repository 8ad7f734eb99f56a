"""The actions of Table E.1-1 (D, Z, X, K, C, U and the combined ones) and the walk that applies them.

``plan_for(options)`` resolves, once per option set, one single action per tag. ``apply`` walks a dataset and
every sequence item at every depth and builds a new dataset; it never decodes pixel data and never logs or
raises with a header value.

Combined actions and the IOD Type. Table E.1-1 says e.g. "X/Z: X unless Z is required to maintain IOD
conformance (Type 2)". ``plan_for(options, sop_class)`` resolves each combined action from the attribute's
Type in that SOP class's IOD, read from ``iod_types.json`` (generated from PS3.3 by scripts/gen_iod_types.py):
Type 1 -> D (U for X/Z/U*; Z for X/Z), Type 2 -> Z, Type 3 -> X (Z for Z/D). At the top level an attribute the IOD
does not hold is treated as Type 3 (removing it cannot break conformance). Inside sequence items the Type is
the strictest the IOD gives the attribute in any item that holds it. A SOP class the table does not know, and
an attribute nested where the IOD does not nest it, get the strictest Type (1): a dummy is a fixed value and a
U is a keyed-HMAC UID, so neither carries anything from the source, and the output stays valid whatever the
Type. One refinement: an element that is present but empty in the source is evidently not Type 1 there, and
stays empty (Z).

Beyond the table (safety nets, stricter than the standard requires):
- a PN element the table does not list is treated as D; a UI element the table does not list is mapped (U)
  unless it is a registered UID of the standard or a ``...ClassUID``;
- inside a sequence whose action is D (e.g. Content Sequence), free-text values the table does not list
  (Text Value...) become dummies; inside one whose action is C (Clean Structured Content) they are cleaned;
- elsewhere, text the table does not list (Sequence Name...) loses the patient's own names and IDs
  (``IdentityGuard``);
- an element with no valid VR refuses the file (``InvalidInput``); command/meta group elements in a dataset
  are dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from pydicom import Dataset
from pydicom.charset import decode_bytes, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from incloud_kernel.deid.csa import clean_csa2
from incloud_kernel.deid.dates import shift_da, shift_dt
from incloud_kernel.deid.errors import InvalidInput
from incloud_kernel.deid.options import OPTIONS, SAFE_PRIVATE_INDEX
from incloud_kernel.deid.peek import peek_element
from incloud_kernel.deid.table import load_iod_types, load_table, repeating_match
from incloud_kernel.deid.uids import is_well_known

#: Combined action -> single action per PS3.3 Type of the attribute in the IOD (PS3.15 Table E.1-1 notes).
COMBINED_BY_TYPE: dict[str, dict[int, str]] = {
    "X/Z": {1: "Z", 2: "Z", 3: "X"},
    "X/D": {1: "D", 2: "D", 3: "X"},
    "Z/D": {1: "D", 2: "Z", 3: "Z"},
    "X/Z/D": {1: "D", 2: "Z", 3: "X"},
    "X/Z/U*": {1: "U", 2: "Z", 3: "X"},
}
#: Combined action -> single action under the strictest Type (1): unknown SOP class or nesting.
COMBINED_UNDER_TYPE_1 = {a: by_type[1] for a, by_type in COMBINED_BY_TYPE.items()}

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
#: Bytes per value of the binary VRs (PS3.5 Table 6.2-1): a stored length must be a multiple of it.
_VALUE_WIDTH = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8,
                "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2}
#: Value Representations of PS3.5 (pydicom's list): anything else in an explicit-VR file is corrupt input.
KNOWN_VRS = frozenset(v.value for v in VR)
#: Code items (Code Value, Coding Scheme Designator/Version, Code Meaning...) are coded concepts, not identity.
CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080106, 0x00080107,
                       0x00080119, 0x00080120, 0x0040A040, 0x0040A010})
#: What the identity guard never cuts: the code item's coded parts. Code Meaning is read by people and typed at
#: consoles (a procedure code's meaning can carry the patient's name), so the guard does look at it.
GUARD_EXEMPT = CODE_TAGS - {0x00080104}
DUMMY_TEXT = "ANONYMOUS"
DUMMIES: dict[str, object] = {
    "AE": "ANON", "AS": "000Y", "CS": "ANONYMOUS", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
    "DS": "0", "IS": "0", "LO": DUMMY_TEXT, "SH": DUMMY_TEXT, "LT": DUMMY_TEXT, "ST": DUMMY_TEXT,
    "UT": DUMMY_TEXT, "UC": DUMMY_TEXT, "PN": DUMMY_TEXT, "UR": "", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0,
    "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": None,
}


#: String VRs whose converted value is empty when the stored bytes are only spaces and NULs.
_STRIPPED_EMPTY_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                                 "UC", "UI", "UR", "UT"})


@dataclass(frozen=True)
class Plan:
    """One action per standard tag (top level and inside sequence items), plus the rules for repeating groups
    and private attributes."""

    options: tuple[str, ...]
    tags: dict[int, str]
    repeating: tuple[tuple[str, str], ...]
    private: str  # "X" (basic) or "C" (Retain Safe Private: keep the allow-list)
    #: Tags whose C comes from Clean Descriptors / Clean Structured Content: their text is scrubbed. A C from
    #: another option on a text attribute (e.g. Timezone Offset From UTC under Modified Dates) keeps the text.
    scrub_tags: frozenset[int] = frozenset()
    #: Actions inside sequence items (combined actions resolved with the Types of nested attributes).
    nested: dict[int, str] = field(default_factory=dict)
    #: Tags the basic profile removes or replaces but an option in force keeps (K, or a C that keeps the text),
    #: with the name of that option: "retained by option", the only values the leak checker may excuse, and
    #: only in that same attribute.
    retained: dict[int, str] = field(default_factory=dict)
    iod: str | None = None  # the IOD whose Types resolved the combined actions (None: strictest Type)


def resolve_combined(action: str, tag: int, types: dict[int, int] | None, absent: int) -> str:
    """The single action for ``action`` on ``tag`` given the IOD's Types (``absent``: Type when not listed)."""
    by_type = COMBINED_BY_TYPE.get(action)
    if by_type is None:
        return action
    if types is None:
        return by_type[1]
    return by_type[types.get(tag, absent)]


@lru_cache(maxsize=256)
def plan_for(options: tuple[str, ...], sop_class: str | None = None) -> Plan:
    """Resolve the basic profile overlaid by the chosen options (in ``OPTIONS`` order, later wins), with combined
    actions resolved from the Types of ``sop_class``'s IOD (strictest Type if the class is unknown or None)."""
    table = load_table()
    basic = table.rule_sets["basic_profile"]
    tags = dict(basic.tags)
    repeating = dict(basic.repeating)
    private = basic.private or "X"
    scrub: set[int] = set()
    set_by: dict[int, str] = {}
    for name in OPTIONS:
        if name not in options:
            continue
        column = table.rule_sets[OPTIONS[name].table_key]
        tags.update(column.tags)
        set_by.update(dict.fromkeys(column.tags, name))
        if name in ("clean_descriptors", "clean_structured_content"):
            scrub.update(t for t, a in column.tags.items() if a == "C")
        else:
            scrub.difference_update(column.tags)
        repeating.update(column.repeating)
        if column.private:
            private = column.private
    iod_table = load_iod_types()
    iod = iod_table.sop_classes.get((sop_class or "").strip())
    types = iod_table.iods.get(iod) if iod else None
    resolved = {t: resolve_combined(a, t, types.top if types else None, 3) for t, a in tags.items()}
    nested = {t: resolve_combined(a, t, types.nested if types else None, 1) for t, a in tags.items()}
    rep = tuple((p, COMBINED_UNDER_TYPE_1.get(a, a)) for p, a in repeating.items())
    retained = {t: set_by[t] for t, a in tags.items()
                if t in set_by and basic.tags.get(t, "K") != "K" and (a == "K" or (a == "C" and t not in scrub))}
    return Plan(options=options, tags=resolved, repeating=rep, private=private, scrub_tags=frozenset(scrub),
                nested=nested, retained=retained, iod=iod if types else None)


@dataclass
class WalkState:
    """What one dataset's walk needs and records. ``changes`` maps action -> names of attributes (no values)."""

    plan: Plan
    map_uid: Callable[[str], str]
    date_offset: int | None  # days, when dates are shifted (Retain ... Modified Dates)
    scrub: Callable[[str], str]
    changes: dict[str, set[str]] = field(default_factory=dict)
    in_clean_content: bool = False  # inside a sequence cleaned by Clean Structured Content
    #: The patient's own identity words, cut out of text the table does not list (None: no such safety net).
    guard: IdentityGuard | None = None

    def note(self, action: str, tag: int) -> None:
        self.changes.setdefault(action, set()).add(_tag_name(tag))


@lru_cache(maxsize=8192)
def _class_uid_tag(tag: int) -> bool:
    """UI attributes the general path keeps whatever their value: ``...ClassUID`` and Transfer Syntax UID."""
    kw = keyword_for_tag(tag)
    return kw.endswith("ClassUID") or kw == "TransferSyntaxUID"


@lru_cache(maxsize=8192)
def _tag_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _values(value: object) -> list:
    if isinstance(value, (list, MultiValue)):
        return list(value)
    return [value]


def _empty(elem: DataElement) -> DataElement:
    if elem.VR == "SQ":
        return DataElement(elem.tag, "SQ", Sequence([]))
    return DataElement(elem.tag, elem.VR, None)


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    return value is None or value == "" or value == b"" or (isinstance(value, (list, MultiValue, Sequence)) and len(value) == 0)


def _dummy(elem: DataElement, st: WalkState) -> DataElement:
    vr = elem.VR
    if vr == "UI":
        return _map_uids(elem, st)
    if vr in DUMMIES and DUMMIES[vr] is not None:
        return DataElement(elem.tag, vr, DUMMIES[vr])
    return DataElement(elem.tag, vr, b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else None)


def _map_uids(elem: DataElement, st: WalkState) -> DataElement:
    if elem.value is None or elem.value == "":
        return DataElement(elem.tag, "UI", elem.value)
    mapped = [st.map_uid(v) for v in _values(elem.value)]
    return DataElement(elem.tag, "UI", mapped if len(mapped) > 1 else mapped[0])


def _clean(elem: DataElement, st: WalkState, depth: int) -> DataElement | None:
    """C: replace with values of similar meaning that carry no identity (shift dates, scrub text...)."""
    vr = elem.VR
    if vr in ("DA", "DT"):
        if st.date_offset is None:
            return _dummy(elem, st)
        shift = shift_da if vr == "DA" else shift_dt
        out = []
        for v in _values(elem.value):
            if v in (None, ""):
                continue
            s = shift(str(v), st.date_offset)
            if s is None:
                return None  # not a full date: cannot shift faithfully, so remove
            out.append(s)
        return DataElement(elem.tag, vr, out if len(out) > 1 else (out[0] if out else None))
    if vr == "TM":
        return elem if st.date_offset is not None else _dummy(elem, st)
    if vr == "PN":
        return _dummy(elem, st)
    if vr == "UI":
        return _map_uids(elem, st)
    if vr == "SQ":
        return DataElement(elem.tag, "SQ", Sequence([apply(i, st, depth + 1, "C") for i in elem.value]))
    if vr in TEXT_VRS or vr == "CS":
        if int(elem.tag) not in st.plan.scrub_tags and not st.in_clean_content:
            return elem
        vals = [st.scrub(str(v)) if v is not None else v for v in _values(elem.value)]
        return DataElement(elem.tag, vr, vals if len(vals) > 1 else vals[0])
    return elem


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if len(vr) == 2 else None  # ambiguous VRs (US or SS...) take the slow path


def _private_keep(src: Dataset, tag_obj: BaseTag, st: WalkState) -> DataElement | None:
    """The element to keep under Retain Safe Private (cleaned if its entry says so), else None.

    Decided from the tag and its block's creator first: an element no entry lists is removed without ever being
    converted (a Philips header holds hundreds, and a corrupt one is then simply gone).
    """
    if st.plan.private != "C":
        return None
    tag = int(tag_obj)
    group, element = tag >> 16, tag & 0xFFFF
    if element < 0x1000:
        return None  # creators are decided after their block's elements
    creator = src.get((group << 16) | (element >> 8))
    if creator is None or not isinstance(creator.value, str):
        return None
    entry = SAFE_PRIVATE_INDEX.get((creator.value.strip().upper(), group, element & 0xFF))
    if entry is None:
        return None
    elem = src[tag_obj]
    if entry.clean == "csa2":
        cleaned = clean_csa2(bytes(elem.value or b""))
        return None if cleaned is None else DataElement(tag, elem.VR, cleaned)
    return elem


def _ascii_values(value: bytes) -> list[str] | None:
    """The values of a raw string element as pydicom would give them (split, stripped); None if not ASCII."""
    if not value.isascii():
        return None
    return [v.strip(" \x00") for v in value.decode("ascii").split("\\")]


def _raw_text(tag: int, vr: str, text: str, like: RawDataElement) -> RawDataElement:
    """A new raw element holding ASCII ``text`` (padded as PS3.5 says), encoded like ``like``."""
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return RawDataElement(like.tag, vr, len(data), data, 0, like.is_implicit_VR, like.is_little_endian)


def _raw_action(action: str, tag_obj, raw: RawDataElement, vr: str, st: WalkState, out: dict) -> bool:
    """D, U and C on a non-empty raw element without converting it; False when the general path must do it.

    Gives exactly what ``_dummy``, ``_map_uids`` and ``_clean`` give for the converted element, as raw bytes.
    """
    tag = int(tag_obj)
    if action == "C":
        if vr in ("DA", "DT"):
            if st.date_offset is not None:
                values = _ascii_values(raw.value)
                if values is None:
                    return False
                shift = shift_da if vr == "DA" else shift_dt
                shifted = []
                for v in values:
                    if not v:
                        continue
                    moved = shift(v, st.date_offset)
                    if moved is None:  # not a full date: cannot shift faithfully, so remove
                        st.note("C", tag)
                        return True
                    shifted.append(moved)
                st.note("C", tag)
                out[tag_obj] = _raw_text(tag, vr, "\\".join(shifted), raw)
                return True
        elif vr == "TM":
            if st.date_offset is not None:
                st.note("C", tag)
                out[tag_obj] = raw
                return True
        elif vr in TEXT_VRS or vr == "CS":
            if tag in st.plan.scrub_tags or st.in_clean_content:
                return False
            st.note("C", tag)
            out[tag_obj] = raw
            return True
        elif vr not in ("PN", "UI", "SQ"):
            st.note("C", tag)
            out[tag_obj] = raw
            return True
    if action not in ("C", "D", "U"):
        return False
    if vr == "UI":
        values = _ascii_values(raw.value)
        if values is None:
            return False
        st.note(action, tag)
        out[tag_obj] = _raw_text(tag, "UI", "\\".join(st.map_uid(v) for v in values), raw)
        return True
    dummy = DUMMIES.get(vr)
    if dummy is None or not isinstance(dummy, str):
        return False
    st.note(action, tag)
    out[tag_obj] = _raw_text(tag, vr, dummy, raw)
    return True


def kept_as_stored(tags: dict[int, str], tag: int, vr: str, context: str) -> str:
    """How ``apply`` treats a public raw element (not private, not a repeating group) from its tag, VR and place
    alone: "keep" its stored bytes whatever the value; "guard": keep them unless the identity guard finds one of
    the patient's words in them; "": the value or an action other than K decides (``raw_action``, general path).

    ``tags``: the plan's actions at that depth (``plan.tags`` or ``plan.nested``); ``context``: the enclosing
    sequence's action. Public so that ``deid.groups`` derives its plan per functional group macro from the very
    rule ``apply`` follows (``apply`` calls it for every such element): the two cannot disagree.
    """
    if tags.get(tag, "K") != "K":
        return ""
    if vr == "UI":  # SOP Class UID and the like: kept (see the general path); other UIDs may be mapped
        return "keep" if tag not in tags and _class_uid_tag(tag) else ""
    if vr in ("SQ", "PN") or (context and vr in TEXT_VRS and tag not in CODE_TAGS):
        return ""
    if vr in TEXT_VRS and tag not in tags and tag not in GUARD_EXEMPT:
        return "guard"
    return "keep"


def raw_action(action: str, tag_obj, raw: RawDataElement, vr: str, st: WalkState, out: dict) -> bool:
    """``action`` (not K) on a public raw element (not a sequence) listed in the plan at its depth, decided
    without converting it: True when done (the output, if any, put in ``out``; the change noted), False when
    the general path must do it. What ``apply`` does for such an element; public for ``deid.groups``.
    """
    tag = int(tag_obj)
    if action == "X":
        st.note("X", tag)
        return True
    empty = raw.length == 0 or (vr in _STRIPPED_EMPTY_VRS and not raw.value.strip(b" \x00"))
    if action == "Z" or (empty and action in ("D", "U", "C")):
        st.note(action, tag)
        out[tag_obj] = _raw_text(tag, vr, "", raw)  # empty, as _empty() gives
        return True
    return _raw_action(action, tag_obj, raw, vr, st, out)


def apply(src: Dataset, st: WalkState, depth: int = 0, context: str = "") -> Dataset:
    """Return a new dataset holding ``src`` with the plan applied at this level and in every sequence item.

    ``context`` is the action of the enclosing sequence ("D" or "C" for content that must be replaced or
    cleaned). Element conversion errors from pydicom propagate (the caller reports their type only).
    """
    plan = st.plan
    out = Dataset()
    # Same encoding as the source, so that elements kept verbatim are written from their raw bytes
    # (never converted to values and back): the fast path for everything the table keeps.
    implicit, little = src.original_encoding
    if implicit is not None:
        out.set_original_encoding(implicit, little, src.original_character_set)
    kept_private_blocks: set[tuple[int, int]] = set()
    creators: list[DataElement] = []
    src_dict = src._dict  # noqa: SLF001 - raw elements are read (and copied) without conversion
    out_dict = out._dict  # noqa: SLF001
    tags = plan.tags if depth == 0 else plan.nested
    for tag_obj in sorted(src_dict, key=int):  # int keys: BaseTag's own comparisons are slow
        tag = int(tag_obj)
        if tag < 0x00080000:  # command, file meta or directory groups inside a dataset: invalid there, dropped
            st.note("X", tag)  # (the file meta is rebuilt; a reader would take these for a second meta)
            continue
        raw = src_dict[tag_obj]
        if type(raw) is RawDataElement and raw.VR is not None and raw.VR not in KNOWN_VRS:
            # Garbage read as an element (a corrupt length upstream): written back, no reader could parse it.
            raise InvalidInput(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has no valid VR", reason="unknown-vr")
        if type(raw) is RawDataElement and (raw.value is not None or raw.length == 0) and \
                (raw.VR is not None or implicit) and raw.VR != "UN":  # UN: pydicom resolves the real VR
            raw_vr = raw.VR or _dictionary_vr(tag)
            if raw.length != 0xFFFFFFFF and raw.length % _VALUE_WIDTH.get(raw_vr, 1):
                # A binary value whose length its VR cannot hold (a corrupt tag or length upstream): written back,
                # no reader could convert it.
                raise InvalidInput(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has a length its VR cannot hold",
                                   reason="bad-length")
            if raw_vr and not (tag >> 16) & 1 and (tag >> 24) not in (0x50, 0x60):
                action = tags.get(tag, "K")
                if action == "K":
                    how = kept_as_stored(tags, tag, raw_vr, context)
                    if how == "keep" or (how == "guard" and (st.guard is None or not st.guard.hit(raw.value))):
                        out_dict[tag_obj] = raw  # as Dataset.__setitem__ does for a public raw element
                        continue
                elif raw_vr != "SQ" and tag in tags and raw_action(action, tag_obj, raw, raw_vr, st, out_dict):
                    continue
        group = tag >> 16
        if group & 1:  # private: read only when kept (a creator, an element Retain Safe Private lists)
            if (tag & 0xFFFF) < 0x0100 and (tag & 0xFFFF) >= 0x0010:
                creators.append(tag_obj)
                continue
            keep = _private_keep(src, tag_obj, st)
            if keep is not None:
                out.add(keep)
                kept_private_blocks.add((group, (tag & 0xFFFF) >> 8))
                st.note("K", tag)
            else:
                st.note("X", tag)
            continue
        elem = src[tag_obj]
        action = tags.get(tag)
        if action is None and (group >> 8) in (0x50, 0x60):
            for pattern, act in plan.repeating:
                if repeating_match(pattern, tag):
                    action = act
                    break
        vr = elem.VR
        if action is None:  # not in the table: keep, with the safety nets of the module docstring
            if vr == "SQ":
                out.add(DataElement(tag, "SQ", Sequence([apply(i, st, depth + 1, context) for i in elem.value])))
            elif vr == "UI":
                kw = keyword_for_tag(tag)
                if kw.endswith("ClassUID") or kw == "TransferSyntaxUID" or _is_empty(elem) or \
                        all(is_well_known(v) for v in _values(elem.value)):
                    out.add(elem)
                else:
                    out.add(_map_uids(elem, st))
                    st.note("U", tag)
            elif vr == "PN" and not _is_empty(elem):
                out.add(_dummy(elem, st))
                st.note("D", tag)
            elif context and vr in TEXT_VRS and tag not in CODE_TAGS and not _is_empty(elem):
                if context == "D":
                    out.add(_dummy(elem, st))
                else:
                    saved, st.in_clean_content = st.in_clean_content, True
                    out.add(_clean(elem, st, depth))
                    st.in_clean_content = saved
                st.note(context, tag)
            elif st.guard is not None and vr in TEXT_VRS and tag not in GUARD_EXEMPT and not _is_empty(elem) and \
                    (cut := st.guard.cut_element(elem)) is not None:
                out.add(cut)  # the patient's own name or ID in text the table does not list (Sequence Name...)
                st.note("C", tag)
            else:
                out.add(elem)
            continue
        if action == "K":
            if vr == "SQ":
                out.add(DataElement(tag, "SQ", Sequence([apply(i, st, depth + 1, context) for i in elem.value])))
            else:
                out.add(elem)
            continue
        st.note(action, tag)
        if action == "X":
            continue
        if action == "Z" or _is_empty(elem):
            out.add(_empty(elem))
        elif action == "D":
            if vr == "SQ":
                out.add(DataElement(tag, "SQ", Sequence([apply(i, st, depth + 1, "D") for i in elem.value])))
            else:
                out.add(_dummy(elem, st))
        elif action == "U":
            if vr == "SQ":
                out.add(DataElement(tag, "SQ", Sequence([apply(i, st, depth + 1, context) for i in elem.value])))
            elif vr == "UI":
                out.add(_map_uids(elem, st))
            else:
                out.add(_dummy(elem, st))
        elif action == "C":
            cleaned = _clean(elem, st, depth)
            if cleaned is not None:
                out.add(cleaned)
        else:  # an action code we do not know: the safe thing is to remove
            continue
    for creator in creators:
        group, block = int(creator) >> 16, int(creator) & 0xFF
        if (group, block) in kept_private_blocks:
            out.add(src[creator])
        else:
            st.note("X", int(creator))
    return out


#: Splits a value into words: at anything that is not a letter or a digit (hyphens, apostrophes, dots...).
_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z\u00C0-\uFFFF]+")


def _date_forms(value: str) -> list[str]:
    """A DA (or the date part of a DT) as it may be typed in free text: 19610423, 1961-04-23, 23.04.1961..."""
    digits = value.strip()[:8]
    if len(digits) != 8 or not digits.isdigit():
        return []
    y, m, d = digits[:4], digits[4:6], digits[6:]
    return [digits, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}"]


def _text_tokens(text: str) -> list[str]:
    """The whole value and each of its words (split at anything that is not a letter or digit)."""
    text = text.strip()
    if not text:
        return []
    words = [w for w in _TOKEN_SPLIT.split(text) if w]
    return [text, *words, *(" ".join(words),)] if len(words) > 1 else [text, *words]


def identity_tokens(ds: Dataset, plan: Plan) -> set[str]:
    """Every identifying value of this instance and each of its words: what Clean Descriptors and Clean
    Structured Content cut out of free text.

    Identifying: every Person Name (public or private, at any depth); every text or AE value the plan in force
    removes or replaces (X, Z, D and the combined actions: IDs, other IDs, addresses, telephone numbers,
    institution, physicians, operators, requesting service...); every date the plan removes or shifts, and the
    birth date always, in the forms dates are typed in text. Not identifying: what the user keeps by option
    (``plan.retained``) and the descriptors being cleaned themselves. Every instance carries the Patient module,
    so the patient's own values are always here; values only found in *other* instances are not.
    """
    tokens: set[str] = set()

    def walk(d: Dataset, depth: int) -> None:
        tags = plan.tags if depth == 0 else plan.nested
        for elem in d:
            vr = elem.VR
            tag = int(elem.tag)
            if vr == "SQ":
                for item in elem.value or []:
                    walk(item, depth + 1)
                continue
            value = elem.value
            if isinstance(value, (bytes, bytearray)) and not (tag >> 16) & 1:
                # A public text attribute stored as OB/UN (a VR the dictionary disagrees with): its text counts.
                vr = _dictionary_vr(tag) or vr
                if vr not in ("PN", "DA", "DT", "AE", *TEXT_VRS):
                    continue
            action = tags.get(tag)
            if vr == "PN":
                pass
            elif vr in ("DA", "DT"):
                if not ("Birth" in _tag_name(tag) or (action not in (None, "K") and tag not in plan.retained)):
                    continue
            elif vr in TEXT_VRS or vr == "AE":
                if action not in ("X", "Z", "D", "U") or tag >> 16 & 1 or tag in DESCRIPTOR_TAGS:
                    continue
            else:
                continue
            _add_tokens(tokens, vr, value, ds)

    walk(ds, 0)
    tokens.discard("")
    return tokens


#: Descriptors (the Clean Descriptors / Clean Structured Content columns): free-text containers. Their words are
#: not identities in themselves (a series description "T1 MPRAGE" is not a person); identities are cut from them.
DESCRIPTOR_TAGS = frozenset(t for key in ("clean_descriptors", "clean_structured_content")
                            for t, a in load_table().rule_sets[key].tags.items() if a == "C")
#: The patient's own identifiers besides names: Accession Number, Admission ID, and the Patient group (0010).
_GUARD_GROUPS = (0x0010,)
_GUARD_TAGS = frozenset({0x00080050, 0x00380010})
#: Every public tag the guard may read (dictionary PN, Patient group text, birth dates...): a set intersection
#: with the dataset's tags finds them without looking at the others.
_GUARD_CANDIDATES = frozenset(
    tag for tag, (vr, _vm, _name, _retired, kw) in DicomDictionary.items()
    if not (tag >> 16) & 1 and (vr == "PN" or tag in _GUARD_TAGS or ((tag >> 16) in _GUARD_GROUPS and vr in TEXT_VRS)
                                or ("Birth" in kw and vr in ("DA", "DT"))))


class IdentityGuard:
    """The patient's names, identifiers and birth date, cut (as whole words) out of text the table does not list.

    Why: Table E.1-1 keeps every attribute it does not list, and some of those are free text typed at the console
    (Sequence Name, coil and software names): a surname put there would pass through. Code items' coded parts
    (value, scheme, version) are left alone; their Code Meaning is text people read and is guarded. Built from the top level
    of the instance without converting its elements (the fast path copies raw elements); whole-word matching
    (letters and digits around a word stop it) so that technical values ("Head_32", "T2 weighted") are not cut up
    by chance substrings.
    """

    def __init__(self, tokens: set[str]) -> None:
        words = sorted((t for t in tokens if len(t) >= 3 and not (t.isdigit() and len(t) < 4)
                        and any(c.isalnum() for c in t)), key=len, reverse=True)
        self.words = tuple(words)
        self._text, self._raw = _guard_patterns(self.words)

    def hit(self, raw: bytes) -> bool:
        """True if the stored bytes may hold an identity word (non-ASCII text is always checked decoded)."""
        if self._raw is None or not raw:
            return False
        return not raw.isascii() or self._raw.search(raw) is not None

    def cut_element(self, elem: DataElement) -> DataElement | None:
        """``elem`` with the identity words cut out, or None when it holds none."""
        if self._text is None:
            return None
        values = _values(elem.value)
        cut = [self._cut(str(v)) if v is not None else v for v in values]
        if cut == [v if v is None else str(v) for v in values]:
            return None
        return DataElement(elem.tag, elem.VR, cut if len(cut) > 1 else cut[0])

    def _cut(self, text: str) -> str:
        return re.sub(r"\s{2,}", " ", self._text.sub("", text)).strip()


@lru_cache(maxsize=256)
def _guard_patterns(words: tuple[str, ...]) -> tuple[re.Pattern | None, re.Pattern | None]:
    """(text pattern, ASCII bytes pattern) matching any of ``words`` as a whole word, case-insensitive."""
    if not words:
        return None, None
    text = re.compile(r"(?<![^\W_])(?:" + "|".join(re.escape(w) for w in words) + r")(?![^\W_])", re.IGNORECASE)
    ascii_words = [w.encode("ascii") for w in words if w.isascii()]
    raw = re.compile(rb"(?<![A-Za-z0-9])(?:" + b"|".join(re.escape(w) for w in ascii_words) + rb")(?![A-Za-z0-9])",
                     re.IGNORECASE) if ascii_words else re.compile(rb"(?!x)x")
    return text, raw


def identity_guard(ds: Dataset, plan: Plan) -> IdentityGuard:
    """The guard of one instance: every Person Name at its top level, the patient's identifiers the plan removes
    or replaces (Patient group, Accession Number, Admission ID) and the birth date; read without conversion."""
    tokens: set[str] = set()
    src = ds._dict  # noqa: SLF001 - peeked, never converted in place
    for tag in sorted(src.keys() & _GUARD_CANDIDATES):
        raw = src[tag]
        vr = (raw.VR if raw.VR not in (None, "UN", "OB") else None) or _dictionary_vr(tag)
        if vr == "PN":
            pass
        elif vr in ("DA", "DT"):
            if "Birth" not in _tag_name(tag):
                continue
        elif vr in TEXT_VRS:
            if not ((tag >> 16) in _GUARD_GROUPS or tag in _GUARD_TAGS) or tag in plan.retained or \
                    plan.tags.get(tag) not in ("X", "Z", "D", "U"):
                continue
        else:
            continue
        elem = peek_element(ds, tag)
        if elem is not None:
            _add_tokens(tokens, vr, elem.value, ds)
    tokens.discard("")
    return IdentityGuard(tokens)


def _add_tokens(tokens: set[str], vr: str, value: object, ds: Dataset) -> None:
    """Add the tokens of one element's value (see ``identity_tokens``); bytes are decoded in ``ds``'s charset."""
    if isinstance(value, (bytes, bytearray)):
        encodings = getattr(ds, "_character_set", None) or [default_encoding]
        value = decode_bytes(bytes(value), encodings, {0x5C}).split("\\")
    for v in _values(value):
        text = str(v if v is not None else "")
        if vr in ("DA", "DT"):
            tokens.update(_date_forms(text))
        else:
            tokens.update(_text_tokens(text.replace("^", " ").replace("=", " ")))
            tokens.add(text.strip())


def make_scrubber(tokens: set[str]) -> Callable[[str], str]:
    """A function that cuts every identity token (case-insensitive, anywhere in the text) out of a text value.

    Words are cut even inside longer words ("Quixotic" out of "Quixotic_tfl3d"): removing a little too much is
    safe, keeping a name is not. Tokens under 3 characters, and numbers under 4 digits, are too common to cut.
    """
    words = sorted((t for t in tokens if len(t) >= 3 and not (t.isdigit() and len(t) < 4)
                    and any(c.isalnum() for c in t)), key=len, reverse=True)
    if not words:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    spaces = re.compile(r"\s{2,}")
    return lambda text: spaces.sub(" ", pattern.sub("", text)).strip()
