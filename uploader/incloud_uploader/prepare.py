"""De-identify and reface the chosen series on this computer, into the upload's private work folder.

De-identification is ``incloud_kernel.deid.deidentify`` with the site's profile (fetched from the server with
the upload ticket), the server-issued pseudonym and date shift, and a UID key generated here and kept only in
this upload's state file (never sent): the same original UID gives the same new UID when an upload resumes.
Every structural head series (T1w, T2w, FLAIR, PD, by its descriptions) is refaced with
``incloud_kernel.deface.dicom.reface_session`` (T1w first; the others reuse its fit) and marked with
``mark_refaced``; before/after renders are written with ``incloud_kernel.deface.qc.save_qc``. A series the
refacer refuses, or one held back for burned-in text, is *blocked*: explained and never written to the outbox.
Only de-identified (and, for head series, refaced) instances are ever written to the outbox, and nothing here
logs or raises with a header value.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from incloud_kernel.deface import dicom as deface_dicom
from incloud_kernel.deface import safety
from incloud_kernel.deid import BurnedInText, DeidContext, DeidError, deidentify

from incloud_uploader.scan import FoundSeries, read_job

log = logging.getLogger("incloud_uploader")

#: Why the refacer refused a series, in words for the page (``incloud_kernel.deface.safety`` reasons).
REFACE_REASONS = {
    "registration": "the face could not be located reliably (registration too poor)",
    "no-head": "no head was found in the image",
    "no-face": "the face is not in the field of view as expected",
    "orientation": "the slice geometry is unusable",
    "2d": "it is not a 3D volume", "4d": "it holds several volumes", "tiny": "the image is too small",
    "unreadable": "an instance could not be read", "multiframe": "its multi-frame layout is not supported",
}


@dataclass
class Ticket:
    """What the server issued for one study: its id, the pseudonym, the date shift and the profile options."""

    id: str
    pseudonym: str
    date_offset: int
    options: tuple[str, ...]
    project: str


@dataclass
class Prepared:
    """The outcome for one chosen series: the outbox files (de-identified, refaced when a head series), or why
    it is blocked; ``qc_png`` the before/after render of a refaced series."""

    key: str
    files: list[Path] = field(default_factory=list)
    blocked: str | None = None
    refaced: bool = False
    qc_png: Path | None = None


def context_for(ticket: Ticket, uid_key: bytes) -> DeidContext:
    """The de-identification context: site profile, server pseudonym and date shift, this upload's UID key."""
    pseudonym, offset = ticket.pseudonym, int(ticket.date_offset)
    return DeidContext(key=uid_key, options=ticket.options, pseudonym=lambda ds: pseudonym,
                       date_offset=lambda ds: offset)


def _deidentify_series(series: FoundSeries, ctx: DeidContext, folder: Path) -> list[Path]:
    """Write the de-identified instances of one series into ``folder``; raises BurnedInText / DeidError."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for job in series.jobs:
        ds = read_job(job)
        clean = deidentify(ds, ctx)
        path = folder / f"{clean.SOPInstanceUID}.dcm"
        clean.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def prepare_study(series: list[FoundSeries], ticket: Ticket, uid_key: bytes, outbox: Path,
                  refacer_factory: Callable[[], Any] | None = None,
                  progress: Callable[[str, str], None] | None = None) -> list[Prepared]:
    """De-identify every series of one study, then reface its head series (T1w first). Returns one Prepared per
    series; blocked series leave nothing in ``outbox``."""
    ctx = context_for(ticket, uid_key)
    say = progress or (lambda key, text: None)
    results: dict[str, Prepared] = {}
    deid: dict[str, list[Path]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        for s in series:
            results[s.key] = Prepared(s.key)
            if s.blocked:
                results[s.key].blocked = s.blocked
                continue
            say(s.key, "de-identifying")
            folder = outbox / ".work" / s.key
            try:
                deid[s.key] = _deidentify_series(s, ctx, folder)
            except BurnedInText:
                results[s.key].blocked = "may show text burned into its pixels: kept on this computer"
            except DeidError as exc:
                results[s.key].blocked = f"cannot be de-identified ({exc.reason}): kept on this computer"
            except Exception as exc:  # noqa: BLE001 - a malformed element; its type only, never its message
                results[s.key].blocked = f"a damaged instance ({type(exc).__name__}): kept on this computer"
            if results[s.key].blocked:
                shutil.rmtree(folder, ignore_errors=True)
        heads = [s for s in series if s.key in deid and s.kind]
        if heads:
            _reface(heads, deid, results, outbox, refacer_factory, say)
    for s in series:
        r = results[s.key]
        if r.blocked or s.key not in deid:
            continue
        final = outbox / s.key
        if final.exists():
            shutil.rmtree(final)
        (outbox / ".work" / s.key).rename(final)  # only now is the series in the outbox: all or nothing
        r.files = sorted(final.glob("*.dcm"))
        say(s.key, "ready")
    shutil.rmtree(outbox / ".work", ignore_errors=True)
    return [results[s.key] for s in series]


def _reface(heads: list[FoundSeries], deid: dict[str, list[Path]], results: dict[str, Prepared], outbox: Path,
            refacer_factory: Callable[[], Any] | None, say: Callable[[str, str], None]) -> None:
    """Reface the de-identified head series in place (T1w first: the others reuse its fit) and mark them."""
    from incloud_kernel.deface.qc import save_qc

    by_uid = {}
    for s in heads:
        say(s.key, "refacing")
        by_uid[s.key] = deid[s.key]
    kinds = {s.key: s.kind for s in heads}
    try:
        result = deface_dicom.reface_session(by_uid, refacer_factory=refacer_factory, kinds=kinds)
    except safety.DefaceQuarantine as exc:
        result = deface_dicom.SessionResult(quarantined={s.key: exc.reason for s in heads})
    for s in heads:
        r = results[s.key]
        if s.key in result.quarantined:
            reason = result.quarantined[s.key]
            r.blocked = f"the face cannot be removed safely: {REFACE_REASONS.get(reason, reason)}; kept on this " \
                        "computer"
            shutil.rmtree(outbox / ".work" / s.key, ignore_errors=True)
            continue
        loaded = result.series[s.key]
        before = loaded.image()
        new = result.refaced[s.key]
        for ds in new:
            deface_dicom.mark_refaced(ds)
        paths = loaded.paths or deid[s.key]
        deface_dicom.write_datasets(new, paths)
        r.refaced = True
        try:  # the renders are for the user's confirmation; the refaced files are read back, as uploaded
            r.qc_png = save_qc(before, deface_dicom.read_series(paths).image(), outbox / "qc" / f"{s.key}.png")
        except Exception:  # noqa: BLE001 - a picture that cannot be drawn does not block the series
            r.qc_png = None


def image_count(prepared: list[Prepared]) -> int:
    return int(np.sum([len(p.files) for p in prepared])) if prepared else 0
