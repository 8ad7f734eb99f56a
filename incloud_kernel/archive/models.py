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
    pending = "pending"
    passed = "pass"
    failed = "fail"


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
