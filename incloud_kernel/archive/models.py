"""The archive's metadata model (SQLAlchemy 2): projects, memberships, participants, sessions, series, files.

Same tables on SQLite and PostgreSQL; the schema is owned by Alembic migrations (``archive/migrations``),
never by ``create_all``. No table here ever stores a patient-identifying value: participants carry an
internal ID and pseudonymous research attributes only; identities live in the registry.
"""
from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Role(str, enum.Enum):
    """Project roles, as in XNAT: owners manage, members write, collaborators read."""

    owner = "owner"
    member = "member"
    collaborator = "collaborator"


class PrincipalKind(str, enum.Enum):
    user = "user"
    group = "group"


class QCStatus(str, enum.Enum):
    """A series' quality decision (``incloud_kernel.qc.gate``): ``caveat`` is usable with a stated reason."""

    pending = "pending"
    passed = "pass"
    failed = "fail"
    caveat = "caveat"


class FileKind(str, enum.Enum):
    raw = "raw"
    derivative = "derivative"


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Membership(Base):
    """A user or a group holds one role in one project."""

    __tablename__ = "membership"
    __table_args__ = (
        UniqueConstraint("project_id", "principal_kind", "principal", name="uq_membership"),
        Index("ix_membership_principal", "principal_kind", "principal"),
        CheckConstraint("role in ('owner','member','collaborator')", name="ck_membership_role"),
        CheckConstraint("principal_kind in ('user','group')", name="ck_membership_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    principal_kind: Mapped[str] = mapped_column(String(8))
    principal: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))

    project: Mapped[Project] = relationship(back_populates="memberships")


class SiteAdmin(Base):
    """Site administrators are listed explicitly; nobody is an admin by default."""

    __tablename__ = "site_admin"

    principal: Mapped[str] = mapped_column(String(128), primary_key=True)


class GroupMember(Base):
    """Which users belong to which groups (the hub supplies these later; the CLI and tests do now)."""

    __tablename__ = "group_member"

    group: Mapped[str] = mapped_column(String(128), primary_key=True)
    user: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class Participant(Base):
    """A person in a project, known only by an internal ID (the BIDS ``sub-`` label)."""

    __tablename__ = "participant"
    __table_args__ = (Index("ix_participant_project", "project_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    sex: Mapped[str | None] = mapped_column(String(8))
    birth_year: Mapped[int | None] = mapped_column(Integer)
    handedness: Mapped[str | None] = mapped_column(String(8))
    education_years: Mapped[float | None] = mapped_column(Float)
    diagnosis: Mapped[list[Any]] = mapped_column(JSON, default=list)
    first_episode: Mapped[bool | None] = mapped_column(Boolean)
    medication: Mapped[str | None] = mapped_column(String(256))
    follow_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    sessions: Mapped[list[Session]] = relationship(back_populates="participant", cascade="all, delete-orphan")


class Session(Base):
    """One visit of a participant (the BIDS ``ses-`` label)."""

    __tablename__ = "session"
    __table_args__ = (
        UniqueConstraint("participant_id", "label", name="uq_session_label"),
        Index("ix_session_project", "project_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id", ondelete="CASCADE"))
    #: Copied from the participant so that permission filters need no join.
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(64))
    scan_date: Mapped[date | None] = mapped_column(Date)
    age_at_scan: Mapped[float | None] = mapped_column(Float)
    scanner: Mapped[str | None] = mapped_column(String(256))

    participant: Mapped[Participant] = relationship(back_populates="sessions")
    series: Mapped[list[Series]] = relationship(back_populates="session", cascade="all, delete-orphan")


class Series(Base):
    """One acquisition, named in BIDS (datatype, suffix, entities) with its scan parameters."""

    __tablename__ = "series"
    __table_args__ = (
        Index("ix_series_project", "project_id", "id"),
        Index("ix_series_session", "session_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    #: De-identified SeriesInstanceUID (never the scanner's original).
    series_uid: Mapped[str | None] = mapped_column(String(128), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="MR")
    datatype: Mapped[str] = mapped_column(String(16))
    suffix: Mapped[str] = mapped_column(String(32))
    entities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    protocol_name: Mapped[str | None] = mapped_column(String(256))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    qc_status: Mapped[str] = mapped_column(String(16), default=QCStatus.pending.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[Session] = relationship(back_populates="series")
    files: Mapped[list[DataFile]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Derivative(Base):
    """Outputs of one pipeline version for one session, with the inputs it used."""

    __tablename__ = "derivative"
    __table_args__ = (Index("ix_derivative_project", "project_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("session.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    pipeline: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    inputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    files: Mapped[list[DataFile]] = relationship(back_populates="derivative", cascade="all, delete-orphan")


class DataFile(Base):
    """A file under the archive root, recorded with its SHA-256 and size."""

    __tablename__ = "data_file"
    __table_args__ = (
        Index("ix_data_file_series", "series_id"),
        Index("ix_data_file_project", "project_id", "id"),
        CheckConstraint("kind in ('raw','derivative')", name="ck_data_file_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    relpath: Mapped[str] = mapped_column(String(1024), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    derivative_id: Mapped[int | None] = mapped_column(ForeignKey("derivative.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16), default=FileKind.raw.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    series: Mapped[Series | None] = relationship(back_populates="files")
    derivative: Mapped[Derivative | None] = relationship(back_populates="files")


class AuditEvent(Base):
    """Who did what to which object, when. ``detail`` holds names of fields, never their values."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_object", "object_type", "object_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --------------------------------------------------------------------------------------------------------------
# Quality control gate (issue 14 item 6, ``incloud_kernel.qc.gate``): stored indices, reviews, project policy.
# Reviews and comments stay in this database; nothing here is sent elsewhere. Migration 0002_qc_gate.
# --------------------------------------------------------------------------------------------------------------

class QCIndex(Base):
    """One quality index of one series as computed by one pipeline version (MRIQC's IQM names: cjv, tsnr...).

    A new pipeline version adds rows beside the old ones, never over them.
    """

    __tablename__ = "qc_index"
    __table_args__ = (
        UniqueConstraint("series_id", "name", "pipeline_version", name="uq_qc_index"),
        Index("ix_qc_index_project", "project_id", "series_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    #: Copied from the series so that permission filters need no join.
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    pipeline_version: Mapped[str] = mapped_column(String(32))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QCReview(Base):
    """One decision on one series: by a reviewer, or by the gate's automatic thresholds (``source='auto'``).

    The newest row of a series is its current decision; older rows stay as history. ``comment`` is free text a
    reviewer typed: it is shown to readers of the project, never logged and never copied into an audit event.
    """

    __tablename__ = "qc_review"
    __table_args__ = (
        Index("ix_qc_review_series", "series_id", "id"),
        Index("ix_qc_review_project", "project_id", "id"),
        CheckConstraint("decision in ('pending','pass','fail','caveat')", name="ck_qc_review_decision"),
        CheckConstraint("source in ('auto','reviewer')", name="ck_qc_review_source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500), default="")
    comment: Mapped[str] = mapped_column(String(2000), default="")
    source: Mapped[str] = mapped_column(String(16), default="reviewer")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QCPolicy(Base):
    """Which QC states of a project's series enter processing, chosen by a project owner (default: the site's
    ``qc.usable``, pass and caveat, as XNAT dax's ``require_usable``)."""

    __tablename__ = "qc_policy"

    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), primary_key=True)
    accept: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --------------------------------------------------------------------------------------------------------------
# Acquisition: the protocol library (incloud_kernel.acquisition.protocols)
# --------------------------------------------------------------------------------------------------------------

class Protocol(Base):
    """One version of an acquisition protocol: the site's standard sets (``owner`` "site") or a project's own.

    Versions are never edited in place (a database trigger refuses UPDATE, see migration 0003_protocols): a
    change is a new row with the next version, and bookings keep pointing at the version they booked.
    """

    __tablename__ = "protocol"
    __table_args__ = (UniqueConstraint("owner", "key", "version", name="uq_protocol_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "site" for the standard sets, "project:<id>" for a project's own (NULL-free, so the unique key holds).
    owner: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(256))
    suffix: Mapped[str] = mapped_column(String(16))  # BIDS suffix of what it acquires: T1w, FLAIR, bold, dwi...
    vendor: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(256), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --------------------------------------------------------------------------------------------------------------
# Acquisition: scanners, maintenance blocks, bookings, the waitlist and safety screening
# (incloud_kernel.acquisition.bookings; migration 0004_bookings). No identity here either: a booking names the
# participant by internal id; the screening date is a research-safety fact, not an identity.
# --------------------------------------------------------------------------------------------------------------

#: Booking states that hold their slot (a cancelled booking keeps its row as history but frees the slot).
#: ``acquired``: its study arrived and was bound to it at ingest (migration 0009_binding); it keeps its slot.
HOLDING_STATES = ("pending", "approved", "acquired")


class Scanner(Base):
    """A scanner that can be booked: its DICOM AE title (the worklist's ScheduledStationAETitle), modality,
    site, weekly opening hours (local time of ``timezone``) and the user who manages its calendar."""

    __tablename__ = "scanner"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="MR")
    site: Mapped[str] = mapped_column(String(128), default="")
    name: Mapped[str] = mapped_column(String(256), default="")
    #: ``{"mon": ["08:00", "20:00"], ...}``; a weekday not listed is closed.
    opening_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    manager: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScannerBlock(Base):
    """A maintenance block: no booking may overlap it."""

    __tablename__ = "scanner_block"
    __table_args__ = (Index("ix_scanner_block_time", "scanner_id", "starts_at"),
                      CheckConstraint("ends_at > starts_at", name="ck_scanner_block_order"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scanner_id: Mapped[int] = mapped_column(ForeignKey("scanner.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Booking(Base):
    """One slot on one scanner for one participant of one project with the protocol versions it acquires.

    No two holding bookings (pending or approved) of one scanner overlap: on PostgreSQL an exclusion constraint
    over (scanner_id, tstzrange(starts_at, ends_at)) says so (migration 0004_bookings, btree_gist); on SQLite the
    booking code checks inside a serialised write transaction (BEGIN IMMEDIATE).
    """

    __tablename__ = "booking"
    __table_args__ = (
        Index("ix_booking_scanner_time", "scanner_id", "starts_at"),
        Index("ix_booking_project", "project_id", "starts_at"),
        CheckConstraint("ends_at > starts_at", name="ck_booking_order"),
        CheckConstraint("status in ('pending','approved','acquired','cancelled')", name="ck_booking_status"),
        UniqueConstraint("accession_number", name="uq_booking_accession"),
        UniqueConstraint("study_uid", name="uq_booking_study_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scanner_id: Mapped[int] = mapped_column(ForeignKey("scanner.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    #: What was asked for (a one-key set such as "ukb", or one protocol key) and the exact versions booked.
    protocol_key: Mapped[str] = mapped_column(String(64))
    protocol_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: Bookings made together as one weekly series share this id (cancel one or all).
    recurrence: Mapped[str | None] = mapped_column(String(36), index=True)
    booked_by: Mapped[str] = mapped_column(String(128))
    approved_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The Modality Worklist entry's AccessionNumber and StudyInstanceUID, given when the booking is
    #: made and kept (a move keeps them) so that ingest can bind the study that comes back (migration 0007).
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_uid: Mapped[str | None] = mapped_column(String(64))


class ProtocolCheck(Base):
    """The protocol-compliance verdict of one archived series bound to a booking (``acquisition.compliance``):
    ``compliant``, ``deviation`` (each difference as {parameter, booked, acquired}; the series also carries a QC
    caveat naming them) or ``not_booked`` (no booked protocol has the series' BIDS suffix). Migration 0008."""

    __tablename__ = "protocol_check"
    __table_args__ = (
        Index("ix_protocol_check_project", "project_id", "series_id"),
        CheckConstraint("verdict in ('compliant','deviation','not_booked')", name="ck_protocol_check_verdict"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("booking.id", ondelete="SET NULL"))
    protocol_id: Mapped[int | None] = mapped_column(ForeignKey("protocol.id", ondelete="SET NULL"))
    verdict: Mapped[str] = mapped_column(String(16))
    deviations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: Booked parameters the headers do not give (not compared, so neither compliant nor deviating).
    unverified: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BookingWait(Base):
    """A request for a taken slot, first come first served: when the slot frees, the oldest waiting request
    that fits is booked for its requester (``status`` becomes ``booked``, ``booking_id`` says which)."""

    __tablename__ = "booking_wait"
    __table_args__ = (
        Index("ix_booking_wait_scanner", "scanner_id", "status", "id"),
        CheckConstraint("status in ('waiting','booked','lapsed','withdrawn')", name="ck_booking_wait_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scanner_id: Mapped[int] = mapped_column(ForeignKey("scanner.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    protocol_key: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="waiting")
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("booking.id", ondelete="SET NULL"))
    #: Why a waiting request could not be booked when its slot freed (a rule's one-line message).
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ParticipantScreening(Base):
    """The date of a participant's last MR safety screening, checked before every slot.

    Kept here, beside the bookings, because the encrypted participant registry (issue 18 item 3) is built
    separately; it is a date of a safety check, not an identity.
    """

    __tablename__ = "participant_screening"

    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id", ondelete="CASCADE"),
                                                primary_key=True)
    screened_on: Mapped[date] = mapped_column(Date)
    recorded_by: Mapped[str] = mapped_column(String(128))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --------------------------------------------------------------------------------------------------------------
# Acquisition: the participant registry (issue 18 item 3, incloud_kernel.acquisition.registry). Migration
# 0005_registry. Identities exist here only as AES-GCM ciphertext (the key is never in the database) and as keyed
# HMAC digests (blind indexes); everything else is internal ids, pseudonyms and decisions.
# --------------------------------------------------------------------------------------------------------------

class RegistryPerson(Base):
    """One person: a stable internal id (``uid``) and the sealed identity (names, birth date, sex, hospital
    record number, contact) as one AES-GCM ciphertext under the data key ``key_id`` (the person's uid is its
    associated data). ``merged_into_id`` points to the person a registrar merged this one into."""

    __tablename__ = "registry_person"
    __table_args__ = (Index("ix_registry_person_key", "key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    key_id: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("registry_person.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RegistryIndex(Base):
    """A blind index: HMAC-SHA256 (registry index sub-key) of one normalised look-up key of a person, by kind:
    ``mrn`` (record number), ``name_dob`` (names + birth date), ``blk_year``/``blk_phon`` (blocking codes)."""

    __tablename__ = "registry_index"
    __table_args__ = (
        Index("ix_registry_index_digest", "kind", "digest"),
        UniqueConstraint("person_id", "kind", "digest", name="uq_registry_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("registry_person.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))


class RegistryEnrolment(Base):
    """A person in a project: the project's pseudonym (gPAS-style domain: HMAC of the uid with the project's
    domain key) and the archive participant labelled with it."""

    __tablename__ = "registry_enrolment"
    __table_args__ = (UniqueConstraint("person_id", "project_id", name="uq_registry_enrolment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("registry_person.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)
    participant_id: Mapped[int | None] = mapped_column(ForeignKey("participant.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RegistryDecision(Base):
    """A registrar's decision on a suspected duplicate pair: ``merge`` (b merged into a) or ``keep-apart``."""

    __tablename__ = "registry_decision"
    __table_args__ = (
        Index("ix_registry_decision_pair", "person_a_id", "person_b_id"),
        CheckConstraint("decision in ('merge','keep-apart')", name="ck_registry_decision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_a_id: Mapped[int] = mapped_column(ForeignKey("registry_person.id", ondelete="CASCADE"))
    person_b_id: Mapped[int] = mapped_column(ForeignKey("registry_person.id", ondelete="CASCADE"))
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RegistryMeta(Base):
    """Small facts about the registry: ``key_check`` (an HMAC of a constant under the index key, to tell a wrong
    key ring from the right one; never a key)."""

    __tablename__ = "registry_meta"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


# ==============================================================================================================
# Pipelines: runs, their tasks and the provenance of every derivative (incloud_kernel.pipeline; issue 14 items
# 1-3). A run is one pipeline version over a project's selected series; a task is one stage on one series; a
# provenance row records how one derivative was made, keyed so the same inputs and version are computed once.
# ==============================================================================================================

class PipelineRun(Base):
    """One execution of a pipeline version over a project (``incloud pipeline run``)."""

    __tablename__ = "pipeline_run"
    __table_args__ = (
        Index("ix_pipeline_run_project", "project_id", "id"),
        CheckConstraint("state in ('waiting','running','done','failed','cancelling','cancelled')",
                        name="ck_pipeline_run_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    pipeline: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    #: ``module:attribute`` of the Pipeline object, so a Dask worker can import the very same definition.
    pipeline_ref: Mapped[str] = mapped_column(String(256))
    #: Who asked for the run (hub user or ``console:<login>``); permissions were checked against this name.
    owner: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    backend: Mapped[str] = mapped_column(String(16), default="local")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The process driving the run (host:pid) and its last sign of life: a stale heartbeat means "interrupted".
    driver: Mapped[str | None] = mapped_column(String(256))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Internal URL of the live driver's Dask dashboard (``http://host:port/<public prefix>``), which only the
    #: API service proxies (to the run's owner); None when no driver is running it.
    dashboard: Mapped[str | None] = mapped_column(String(512))

    tasks: Mapped[list[PipelineTask]] = relationship(back_populates="run", cascade="all, delete-orphan")


class PipelineTask(Base):
    """One stage of a run on one input series, with its state, attempts and last error."""

    __tablename__ = "pipeline_task"
    __table_args__ = (
        UniqueConstraint("run_id", "stage", "series_id", name="uq_pipeline_task"),
        Index("ix_pipeline_task_state", "run_id", "state"),
        CheckConstraint("state in ('waiting','running','done','failed','cancelled')", name="ck_pipeline_task_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_run.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(64))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    #: The series' participant label, copied so progress per subject needs no join.
    participant: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The last failure as one line (exception class and message; never a header value).
    error: Mapped[str | None] = mapped_column(String(1000))
    #: True when the derivative already existed (same inputs and version): nothing was computed.
    reused: Mapped[bool] = mapped_column(Boolean, default=False)
    host: Mapped[str | None] = mapped_column(String(256))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    provenance_id: Mapped[int | None] = mapped_column(ForeignKey("provenance.id", ondelete="SET NULL"))

    run: Mapped[PipelineRun] = relationship(back_populates="tasks")


class Provenance(Base):
    """How one derivative was made. ``key`` hashes pipeline, stage, versions, parameters and input checksums:
    unique, so the same computation is recorded (and its files written) exactly once."""

    __tablename__ = "provenance"
    __table_args__ = (Index("ix_provenance_derivative", "derivative_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    derivative_id: Mapped[int | None] = mapped_column(ForeignKey("derivative.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_run.id", ondelete="SET NULL"))
    pipeline: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(64))
    stage_version: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Every input file read: ``[{"file_id", "relpath", "sha256"}]``.
    inputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: Distribution name -> version of the libraries the stage ran with (python included).
    libraries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    host: Mapped[str] = mapped_column(String(256))
    runtime_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ==============================================================================================================
# The brain feature library (issue 16 item 2, ``incloud_kernel.library.sharing``): a project shares its *features*
# (the Parquet rows of the library) with a user, a group or another project's members, for a time, without any
# access to its images or archive metadata. Migration 0010_feature_grants.
# ==============================================================================================================

#: Who a feature grant is given to.
GRANTEE_KINDS = ("user", "group", "project")


class FeatureGrant(Base):
    """Project ``project_id`` shares its feature rows with ``grantee`` (a user name, a group name, or, for kind
    ``project``, the members of project ``grantee_project_id``) until ``expires_at``. A revoked grant keeps its
    row (``revoked_at``) as history; only ``incloud_kernel.archive.permissions`` reads these rows for access."""

    __tablename__ = "feature_grant"
    __table_args__ = (
        Index("ix_feature_grant_grantee", "grantee_kind", "grantee"),
        Index("ix_feature_grant_project", "project_id", "id"),
        CheckConstraint("grantee_kind in ('user','group','project')", name="ck_feature_grant_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    grantee_kind: Mapped[str] = mapped_column(String(8))
    #: The user or group name; for kind ``project`` the grantee project's code at grant time (display only).
    grantee: Mapped[str] = mapped_column(String(128))
    grantee_project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(128))


# ==============================================================================================================
# Teaching workshops (issue 13 item 5, ``incloud_kernel.workshops``): a teacher lends one project read-only to a
# class of temporary accounts until an end date. Only ``incloud_kernel.archive.permissions`` reads these rows for
# access. Migration 0011_workshops.
# ==============================================================================================================

class Workshop(Base):
    """A class: its students read project ``project_id`` (never write) from ``starts_on`` to ``ends_on``
    inclusive, or until ``ended_at`` if the teacher ended it early. ``join_hash`` is the SHA-256 of the join code
    (the code itself is shown once); ``notebooks`` maps course notebook file names to their JSON text."""

    __tablename__ = "workshop"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    title: Mapped[str] = mapped_column(String(256))
    teacher: Mapped[str] = mapped_column(String(128), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    size: Mapped[int] = mapped_column(Integer)
    cores: Mapped[float] = mapped_column(Float, default=1.0)
    memory: Mapped[str] = mapped_column(String(16), default="1G")
    join_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    notebooks: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    accounts: Mapped[list[WorkshopAccount]] = relationship(back_populates="workshop", cascade="all, delete-orphan")


class WorkshopAccount(Base):
    """One temporary student account: a generated user name and a password hash (scrypt; the password is shown
    once). ``removed_at`` is set when the expiry job has removed the account, its servers and its files."""

    __tablename__ = "workshop_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(ForeignKey("workshop.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    workshop: Mapped[Workshop] = relationship(back_populates="accounts")


# ==============================================================================================================
# Computer-aided diagnosis (issue 17 item 3, ``incloud_kernel.cads.registry``): every trained model is a version
# with its training snapshot (the library query and the series ids), code and library versions, metrics and the
# retraining decision. The fitted model itself is a joblib file under ``$INCLOUD_HOME/cads/models`` whose SHA-256
# is kept here. Migration 0012_cads_models.
# ==============================================================================================================

#: A model version's state: the one ``current`` model answers reports; ``refused`` candidates are kept as history.
CADS_STATUSES = ("candidate", "current", "retired", "refused")


class CadsModel(Base):
    """One trained diagnostic model version. Never deleted (old reports name it and must stay reproducible)."""

    __tablename__ = "cads_model"
    __table_args__ = (
        CheckConstraint("status in ('candidate','current','retired','refused')", name="ck_cads_model_status"),
        Index("ix_cads_model_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: 1, 2, ... in training order; what reports name.
    version: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    #: The library query the training data came from (criterion names and values: no identity).
    query: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Series ids of the training and of the held-out scans (the snapshot; library rows are keyed by series).
    training_series: Mapped[list[Any]] = mapped_column(JSON, default=list)
    heldout_series: Mapped[list[Any]] = mapped_column(JSON, default=list)
    classes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    features: Mapped[list[Any]] = mapped_column(JSON, default=list)
    #: ``{"leave_site_out": {...}, "heldout": {...}, "current_on_heldout": {...}}``.
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Why it was promoted or refused (one line).
    decision: Mapped[str] = mapped_column(String(512), default="")
    code_version: Mapped[str] = mapped_column(String(64))
    library_generation: Mapped[str] = mapped_column(String(128), default="")
    #: Distribution name -> version (python, numpy, scikit-learn, ...).
    libraries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
