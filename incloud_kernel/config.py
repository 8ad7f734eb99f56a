"""The one INCloud configuration object: a site TOML file plus ``INCLOUD_*`` environment overrides.

Every setting of every component is declared here, in a section dataclass, so that ``incloud config show``
can print all effective values and where each came from. It must never hold a patient-identifying value.

Precedence (last wins): built-in default < site file < environment variable.
- The site file is ``$INCLOUD_CONFIG`` if set, else ``$INCLOUD_HOME/incloud.toml`` if it exists.
- A setting ``key`` of section ``[section]`` is overridden by ``INCLOUD_<SECTION>_<KEY>`` (upper case),
  e.g. ``INCLOUD_DATABASE_URL`` or ``INCLOUD_STORAGE_ARCHIVE_ROOT``.
- With no file and no variables, an embedded site lives under ``$INCLOUD_HOME`` (default: the user's data
  directory): SQLite database, archive root, spool, quarantine and backup root.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import platformdirs

from incloud_kernel.errors import ConfigError

ENV_PREFIX = "INCLOUD_"


def default_home() -> Path:
    """The embedded site's data directory when ``$INCLOUD_HOME`` is not set."""
    return Path(platformdirs.user_data_dir("incloud", appauthor=False))


@dataclass
class SiteSection:
    """Who this site is."""

    name: str = "INCloud embedded site"
    #: Secret key for keyed HMACs (UIDs, pseudonyms, date shifts). Empty: generated once into $INCLOUD_HOME.
    key_file: str = ""


@dataclass
class DatabaseSection:
    """Where metadata lives. Empty ``url``: SQLite file ``$INCLOUD_HOME/incloud.sqlite``."""

    url: str = ""
    #: Seconds to wait for the database before giving up with a one-line error.
    connect_timeout: int = 5


@dataclass
class StorageSection:
    """Filesystem roots. Empty values default to folders under ``$INCLOUD_HOME``.

    Each root is the service user's alone: created 0700 (an existing one is narrowed by ``incloud init``), files in
    it 0600 (docs/security.md). ``quarantine`` holds identified originals (``incloud quarantine``).
    """

    archive_root: str = ""
    spool: str = ""
    quarantine: str = ""
    backup_root: str = ""


@dataclass
class DicomSection:
    """The DICOM edge (Orthanc) that ``incloud serve dicom`` configures and supervises."""

    ae_title: str = "INCLOUD"
    port: int = 11112
    #: Calling AE titles allowed to associate; empty list: any.
    allowed_calling_aets: list[str] = field(default_factory=list)
    http_port: int = 8042
    #: Empty: embedded SQLite index; else a PostgreSQL URL for Orthanc's PostgreSQL index plugin.
    index_database_url: str = ""
    #: Orthanc executable and the folder holding its plugins (Debian's layout by default).
    orthanc_binary: str = "Orthanc"
    plugins_dir: str = "/usr/share/orthanc/plugins"
    #: Seconds without a new instance after which Orthanc calls a study stable (the ingest trigger).
    stable_age: int = 60
    #: Transfer syntaxes accepted for C-STORE (Orthanc wildcards); the default covers the DICOM standard's,
    #: JPEG 2000 and JPEG-LS included.
    accepted_transfer_syntaxes: list[str] = field(default_factory=lambda: ["1.2.840.10008.1.*"])
    #: Reject associations whose called AE title is not ``ae_title`` (off when a routing rule uses called_aet).
    check_called_aet: bool = True
    dicomweb: bool = True
    #: Load the Modality Worklists plugin on a folder under the spool (the reservation issue fills it).
    worklist: bool = True
    dicom_threads: int = 4
    #: Study -> project rules, first match wins; each a table with ``project`` and one or more of
    #: ``calling_aet``, ``called_aet``, ``accession_number``, ``attribute`` + ``value`` (DICOM keyword, exact
    #: or ``*`` glob). No match: the ``unassigned_project`` inbox.
    routing: list[dict[str, Any]] = field(default_factory=list)
    unassigned_project: str = "unassigned"
    #: Edge scrubbing (SQLite index only): once Orthanc has held something, is empty again and nothing arrived
    #: or left for this many seconds, the supervisor restarts Orthanc (a few s) around a compaction of its index,
    #: so no deleted study's values stay in it (docs/security.md). Senders retry a store refused meanwhile.
    scrub_quiet_time: float = 30.0
    #: DICOM TLS (PS3.15 Annex B, "The Basic TLS Secure Transport Connection Profile"), off while empty: the
    #: edge's certificate and private key (PEM files readable by the service user only), and the senders'
    #: certificates it trusts (one PEM bundle). With TLS on, the edge speaks only TLS on ``port``.
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_trusted_certificates: str = ""
    #: Refuse a sender that shows no certificate the bundle trusts (mutual TLS); off: encryption only.
    tls_require_sender_certificate: bool = True


@dataclass
class DeidSection:
    """De-identification defaults (DICOM PS3.15 Basic Profile plus these options)."""

    options: list[str] = field(
        default_factory=lambda: [
            "retain_long_modified_dates",
            "retain_patient_characteristics",
            "retain_device_identity",
            "retain_safe_private",
        ]
    )
    #: Pass instances that may carry burned-in text (otherwise quarantined).
    allow_burned_in: bool = False


@dataclass
class DefaceSection:
    """Refacing defaults."""

    #: Registration-quality score (head-mask Dice, 0..1) below which a series is quarantined for review.
    min_registration_score: float = 0.8
    #: SimpleITK threads for registration (0: SimpleITK's default, all cores).
    threads: int = 1
    #: Brain dilation (mm) that stays bit-identical, plus a margin (mm) for registration error (on top of the
    #: 2 mm slack already in the template brain mask).
    protect_mm: float = 5.0
    margin_mm: float = 2.0
    #: Width (mm) over which the template face is blended into the subject.
    ramp_mm: float = 4.0


@dataclass
class ComputeSection:
    """Where pipelines run: ``local`` (Dask LocalCluster) or ``slurm`` (dask-jobqueue SLURMCluster)."""

    backend: str = "local"
    #: Dask workers a run starts (LocalCluster processes, or Slurm jobs of one worker each).
    workers: int = 2
    #: Threads per worker (a stage may use numpy's threads on top; keep 1 on small nodes).
    threads_per_worker: int = 1
    slurm_queue: str = "debug"
    slurm_cores: int = 1
    slurm_memory: str = "1GB"
    slurm_walltime: str = "00:30:00"
    #: Python that Slurm worker jobs run (a venv every user can execute); empty: the driver's own interpreter.
    slurm_python: str = ""
    #: Address the Dask scheduler listens on for Slurm workers (an interface the compute nodes reach); empty:
    #: Dask's default. A single-host site uses ``127.0.0.1``.
    scheduler_host: str = ""
    #: Extra ``#SBATCH`` lines' options for worker jobs, e.g. ``["--account=neuro"]``.
    slurm_job_extra: list[str] = field(default_factory=list)
    #: A task that fails is tried this many times in all; the error of the last attempt is kept per input.
    max_attempts: int = 3
    #: Seconds before the first retry of a failed task; doubled for each further attempt.
    retry_backoff: float = 5.0
    #: The site's own pipelines besides the built-in ones: name -> ``module:attribute`` of an
    #: ``incloud_kernel.pipeline.Pipeline`` importable by the driver and every worker.
    pipelines: dict[str, str] = field(default_factory=dict)
    #: Seconds between the driver's heartbeats; a running run silent for 3 intervals is shown as interrupted.
    heartbeat_interval: float = 5.0
    #: Seconds one task may compute before it is stopped and counted as a failed attempt ("timed out after N
    #: s"; retried as any failure); 0: no limit. A stage's ``timeout`` overrides it, ``stage_timeouts`` both.
    task_timeout: float = 6 * 3600.0
    #: The site's per-stage limits, stage name -> seconds (0: none), e.g. ``{qc = 1800}``.
    stage_timeouts: dict[str, float] = field(default_factory=dict)
    #: Interface the driver's Dask dashboard listens on (the API service must reach it there; it has no login
    #: of its own, so never every interface): loopback for drivers on the API service's host.
    dashboard_host: str = "127.0.0.1"
    #: ``podman``: Slurm worker jobs run the Dask worker inside the published workstation image
    #: (``[container]``, docs/pipelines.md); empty: in ``slurm_python`` on the node itself.
    container: str = ""

    def __post_init__(self) -> None:
        if self.backend not in COMPUTE_BACKENDS:
            raise ConfigError(f"compute.backend must be one of {', '.join(COMPUTE_BACKENDS)} (got {self.backend!r})")
        if self.workers < 1 or self.threads_per_worker < 1 or self.max_attempts < 1:
            raise ConfigError("compute.workers, compute.threads_per_worker and compute.max_attempts must be >= 1")
        if self.retry_backoff < 0 or self.heartbeat_interval <= 0:
            raise ConfigError("compute.retry_backoff must be >= 0 and compute.heartbeat_interval > 0")
        if self.task_timeout < 0 or any(v < 0 for v in self.stage_timeouts.values()):
            raise ConfigError("compute.task_timeout and compute.stage_timeouts must be >= 0 seconds (0: no limit)")
        if self.container not in CONTAINER_RUNTIMES:
            raise ConfigError(f"compute.container must be one of {', '.join(repr(r) for r in CONTAINER_RUNTIMES)} "
                              f"(got {self.container!r})")


#: Where pipelines run (``ComputeSection.backend``).
COMPUTE_BACKENDS = ("local", "slurm")
#: How a Slurm job runs the workstation image (``compute.container``, a hub profile's ``container``); empty: not.
CONTAINER_RUNTIMES = ("", "podman")


@dataclass
class ContainerSection:
    """The workstation image in Slurm jobs: workstations of a profile with ``container = "podman"`` and, with
    ``compute.container``, pipeline workers run inside it as the user (images/incloud-run, docs/hub.md)."""

    #: Folder that ``images/publish.sh`` publishes the image into (``incloud-run``, ``current``); every compute
    #: node must see it at this path (shared storage).
    images: str = "/var/tmp/incloud-image/published"
    #: Host folders mounted into every container at the same path besides the user's home (shared data).
    binds: list[str] = field(default_factory=list)
    #: Folders of the site's own pipeline modules (``compute.pipelines``), mounted and put on ``PYTHONPATH`` in
    #: pipeline worker containers (the host's ``PYTHONPATH`` never reaches a container).
    pythonpath: list[str] = field(default_factory=list)


@dataclass
class HubSection:
    """JupyterHub and its services."""

    #: ``embedded`` (local process spawner) or ``cluster`` (batchspawner SlurmSpawner behind ProfilesSpawner).
    mode: str = "embedded"
    bind_url: str = "http://127.0.0.1:8000"
    api_port: int = 8890
    #: Python environment workstations run in (must be readable by every user).
    workstation_venv: str = "/opt/incloud/venv"
    idle_timeout: int = 3600
    allow_named_servers: bool = True
    admin_users: list[str] = field(default_factory=lambda: ["admin"])
    #: Initial members of the INCloud role groups (researcher, qc_reviewer, clinician, registrar, admin), e.g.
    #: ``{researcher = ["ana"], qc_reviewer = ["bo"]}``; loaded at hub start, managed in the hub's admin page after.
    group_members: dict[str, list[str]] = field(default_factory=dict)
    #: Where the hub's internal API listens (workstations and services call it); proxy API port beside it.
    hub_bind_url: str = "http://127.0.0.1:8081"
    proxy_api_port: int = 8001
    #: Hub runtime folder (cookie secret, proxy token, logs). Empty: ``$INCLOUD_HOME/hub``.
    state_dir: str = ""
    #: The hub's own database (users, tokens). Empty: SQLite in ``state_dir``; production: a PostgreSQL URL.
    db_url: str = ""
    #: ``native`` (sign-up + admin approval), ``shared`` (demo password), ``ldap`` or ``oauth`` (docs/hub.md).
    authenticator: str = "native"
    #: Demo-only shared password for ``authenticator = "shared"`` (at least 8 characters).
    shared_password: str = ""
    #: The admin users' own password for ``authenticator = "shared"`` (at least 32 characters; scripts/start.sh
    #: sets it and prints it once). Admin names never log in with the shared password.
    admin_password: str = ""
    #: Embedded mode: the root-owned workstation launcher the hub's user may run through sudo (hub.launcher), so
    #: each hub user's workstation runs as that user's own system account. Empty: no isolation (hub not root).
    launcher: str = ""
    #: Workstation sizes offered in cluster mode: name, display_name, cores, memory (Slurm units), walltime.
    profiles: list[dict] = field(default_factory=lambda: [
        {"name": "small", "display_name": "Small: 1 core, 2 GB, 8 h", "cores": 1, "memory": "2G",
         "walltime": "08:00:00"},
        {"name": "medium", "display_name": "Medium: 2 cores, 8 GB, 8 h", "cores": 2, "memory": "8G",
         "walltime": "08:00:00"},
        {"name": "large", "display_name": "Large: 4 cores, 16 GB, 24 h", "cores": 4, "memory": "16G",
         "walltime": "24:00:00"},
    ])
    slurm_partition: str = "debug"
    #: How the hub submits jobs as the user (batchspawner's ``exec_prefix``); ``sudo -E -u {username}`` also works.
    exec_prefix: str = "runuser -u {username} --"
    #: Seconds a workstation may take from spawn request to a running server before the spawn fails.
    start_timeout: int = 60
    #: Seconds the API service trusts a token check before asking the hub again (revocation takes this long;
    #: 0 asks every time).
    token_cache_seconds: int = 10
    #: How often (s) the idle culler looks for idle workstations.
    cull_every: int = 300
    #: Port of the SSH entry point (token as password) into workstations.
    ssh_port: int = 8022
    #: How often (s) the workshop-expiry service removes the accounts of ended workshops (hub.workshops).
    workshop_expire_every: int = 300


@dataclass
class IngestSection:
    """The ingest chain: Orthanc change feed -> de-identify -> reface -> dcm2niix -> BIDS -> archive."""

    #: Seconds between polls of Orthanc's change feed when idle.
    poll_interval: float = 1.0
    #: Every this many polls, also sweep Orthanc for stable studies the feed may have missed (Orthanc restart).
    sweep_every: int = 30
    #: Extra dcm2niix arguments after the fixed ``-b y -ba n -z y``.
    dcm2niix_args: list[str] = field(default_factory=list)
    #: Reface anatomical series (T1w, T2w, FLAIR) before archiving.
    reface: bool = True
    #: BIDS naming rules (heudiconv-style heuristics as data), first match wins; empty: built-in defaults for
    #: T1w, T2w, FLAIR, bold and dwi. Each a table: ``datatype``, ``suffix``, optional ``entities`` table and
    #: match keys ``series_description`` / ``protocol_name`` (regular expressions, case-insensitive),
    #: ``image_type`` (all listed values present), ``min_volumes`` / ``max_volumes``, ``min_tr`` / ``max_tr``
    #: (seconds), ``has_bvals``.
    bids_rules: list[dict[str, Any]] = field(default_factory=list)
    #: Series no rule names: ``sourcedata`` (archived as de-identified DICOM plus its dcm2niix conversion under
    #: ``sourcedata/sub-*/ses-*/``, listed as datatype ``sourcedata``) or ``quarantine`` the whole study. There
    #: is no choice that drops a series: every received instance ends archived or quarantined.
    unmatched: str = "sourcedata"
    #: Command run after each archive commit with the new archive-relative paths as arguments; empty: none.
    backup_command: str = ""
    #: Seconds between heartbeats a worker writes into the journal of the job it runs; a running job whose
    #: heartbeat is older than 3 intervals (or whose worker pid is gone on this host) is shown as interrupted.
    heartbeat_interval: float = 5.0
    #: A study whose job fails for a reason other than its data (disk full, database down, a library crash) is
    #: tried this many times in all, then quarantined with the exception's class; the worker goes on.
    max_attempts: int = 3
    #: Seconds before the first retry of such a study; doubled for each further attempt.
    retry_backoff: float = 30.0
    #: A clinic upload (``api/upload``), once archived, starts its processing by itself: QC over its series,
    #: the features when the QC gate accepts them, then the CADS report (``ingest.followup``).
    process_uploads: bool = True

    def __post_init__(self) -> None:
        if self.unmatched not in UNMATCHED_CHOICES:
            raise ConfigError(f"ingest.unmatched must be one of {', '.join(UNMATCHED_CHOICES)} (got "
                              f"{self.unmatched!r}; 'skip' was removed: no series is ever dropped)")
        if self.max_attempts < 1:
            raise ConfigError("ingest.max_attempts must be at least 1")
        if self.retry_backoff < 0:
            raise ConfigError("ingest.retry_backoff must not be negative")


#: QC states a series can be in (``incloud_kernel.archive.models.QCStatus``; repeated here because the config
#: module imports nothing of the archive).
QC_STATES = ("pending", "pass", "fail", "caveat")


def _default_qc_thresholds() -> list[dict[str, Any]]:
    # Starting points from the literature, for a site to tune: FD (Power) mean 0.2 / 0.5 mm is the usual
    # "low motion" / "exclude" pair; tSNR and MRIQC's CJV bands follow values MRIQC users report for 3 T data.
    return [
        {"suffix": "bold", "index": "fd_mean", "better": "lower", "pass": 0.2, "fail": 0.5},
        {"suffix": "bold", "index": "tsnr", "better": "higher", "pass": 50.0, "fail": 20.0},
        {"suffix": "T1w", "index": "cjv", "better": "lower", "pass": 0.45, "fail": 0.8},
        {"suffix": "T1w", "index": "snr_total", "better": "higher", "pass": 10.0, "fail": 4.0},
    ]


@dataclass
class QCSection:
    """The QC gate (``incloud_kernel.qc.gate``): automatic thresholds and what enters processing by default."""

    #: Automatic decisions, one rule per (BIDS suffix, index): ``better`` is ``lower`` or ``higher``; a series
    #: is failed when any rule's index is at or beyond ``fail``, passed when every rule of its suffix has its
    #: index and each is at or better than ``pass``; everything between waits for a reviewer. No rule for a
    #: suffix: every series of it waits for a reviewer.
    thresholds: list[dict[str, Any]] = field(default_factory=_default_qc_thresholds)
    #: QC states that enter processing in a project whose owners chose nothing (XNAT dax ``require_usable``).
    usable: list[str] = field(default_factory=lambda: ["pass", "caveat"])
    #: Group outlier flag shown in the review dashboard: outside Tukey's fences, this many IQRs beyond the
    #: quartiles of the project's series of the same suffix.
    outlier_iqr: float = 1.5

    def __post_init__(self) -> None:
        bad = set(self.usable) - set(QC_STATES)
        if bad:
            raise ConfigError(f"qc.usable names unknown QC state(s) {', '.join(sorted(bad))}; "
                              f"known: {', '.join(QC_STATES)}")
        for n, rule in enumerate(self.thresholds):
            missing = {"suffix", "index", "better", "pass", "fail"} - set(rule)
            if missing or rule.get("better") not in ("lower", "higher"):
                raise ConfigError(f"qc.thresholds[{n}] needs suffix, index, better (lower|higher), pass and fail")
            try:
                low, high = float(rule["pass"]), float(rule["fail"])
            except (TypeError, ValueError):
                raise ConfigError(f"qc.thresholds[{n}]: pass and fail must be numbers") from None
            if (rule["better"] == "lower" and low >= high) or (rule["better"] == "higher" and low <= high):
                raise ConfigError(f"qc.thresholds[{n}] ({rule['suffix']} {rule['index']}): pass must be better "
                                  f"than fail, so that a band between them is left for reviewers")
        if self.outlier_iqr <= 0:
            raise ConfigError("qc.outlier_iqr must be positive")


@dataclass
class AcquisitionSection:
    """Scanner bookings (``incloud_kernel.acquisition.bookings``): approval, notice, quotas, slot size."""

    #: New bookings wait for the scanner's manager to approve them (bookings by the manager or a site admin are
    #: approved at once). Off: every booking that passes the rules is approved.
    approval_required: bool = False
    #: Hours before a slot's start after which its booker may no longer cancel or move it (the scanner's manager
    #: and site admins still may).
    notice_hours: float = 24.0
    #: Scanner hours a project may hold per calendar month (in ``timezone``); 0: no quota.
    monthly_quota_hours: float = 0.0
    #: Per-project quotas that replace ``monthly_quota_hours``, e.g. ``{STUDY1 = 20}``.
    project_quota_hours: dict[str, float] = field(default_factory=dict)
    #: Bookings start and end on multiples of this many minutes (local time), and last at least one slot.
    slot_minutes: int = 15
    #: A participant's MR safety screening counts for this many days before the slot (0: screening not checked).
    screening_valid_days: int = 365
    #: Time zone of new scanners' opening hours and of the quota's calendar months (IANA name).
    timezone: str = "UTC"
    #: A study from the DICOM edge whose AccessionNumber and StudyInstanceUID name no booking: ``route`` (the
    #: project ``dicom.routing`` gives it, else the unassigned inbox) or ``quarantine`` (kept out, with a reason).
    unbooked_studies: str = "route"

    def __post_init__(self) -> None:
        if self.notice_hours < 0 or self.monthly_quota_hours < 0 or self.screening_valid_days < 0:
            raise ConfigError("acquisition.notice_hours, monthly_quota_hours and screening_valid_days must not be "
                              "negative")
        if not 1 <= self.slot_minutes <= 24 * 60 or (24 * 60) % self.slot_minutes:
            raise ConfigError("acquisition.slot_minutes must divide a day (e.g. 5, 15, 30, 60)")
        if self.unbooked_studies not in ("route", "quarantine"):
            raise ConfigError("acquisition.unbooked_studies must be route or quarantine")
        for code, hours in self.project_quota_hours.items():
            if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
                raise ConfigError(f"acquisition.project_quota_hours.{code} must be a number of hours, 0 or more")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError):
            raise ConfigError(f"acquisition.timezone {self.timezone!r} is not an IANA time zone") from None


@dataclass
class RegistrySection:
    """The participant registry (``incloud_kernel.acquisition.registry``): where its keys are, how it matches.

    Keys are never in the database or in this file: ``key_file`` (empty: ``$INCLOUD_HOME/registry/keys.json``,
    0600 in a 0700 folder, made at the first registration) or, when the variable named by ``key_env`` is set,
    that variable (a KMS or secret store puts the key ring there). See docs/security.md.
    """

    key_file: str = ""
    key_env: str = "INCLOUD_REGISTRY_KEYRING"
    #: EpiLink-weighted similarity (0..1) of a strong candidate: candidates the registrar kept apart from a strong
    #: one are not offered again. No fuzzy match is ever merged without the registrar's decision.
    match_threshold: float = 0.95
    #: Similarity at or above which a registration is held as a possible duplicate until a registrar decides.
    possible_threshold: float = 0.6
    #: First letters of every per-project pseudonym (then 10 base32 characters; BIDS-safe).
    pseudonym_prefix: str = "R"

    def __post_init__(self) -> None:
        if not 0 < self.possible_threshold < self.match_threshold <= 1:
            raise ConfigError("registry.possible_threshold and match_threshold must satisfy 0 < possible < match <= 1")
        if not (self.pseudonym_prefix.isascii() and self.pseudonym_prefix.isalpha() and len(self.pseudonym_prefix) <= 8):
            raise ConfigError("registry.pseudonym_prefix must be 1-8 ASCII letters (BIDS-safe)")


@dataclass
class LibrarySection:
    """The brain feature library (``incloud_kernel.library``): where its Parquet lives, how counts are masked.

    ``root`` empty: ``$INCLOUD_HOME/library`` (0700, the service user's alone like every storage root). A count
    of matches between 1 and ``min_cell - 1`` is shown as ``"< min_cell"`` (docs/library.md says what this does and
    does not protect).
    """

    root: str = ""
    min_cell: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.min_cell, bool) or not isinstance(self.min_cell, int) or self.min_cell < 1:
            raise ConfigError("library.min_cell must be a whole number, 1 or more")


#: What happens to a series no BIDS rule names (``IngestSection.unmatched``).
UNMATCHED_CHOICES = ("sourcedata", "quarantine")


SECTIONS: dict[str, type] = {
    "site": SiteSection,
    "database": DatabaseSection,
    "storage": StorageSection,
    "dicom": DicomSection,
    "deid": DeidSection,
    "deface": DefaceSection,
    "compute": ComputeSection,
    "hub": HubSection,
    "ingest": IngestSection,
    "qc": QCSection,
    "acquisition": AcquisitionSection,
    "registry": RegistrySection,
    "library": LibrarySection,
    "container": ContainerSection,
}


@dataclass
class Config:
    """Effective configuration; ``sources`` maps ``section.key`` to where its value came from."""

    home: Path
    file: Path | None
    site: SiteSection
    database: DatabaseSection
    storage: StorageSection
    dicom: DicomSection
    deid: DeidSection
    deface: DefaceSection
    compute: ComputeSection
    hub: HubSection
    ingest: IngestSection
    qc: QCSection
    acquisition: AcquisitionSection
    registry: RegistrySection
    library: LibrarySection
    container: ContainerSection
    sources: dict[str, str] = field(default_factory=dict)

    # Derived locations: one place decides the embedded defaults.
    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.home / 'incloud.sqlite'}"

    def _root(self, value: str, default: str) -> Path:
        return Path(value).expanduser() if value else self.home / default

    @property
    def archive_root(self) -> Path:
        return self._root(self.storage.archive_root, "archive")

    @property
    def spool(self) -> Path:
        return self._root(self.storage.spool, "spool")

    @property
    def quarantine(self) -> Path:
        return self._root(self.storage.quarantine, "quarantine")

    @property
    def backup_root(self) -> Path:
        return self._root(self.storage.backup_root, "backup")

    @property
    def library_root(self) -> Path:
        return self._root(self.library.root, "library")

    @property
    def site_key_file(self) -> Path:
        """The site's secret key (``site.key_file``, default ``$INCLOUD_HOME/site.key``): ``Site.secret_key`` makes
        and reads it, the site backup copies it."""
        return Path(self.site.key_file) if self.site.key_file else self.home / "site.key"

    def effective(self) -> list[tuple[str, Any, str]]:
        """Every setting as (name, value, source), derived paths included."""
        rows: list[tuple[str, Any, str]] = [("home", str(self.home), self.sources.get("home", "default"))]
        for name in SECTIONS:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                key = f"{name}.{f.name}"
                rows.append((key, getattr(section, f.name), self.sources.get(key, "default")))
        for derived in ("database_url", "archive_root", "spool", "quarantine", "backup_root", "library_root"):
            rows.append((f"(effective) {derived}", str(getattr(self, derived)), "derived"))
        return rows


def _coerce(value: str, annotation: Any, name: str) -> Any:
    """Turn an environment string into the field's type; lists are JSON or comma-separated."""
    kind = typing.get_origin(annotation) or annotation
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is dict:
            loaded = json.loads(value)
            if not isinstance(loaded, dict):
                raise ValueError(value)
            return loaded
        if kind is list:
            value = value.strip()
            if value.startswith("["):
                return list(json.loads(value))
            return [v.strip() for v in value.split(",") if v.strip()]
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from None
    return value


def _build_section(name: str, cls: type, from_file: Mapping[str, Any], env: Mapping[str, str],
                   file: Path | None, sources: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(from_file) - known
    if unknown:
        raise ConfigError(f"{file}: unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key in known:
        if key in from_file:
            values[key] = from_file[key]
            sources[f"{name}.{key}"] = f"file {file}"
        env_name = f"{ENV_PREFIX}{name.upper()}_{key.upper()}"
        if env_name in env:
            values[key] = _coerce(env[env_name], hints[key], env_name)
            sources[f"{name}.{key}"] = f"env {env_name}"
    return cls(**values)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the effective configuration. Raises ConfigError (one line) on a bad file or value."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    home = Path(env["INCLOUD_HOME"]).expanduser() if env.get("INCLOUD_HOME") else default_home()
    if env.get("INCLOUD_HOME"):
        sources["home"] = "env INCLOUD_HOME"
    file: Path | None = None
    if path is not None:
        file = Path(path)
    elif env.get("INCLOUD_CONFIG"):
        file = Path(env["INCLOUD_CONFIG"])
    elif (home / "incloud.toml").is_file():
        file = home / "incloud.toml"
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        if "home" in data:
            home = Path(str(data.pop("home"))).expanduser()
            sources["home"] = f"file {file}"
            if env.get("INCLOUD_HOME"):
                home = Path(env["INCLOUD_HOME"]).expanduser()
                sources["home"] = "env INCLOUD_HOME"
    unknown_sections = set(data) - set(SECTIONS)
    if unknown_sections:
        raise ConfigError(f"{file}: unknown section(s): {', '.join(sorted(unknown_sections))}")
    sections = {
        name: _build_section(name, cls, data.get(name, {}), env, file, sources) for name, cls in SECTIONS.items()
    }
    return Config(home=home, file=file, sources=sources, **sections)


_cached: Config | None = None


def get_config(reload: bool = False) -> Config:
    """The process-wide configuration, read once (``reload=True`` re-reads file and environment)."""
    global _cached
    if _cached is None or reload:
        _cached = load_config()
    return _cached
