"""Binding at ingest: a study that comes back from a scanner carrying a booking's AccessionNumber or
StudyInstanceUID (the ones its worklist entry gave) belongs to that booking's project and participant.

The ingest chain asks ``find`` with the study's ORIGINAL datasets, before de-identification removes or replaces
the accession and the UIDs; the binding then decides the project (over ``dicom.routing``), the participant label
(the booking's, which is the registry pseudonym) and the date shift (the registry's, for an enrolled person).
After the series are archived, ``acquired`` marks the booking and ``compliance.check_series`` records each
series' verdict, in the chain's archive transaction.

Never: an accession number, a UID or any other header value in a log, an exception message or an audit event
(they name booking ids and internal ids only).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Iterable

from pydicom.dataset import Dataset
from sqlalchemy import or_, select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive.models import Booking, Participant, Project
from incloud_kernel.archive.permissions import SYSTEM
from incloud_kernel.archive.projects import audit
from incloud_kernel.errors import IncloudError


class BindingConflict(IncloudError):
    """The study's accession number and its StudyInstanceUID name two different bookings."""


@dataclass(frozen=True)
class Binding:
    """What a bound study takes from its booking (internal ids and labels only)."""

    booking_id: int
    project: str
    participant: str
    participant_id: int
    #: The registry's date shift in days for an enrolled participant; None: the de-identification's default.
    date_offset: int | None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def study_keys(datasets: Iterable[Dataset]) -> tuple[str, str]:
    """(AccessionNumber, StudyInstanceUID) of a study: the first non-empty value among its instances."""
    accession = study_uid = ""
    for ds in datasets:
        accession = accession or _text(ds, "AccessionNumber")
        study_uid = study_uid or _text(ds, "StudyInstanceUID")
        if accession and study_uid:
            break
    return accession, study_uid


def booking_for(db: DB, accession: str, study_uid: str) -> Booking | None:
    """The booking whose worklist entry gave this accession number or StudyInstanceUID (a cancelled one too: a
    scanner may have taken the entry before the cancellation); BindingConflict when they name two bookings."""
    keys = [k for k in ((Booking.accession_number, accession), (Booking.study_uid, study_uid)) if k[1]]
    if not keys:
        return None
    rows = list(db.scalars(select(Booking).where(or_(*[column == value for column, value in keys]))))
    if len({r.id for r in rows}) > 1:
        raise BindingConflict(f"the study's accession number and study UID name different bookings "
                              f"(#{', #'.join(str(r.id) for r in sorted(rows, key=lambda r: r.id))})")
    return rows[0] if rows else None


def find(db: DB, config: Any, datasets: Iterable[Dataset]) -> Binding | None:
    """The binding of a study (its original, identified datasets), or None when it carries no booking's keys."""
    from incloud_kernel.acquisition.registry import participant_date_offset

    accession, study_uid = study_keys(datasets)
    booking = booking_for(db, accession, study_uid)
    if booking is None:
        return None
    project = db.get(Project, booking.project_id)
    person = db.get(Participant, booking.participant_id)
    assert project is not None and person is not None  # foreign keys with ON DELETE CASCADE
    return Binding(booking.id, project.code, person.label, person.id,
                   participant_date_offset(db, config, person.id))


def acquired(db: DB, binding: Binding, series_ids: list[int]) -> Booking | None:
    """Mark the bound booking ``acquired`` (a pending or approved one: a cancelled booking stays cancelled, its
    slot may have been given away) and audit which series arrived for it. Its worklist entry goes (only approved
    bookings are served). Returns the booking."""
    from incloud_kernel.acquisition import worklist

    booking = db.get(Booking, binding.booking_id)
    if booking is None:
        return None
    if booking.status in ("pending", "approved"):
        booking.status, booking.updated_at = "acquired", datetime.now(UTC)
        db.flush()
        worklist.changed(db, booking)
    audit(db, SYSTEM, "booking.acquired", "booking", booking.id, status=booking.status, series=sorted(series_ids))
    return booking


class Fixed:
    """A de-identification callback (pseudonym or date shift) that gives the same value for every dataset of a
    bound study: the booking's participant label, or the registry's shift of an enrolled person. A class so that
    worker processes can receive it; its repr never shows the value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, ds: Dataset) -> Any:
        return self.value

    def __repr__(self) -> str:
        return "Fixed()"


def deid_context(base: Any, binding: Binding) -> Any:
    """``base`` (a ``deid.DeidContext``) with the binding's pseudonym and, for an enrolled person, the registry's
    date shift; the site key, options and UID mapping stay the base's."""
    import dataclasses

    offset = Fixed(binding.date_offset) if binding.date_offset is not None else base.date_offset
    return dataclasses.replace(base, pseudonym=Fixed(binding.participant), date_offset=offset)


__all__ = ["Binding", "BindingConflict", "study_keys", "booking_for", "find", "acquired", "deid_context",
           "Fixed"]
