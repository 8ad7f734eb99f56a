"""The Shared and Per-frame Functional Groups Sequences of enhanced multi-frame instances, de-identified in bulk.

An enhanced MR of 176 frames carries 176 per-frame items of ~100 elements each, nearly all repeated from frame
to frame (echo, frame type, pixel measures, orientation...). Walking them with pydicom objects costs many times
more than copying the pixel data. Here (``read_dataset``) the sequences stay raw bytes, their end found from the
element headers (``deid.rawseq``); each item is cut into its top-level elements (the functional group macros)
the same way, and every distinct macro (by its stored bytes) is de-identified once, by the profile's own
``apply``: the distinct values of one macro across all frames go to ``apply`` together, as the items of one
sequence, and its output items are dealt back. The decisions are therefore exactly ``apply``'s (nothing of the
profile is restated here), and the output bytes are what ``deid.writer`` gives for the sequence ``apply`` builds.
``apply_in_bulk`` is where ``deidentify`` comes in; it also keeps large deferred values (pixel data) unread.

Why this is sound: ``apply`` decides a public element from its tag, its value and where it sits (depth,
enclosing action), never from its neighbours, and walks the items of a sequence one by one with the same
arguments; a private element depends on its block's creator, so all private elements of an item go to
``apply`` together, as one unit. Nested sequences given to ``apply`` are ``RawSequence``s: one it removes
without opening (a private sequence) is never parsed, and cannot have influenced the result.

Never logs or raises with a value: ``MalformedSequence`` / ``NotEncodable`` make the caller use ``apply`` itself.
"""
from __future__ import annotations

from typing import BinaryIO, Callable

from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filereader import read_dataset as pydicom_read_dataset
from pydicom.tag import BaseTag

from incloud_kernel.deid import profile, rawseq, writer
from incloud_kernel.dicom import part10

#: Shared Functional Groups Sequence and Per-frame Functional Groups Sequence (PS3.3 C.7.6.16).
FUNCTIONAL_GROUPS = frozenset({0x52009229, 0x52009230})
_CHARSET = 0x00080005
_GROUP_TAG_BYTES = (b"\x00\x52\x29\x92", b"\x00\x52\x30\x92")  # the two tags as stored (little endian)
#: VRs whose values the profile can only keep, empty or remove: never read to decide (pixel data and the like).
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV"})

Apply = Callable[[Dataset, object, int, str], Dataset]
#: ``_Bulk._raw_action``: the profile's raw decision does not apply, ``apply`` must walk the item.
_UNDECIDED = b"\x00undecided"


def is_bulk_candidate(raw: object) -> bool:
    """A functional groups sequence still held as stored bytes (little endian): what ``deidentify_groups`` takes."""
    return type(raw) is RawDataElement and raw.value is not None and raw.is_little_endian \
        and int(raw.tag) in FUNCTIONAL_GROUPS and raw.VR in ("SQ", None)


class _Bulk:
    """One functional groups sequence being de-identified: the stored value, ``apply`` and memos of results."""

    def __init__(self, value: bytes, implicit: bool, apply: Apply, state: object, encoding: object,
                 char_set: object, writer_encoding: object) -> None:
        self.value, self.implicit, self.apply, self.state = value, implicit, apply, state
        self.encoding, self.char_set, self.writer_encoding = encoding, char_set, writer_encoding
        self.public: dict[bytes, list[tuple[int, bytes]]] = {}  # element bytes -> encoded output
        self.private: dict[object, list[tuple[int, bytes]]] = {}  # private unit key -> encoded output
        self.opaque: list[frozenset[int]] = []  # private sequences apply removed without opening them
        # (action, tag, VR, stored value) -> encoded output of ``profile.raw_action``: per frame the same dates and
        # UIDs recur (an enhanced MR's 176 Frame Content items share their datetimes). Sound because raw_action's
        # output depends on exactly these and the walk's state, whose notes are sets of names (idempotent).
        self.decided: dict[tuple[str, int, str, bytes], bytes] = {}
        # Macro items decided from the plan without a Dataset (``macro``): only for the profile's own walk, in
        # explicit VR, where the writer copies kept raw bytes as stored (same character set inside as outside).
        self.plan: profile.Plan | None = state.plan if apply is profile.apply and \
            isinstance(state, profile.WalkState) and not implicit and \
            writer._codecs(char_set) == writer._codecs(writer_encoding) else None  # noqa: SLF001

    def stored(self, span: rawseq.Span) -> bytes:
        """A sequence element's value as stored, without the closing delimiter of an undefined length."""
        _, _, start, length, end, _ = span
        return self.value[start:end - 8] if length == part10.UNDEFINED_LENGTH else self.value[start:end]

    def mini(self, spans: list[rawseq.Span]) -> tuple[Dataset, dict[int, rawseq.RawSequence]]:
        """A dataset of the given elements as pydicom's reader would hold them; nested sequences unparsed."""
        value, implicit = self.value, self.implicit
        mini = Dataset(parent_encoding=self.encoding)
        sequences: dict[int, rawseq.RawSequence] = {}
        for span in spans:
            tag, a, start, length, end, _ = span
            tag_obj = BaseTag(tag)
            vr = None if implicit else value[a + 4:a + 6].decode("ascii")
            undefined = length == part10.UNDEFINED_LENGTH
            if undefined and vr not in (None, "SQ"):
                raise rawseq.MalformedSequence("undefined length outside a sequence")  # encapsulated: rare
            if vr == "SQ" or undefined:
                seq = rawseq.RawSequence(self.stored(span), implicit, self.encoding, undefined)
                sequences[tag] = seq
                # Stored directly: Dataset.__setitem__ walks a sequence's items (pixel representation), parsing it.
                mini._dict[tag_obj] = DataElement(tag_obj, "SQ", seq, is_undefined_length=undefined)  # noqa: SLF001
            else:
                mini[tag_obj] = RawDataElement(tag_obj, vr, length, value[start:end], start, implicit, True)
        mini.set_original_encoding(implicit, True, self.char_set)
        return mini, sequences

    def run(self, spans: list[rawseq.Span]) -> tuple[dict[int, bytes], set[int]]:
        """``apply`` on the given elements of one item: ({tag: encoded output}, tags of the sequences it removed
        without opening them)."""
        mini, sequences = self.mini(spans)
        result = self.apply(mini, self.state, 1, "")
        unopened = {tag for tag, seq in sequences.items() if not seq.parsed and tag not in result}
        return writer.encode_each(result, self.implicit, self.writer_encoding), unopened

    def private_unit(self, spans: list[rawseq.Span]) -> list[tuple[int, bytes]]:
        """The output of an item's private elements (creators included: they decide what their block means).

        A private sequence that ``apply`` removed without opening it cannot have changed the outcome: items whose
        private elements differ only inside such sequences reuse the result (keyed on the rest).
        """
        value = self.value
        full = b"".join(value[a:end] for _, a, _, _, end, _ in spans)
        hit = self.private.get(full)
        if hit is not None:
            return hit
        for opaque in self.opaque:
            hit = self.private.get(self._skeleton(spans, opaque))
            if hit is not None:
                return hit
        out, unopened = self.run(spans)
        chunks = sorted((t, c) for t, c in out.items() if (t >> 16) & 1)
        self.private[full] = chunks
        if unopened:
            opaque = frozenset(unopened)
            if opaque not in self.opaque:
                self.opaque.append(opaque)
            self.private[self._skeleton(spans, opaque)] = chunks
        return chunks

    def _skeleton(self, spans: list[rawseq.Span], opaque: frozenset[int]) -> tuple:
        value = self.value
        return (opaque, tuple((tag, length == part10.UNDEFINED_LENGTH) if tag in opaque else value[a:end]
                              for tag, a, _, length, end, _ in spans))

    def public_column(self, tag: int, keys: list[bytes], spans: list[rawseq.Span]) -> None:
        """Outputs of the distinct values of one public element (a functional group macro) across items.

        Macros are sequences of one item each: they go to ``apply`` together, as the items of one sequence (items
        are independent in ``apply``), and its output items are dealt back. Anything else: one at a time.
        """
        implicit = self.implicit
        if self.plan is not None:
            rest = []
            for key, span in zip(keys, spans):
                done = self.macro(tag, span)
                if done is None:
                    rest.append((key, span))
                else:
                    self.public[key] = [(tag, done)]
            if not rest:
                return
            keys, spans = [key for key, _ in rest], [span for _, span in rest]
        if len(spans) > 1 and all(self._one_item(span) for span in spans):
            batch = Dataset(parent_encoding=self.encoding)
            seq = rawseq.RawSequence(b"".join(self.stored(span) for span in spans), implicit, self.encoding, True)
            batch._dict[BaseTag(tag)] = DataElement(BaseTag(tag), "SQ", seq, is_undefined_length=True)  # noqa: SLF001 - see mini()
            batch.set_original_encoding(implicit, True, self.char_set)
            result = self.apply(batch, self.state, 1, "").get(tag)
            if result is None:
                for key in keys:
                    self.public[key] = []
                return
            items = result.value if result.VR == "SQ" else None
            if items is not None and len(items) in (0, len(spans)):
                for k, key in enumerate(keys):
                    body = b""
                    if len(items):
                        chunks: list = []
                        writer._encode_dataset(items[k], implicit, self.writer_encoding, chunks)  # noqa: SLF001
                        body = part10.item(b"".join(chunks))
                    self.public[key] = [(tag, part10.header(tag, "SQ", len(body), implicit) + body)]
                return
        for key, span in zip(keys, spans):
            out, _ = self.run([span])
            self.public[key] = [(tag, out[tag])] if tag in out else []

    def macro(self, tag: int, span: rawseq.Span) -> bytes | None:
        """The encoded output of one functional group macro (a sequence of one item) decided element by element
        from the plan (``macro_plan``), without building a Dataset; None: ``apply`` must walk it.

        Kept elements are copied as stored; an element listed with another action is decided by the profile's
        ``raw_action``, on its raw bytes, as ``apply`` does; a text the identity guard finds a word in, and
        anything ``macro_plan`` cannot decide, sends the item to ``apply``.
        """
        _, a, _, _, _, items = span
        if self.value[a + 4:a + 6] != b"SQ" or items not in (-1, 1):
            return None
        stored = self.stored(span)
        elements = rawseq.flat_item(stored)
        if elements is None:
            return None
        kinds = macro_plan(self.plan, tag, tuple((e[0], e[1]) for e in elements))
        if kinds is None:
            return None
        state = self.state
        parts: list[bytes] = []
        for (etag, _, ea, estart, eend), (kind, vr) in zip(elements, kinds):
            if kind == "guard":
                guard = state.guard  # type: ignore[attr-defined]
                if guard is not None and guard.hit(stored[estart:eend]):
                    return None  # the guard cuts it: apply's job
                kind = "keep"
            if kind == "keep":
                if vr in part10.LONG_VRS:  # written with a zero reserved field, whatever the source held
                    parts.append(part10.header(etag, vr, eend - estart) + stored[estart:eend])
                else:
                    parts.append(stored[ea:eend])  # header and value as the writer gives them
                continue
            key = (kind, etag, vr, stored[estart:eend])
            done = self.decided.get(key)
            if done is None:
                done = self.decided[key] = self._raw_action(kind, etag, vr, key[3], estart)
            if done is _UNDECIDED:
                return None
            parts.append(done)
        body = part10.item(b"".join(parts))
        return part10.header(tag, "SQ", len(body)) + body

    def _raw_action(self, kind: str, etag: int, vr: str, value: bytes, start: int) -> bytes:
        """The encoded output of ``profile.raw_action`` on one element (b"": removed), or ``_UNDECIDED``."""
        tag_obj = BaseTag(etag)
        raw = RawDataElement(tag_obj, vr, len(value), value, start, False, True)
        out: dict = {}
        if not profile.raw_action(kind, tag_obj, raw, vr, self.state, out):  # type: ignore[arg-type]
            return _UNDECIDED
        got = out.get(tag_obj)
        if got is None:
            return b""
        if type(got) is not RawDataElement:
            return _UNDECIDED
        return part10.header(etag, got.VR, len(got.value)) + got.value

    def _one_item(self, span: rawseq.Span) -> bool:
        """Whether the element is a sequence of exactly one item (what a functional group macro is)."""
        _, a, _, length, _, items = span
        if self.implicit and length != part10.UNDEFINED_LENGTH:
            return False  # implicit VR: only an undefined length says "sequence" without the dictionary
        if not self.implicit and self.value[a + 4:a + 6] != b"SQ":
            return False
        if items >= 0:
            return items == 1  # counted when the header walk found the element's end
        try:
            return len(rawseq.item_elements(self.stored(span), self.implicit)) == 1
        except rawseq.MalformedSequence:
            return False


#: Per plan (by identity): (macro tag, its item's (tag, stored VR) in order) -> what ``_Bulk.macro`` does with
#: each element, or None. Computed once per shape; an enhanced file has a few dozen shapes, repeated per frame.
_MACRO_PLANS: dict[int, tuple[profile.Plan, dict[tuple, tuple[tuple[str, str], ...] | None]]] = {}


def macro_plan(plan: profile.Plan, tag: int, shape: tuple[tuple[int, int], ...]) -> tuple[tuple[str, str], ...] | None:
    """(kind, VR) per element of a functional group macro item of this ``shape``, from the profile's own rules at
    the depth such an item sits (depth 2, ``plan.nested``, no enclosing action): "keep" (stored bytes whatever
    the value, ``profile.kept_as_stored``), "guard" (kept unless the identity guard finds a word in it), or the
    action ``profile.raw_action`` decides on the raw value. None when the item needs ``apply``: the macro itself
    not kept as a sequence whose items are walked, an element out of tag order, private, a nested sequence, a
    group length, a character set, a VR the raw decisions do not take, or a kept value that depends on its value.
    """
    cached = _MACRO_PLANS.get(id(plan))
    if cached is None or cached[0] is not plan:
        if len(_MACRO_PLANS) >= 16:
            _MACRO_PLANS.clear()
        cached = _MACRO_PLANS[id(plan)] = (plan, {})
    key = (tag, shape)
    shapes = cached[1]
    if key in shapes:
        return shapes[key]
    shapes[key] = kinds = _macro_kinds(plan.nested, tag, shape)
    return kinds


def _macro_kinds(tags: dict[int, str], tag: int, shape: tuple[tuple[int, int], ...]) -> tuple[tuple[str, str], ...] | None:
    """``macro_plan`` computed (see there)."""
    if tags.get(tag, "K") != "K" or (tag >> 16) & 1 or (tag >> 24) in (0x50, 0x60):
        return None  # apply walks the items of a kept (or unlisted) public sequence with no enclosing action
    kinds = []
    last = -1
    for etag, vr_word in shape:
        vr = vr_word.to_bytes(2, "little").decode("ascii")
        if etag <= last or etag < 0x00080000 or etag == 0x00080005 or (etag >> 16) & 1 or (etag >> 24) in (0x50, 0x60) or \
                (etag & 0xFFFF) == 0 or vr in ("SQ", "UN") or vr not in profile.KNOWN_VRS:
            return None
        last = etag
        how = profile.kept_as_stored(tags, etag, vr, "")
        if how:
            kinds.append((how, vr))
        elif etag in tags and tags[etag] != "K":
            kinds.append((tags[etag], vr))
        else:
            return None  # a UID or a name kept by the plan: whether it is mapped or replaced depends on its value
    return tuple(kinds)


def deidentify_groups(raw: RawDataElement, apply: Apply, state: object, encoding: object,
                      char_set: object, writer_encoding: object) -> RawDataElement:
    """The de-identified sequence ``raw`` (a functional groups sequence of a top-level dataset), as a raw element.

    ``apply(dataset, state, depth, context)`` is the profile's walk; items are at depth 1 with no enclosing
    action (the functional groups sequences themselves are kept). ``encoding``/``char_set``: the top-level
    dataset's character set as pydicom passes it to items; ``writer_encoding``: what ``deid.writer`` passes to
    items when it encodes the top-level dataset. Raises ``MalformedSequence`` or ``NotEncodable`` when the bulk
    path does not apply (the caller then lets ``apply`` walk the sequence).
    """
    implicit = raw.is_implicit_VR
    value = raw.value
    bulk = _Bulk(value, implicit, apply, state, encoding, char_set, writer_encoding)
    known = _ITEMS.get(id(value))
    items = known[1] if known is not None and known[0] is value else rawseq.item_elements(value, implicit)
    # 1. private units item by item; public elements gathered by tag (distinct stored bytes only).
    outputs: list[list[tuple[int, bytes]]] = []
    pending: dict[int, dict[bytes, rawseq.Span]] = {}
    for spans in items:
        private = []
        for span in spans:
            tag = span[0]
            if tag == _CHARSET:
                raise rawseq.MalformedSequence("item with its own character set")  # rare: apply handles it
            if (tag >> 16) & 1:
                private.append(span)
            else:
                pending.setdefault(tag, {}).setdefault(value[span[1]:span[4]], span)
        outputs.append(list(bulk.private_unit(private)) if private else [])
    # 2. each public element's distinct values, one column at a time.
    for tag, distinct in pending.items():
        bulk.public_column(tag, list(distinct), list(distinct.values()))
    # 3. items reassembled in tag order, as the writer encodes a sequence apply builds.
    body: list[bytes] = []
    public = bulk.public
    for spans, found in zip(items, outputs):
        for tag, a, _, _, end, _ in spans:
            if not (tag >> 16) & 1:
                found.extend(public[value[a:end]])
        found.sort()
        body.append(part10.item(b"".join(chunk for _, chunk in found)))
    data = b"".join(body)
    return RawDataElement(raw.tag, "SQ", len(data), data, 0, implicit, True)


#: The item walk the reader made of the last few functional groups values it kept raw: (value, items) by id.
_ITEMS: dict[int, tuple[bytes, list[list[rawseq.Span]]]] = {}


def _remember_items(value: bytes, items: list[list[rawseq.Span]]) -> None:
    """Keep the reader's walk for ``deidentify_groups`` (the same value object: checked by identity)."""
    while len(_ITEMS) >= 4:
        del _ITEMS[next(iter(_ITEMS))]
    _ITEMS[id(value)] = (value, items)


def apply_in_bulk(ds: Dataset, apply: Apply, state: object, plan_tags: dict[int, str]) -> Dataset:
    """``apply(ds, state)``, with the functional groups sequences that ``ds`` still holds raw done in bulk, and
    large binary values pydicom left deferred in the source file (pixel data) kept deferred, never read.

    The bulk path is taken only where ``apply`` would keep the sequence and walk its items with no enclosing
    action (``plan_tags`` gives the top-level action: none or K); otherwise, and on anything malformed, the
    sequence goes through ``apply`` itself. A deferred value is decided by ``apply`` on a zero-length stand-in
    with the same tag and VR: kept (the stand-in comes back) means the deferred original is kept.
    """
    elements = dict(ds.items())  # as stored (raw, deferred): items() converts nothing
    bulk = [tag for tag in FUNCTIONAL_GROUPS if tag in elements and is_bulk_candidate(elements[tag])
            and plan_tags.get(tag, "K") == "K"]
    raws = {tag: elements[tag] for tag in bulk}  # taken now: cleaning free text may convert ds's elements in place
    unread = [tag for tag, elem in elements.items()
              if type(elem) is RawDataElement and elem.value is None and elem.length]  # deferred by pydicom
    if not bulk and not unread:
        return apply(ds, state, 0, "")
    deferred = {tag: elements[tag] for tag in unread if _is_deferred_binary(elements[tag])}
    for tag in unread:
        if tag not in deferred:
            elements[tag] = ds[tag]  # not decidable on a stand-in (implicit VR...): read, as apply would
    implicit, little = ds.original_encoding
    stand_ins = {tag: RawDataElement(elem.tag, elem.VR, 0, b"", elem.value_tell, False, True)
                 for tag, elem in deferred.items()}
    rest = Dataset({tag: stand_ins.get(tag, elem) for tag, elem in elements.items() if int(tag) not in bulk})
    rest.set_original_encoding(implicit, little, ds.original_character_set)
    new = apply(rest, state, 0, "")
    for tag, stand_in in stand_ins.items():
        if tag in new and new.get_item(tag, keep_deferred=True) is stand_in:
            new[tag] = deferred[tag]  # kept: the original, still deferred (copied file to file)
    if not bulk:
        return new
    char_set = ds._character_set  # noqa: SLF001 - what pydicom passes to items as their parent encoding
    writer_encoding = new.get("SpecificCharacterSet", "iso8859") if _CHARSET in new else "iso8859"
    for tag in bulk:
        try:
            done = deidentify_groups(raws[tag], apply, state, char_set, char_set, writer_encoding)
        except (rawseq.MalformedSequence, part10.NotEncodable):
            one = Dataset({tag: raws[tag]}, parent_encoding=char_set)  # apply decides it alone (module doc)
            one.set_original_encoding(implicit, little, ds.original_character_set)
            done = apply(one, state, 0, "").get(tag)
        if done is not None:
            new[tag] = done
    return new


def _is_deferred_binary(elem: RawDataElement) -> bool:
    """A deferred public element of a binary VR (explicit VR little endian): decidable on a stand-in."""
    return elem.length != part10.UNDEFINED_LENGTH and elem.VR in _BINARY_VRS and not elem.is_implicit_VR \
        and elem.is_little_endian \
        and not (int(elem.tag) >> 16) & 1


def read_dataset(fp: BinaryIO, buf: bytes, implicit: bool, defer_size: int | None = None) -> Dataset:
    """pydicom's ``read_dataset`` from ``fp``'s position, except that undefined-length functional groups
    sequences are kept as raw elements (as pydicom keeps defined-length ones) instead of being parsed.

    ``buf`` holds the same bytes as ``fp`` (bytes, or an mmap of the file): the end of each such sequence is
    found in it from the element headers (``rawseq``). Raises what pydicom raises, or ``MalformedSequence``.
    """
    elements: dict = {}
    encoding: object = default_encoding
    char_set: object = None
    stopped: list[int] = []

    def stop_at_groups(tag: BaseTag, vr: str | None, length: int) -> bool:
        if int(tag) in FUNCTIONAL_GROUPS and length == part10.UNDEFINED_LENGTH and vr in (None, "SQ"):
            stopped.append(int(tag))
            return True
        return False

    # Most files have no functional groups: then pydicom reads without a callback per element.
    small = isinstance(buf, bytes)  # in memory: a quick search; a mapped (large) file: the callback
    stop = stop_at_groups if not small or any(buf.find(tag) >= 0 for tag in _GROUP_TAG_BYTES) else None
    while True:
        part = pydicom_read_dataset(fp, implicit, True, stop_when=stop, defer_size=defer_size,
                                    parent_encoding=encoding)
        if stop is None:
            return part  # no functional groups: pydicom's own dataset, as read
        elements.update(part.items())  # as read: items() converts nothing
        if char_set is None:
            char_set = part.original_character_set
            encoding = part._character_set  # noqa: SLF001 - what pydicom passes on to later elements
        if not stopped:
            break
        tag = stopped.pop()
        start = fp.tell() + (8 if implicit else 12)  # past the header pydicom stopped at
        view = memoryview(buf)[start:]  # positions relative to the value; nothing copied
        try:
            items, length = rawseq.sequence_items(view, implicit, closed=True)
            value = bytes(view[:length - 8])
        finally:
            view.release()
        _remember_items(value, items)
        tag_obj = BaseTag(tag)
        elements[tag_obj] = RawDataElement(tag_obj, None if implicit else "SQ", part10.UNDEFINED_LENGTH, value,
                                           start, implicit, True)
        fp.seek(start + length)
    ds = Dataset(elements, parent_encoding=default_encoding)
    ds.set_original_encoding(implicit, True, char_set)
    return ds
