"""The ingest chain for one study, one idempotent job: de-identify -> reface (structural series, as DICOM) ->
dcm2niix -> BIDS name -> archive (files atomically written with checksums, series row, file rows and audit in
one commit) -> backup hook -> series ready for QC.

Identified DICOM never enters the archive: it is read in memory, de-identified by ``incloud_kernel.deid`` and
only the de-identified instances are written (to a private work folder and the de-identified series cache under
the spool). Re-running a job stores nothing new; instances that arrive later for an archived series are merged
in the cache and the series is reconverted. Any failure raises ``ChainFailure`` (step + one-line reason) and
leaves the archive without the failed series; any other exception of a step is raised as ``UnexpectedFailure``
(a ChainFailure the worker retries with back-off before it quarantines). Nothing received is dropped: a series
no BIDS rule names is archived under ``sourcedata/`` (de-identified DICOM plus its dcm2niix conversion).
Never log or raise with a header value.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from incloud_kernel.archive import records
from incloud_kernel.archive.models import DataFile, Participant, Project, Series, Session
from incloud_kernel.archive.permissions import SYSTEM, Actor
from incloud_kernel.archive.projects import audit, create_project
from incloud_kernel.errors import IncloudError, NotFound
from incloud_kernel.ingest import demographics
from incloud_kernel.ingest.convert import ConversionError, Converted, convert_series
from incloud_kernel.ingest.naming import BidsName, SeriesFacts, classify
from incloud_kernel.site import Site, private_dir

log = logging.getLogger(__name__)

#: Media Storage Directory (DICOMDIR) SOP class: an index, not an image.
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
ARCHIVED_MARKER = "archived.json"


class ChainFailure(IncloudError):
    """A step of the chain failed; ``step`` names it. The study goes to quarantine, never half into the archive."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.reason = " ".join(str(message).split())

    #: Whether the worker may retry the study (a fault of the machine, not of the data) before quarantining it.
    retryable = False


def failure_message(exc: BaseException) -> str:
    """``<exception class>: <detail>`` without any value from the exception's own message (which may quote a
    header value or a path made of one): OS errors give their errno text, INCloud errors their message (value-free
    by the project's rule), anything else only its class."""
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno:
        detail = os.strerror(exc.errno)
    elif isinstance(exc, IncloudError):
        detail = " ".join(str(exc).split())
    elif isinstance(exc, MemoryError):
        detail = "out of memory"
    elif type(exc).__module__.startswith("sqlalchemy"):
        detail = "database error"
    else:
        detail = "unexpected error"
    return f"{name}: {detail}"


class UnexpectedFailure(ChainFailure):
    """Any exception a step raised that is not a ChainFailure (SimpleITK, database, disk full...): retryable,
    reason = exception class + value-free detail (``failure_message``)."""

    retryable = True

    def __init__(self, step: str, exc: BaseException) -> None:
        super().__init__(step, failure_message(exc))
        self.exception_class = type(exc).__name__


@dataclass
class SeriesOutcome:
    """What happened to one series (internal ids and BIDS names only)."""

    series_uid: str
    status: str  # archived | merged | unchanged
    series_id: int | None = None
    relpaths: list[str] = field(default_factory=list)
    name: str = ""
    #: Protocol compliance of a series of a bound study (``acquisition.compliance``): compliant, deviation...
    verdict: str = ""


@dataclass
class HeldBack:
    """Instances the de-identification held back (burned-in text): quarantined, the rest of the study archived."""

    paths: list[Path]
    reason: str


class _HeldBack(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class StudyOutcome:
    project: str
    participant: str
    session: str
    series: list[SeriesOutcome] = field(default_factory=list)
    held_back: list[HeldBack] = field(default_factory=list)
    #: The booking the study was bound to (its AccessionNumber or StudyInstanceUID), if any.
    booking: int | None = None
    #: Received files whose instance the archive now holds (archived, merged or already archived before).
    accounted: list[Path] = field(default_factory=list)

    @property
    def stored_anything(self) -> bool:
        return any(s.status in ("archived", "merged") for s in self.series)


@dataclass
class _Prepared:
    """A converted, named (and refaced) series waiting to be archived."""

    suid: str
    name: BidsName
    params: dict[str, Any]
    payload: dict[str, Any]
    original: Dataset
    existing: tuple[int, bool] | None
    cache: Path
    cached: set[str]
    refaced: bool = False


def _clean_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def read_instances(paths: Iterable[Path], unread: list[Path] | None = None) -> list[tuple[Path, Dataset]]:
    """Every DICOM instance among ``paths`` (DICOMDIR indexes and non-DICOM files are passed over and, when
    ``unread`` is given, appended to it: the worker quarantines them, a folder import ignores them)."""
    found: list[tuple[Path, Dataset]] = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError, KeyError, TypeError):
            if unread is not None:
                unread.append(path)
            continue
        sop = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        if (sop == DICOMDIR_SOP or "DirectoryRecordSequence" in ds or "SOPInstanceUID" not in ds
                or "SeriesInstanceUID" not in ds or "StudyInstanceUID" not in ds):
            if unread is not None:
                unread.append(path)
            continue
        found.append((path, ds))
    return found


def _params(sidecar: dict[str, Any], image: Any, instances: int) -> dict[str, Any]:
    """Scan parameters of a converted series (from its sidecar and image) as recorded on the series row."""
    params = {k: sidecar[k] for k in ("RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength",
                                      "Manufacturer", "ManufacturersModelName") if k in sidecar}
    params["Matrix"] = [int(x) for x in image.shape[:3]]
    params["VoxelSize"] = [float(x) for x in image.header.get_zooms()[:3]]
    params["Volumes"] = int(image.shape[3]) if len(image.shape) > 3 else 1
    params["Instances"] = instances
    return params


def _series_number(ds: Dataset) -> int:
    """SeriesNumber for ordering; a missing or malformed value (IS that is no integer) sorts first."""
    try:
        return int(ds.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _label(prefix: str, key: bytes, text: str, n: int = 10) -> str:
    return prefix + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:n]


class IngestChain:
    """Runs the chain for studies of a site; one instance per worker (holds the deid context and rules)."""

    def __init__(self, site: Site, *, actor: Actor = SYSTEM, enforce_booking: bool = False,
                 keep_pseudonym: bool = False) -> None:
        self.site = site
        #: A clinic upload whose ticket carries the project's registry pseudonym (already applied at the clinic,
        #: with the registry's date shift): de-identification keeps the study's Patient ID as the participant
        #: and shifts no date again, so the study joins that person's earlier ones.
        self.keep_pseudonym = keep_pseudonym
        #: Studies from the DICOM edge: one bound to no booking follows ``acquisition.unbooked_studies``
        #: (a release or a folder import names its project and is not held to it).
        self.enforce_booking = enforce_booking
        self.config = site.config
        self.actor = actor
        self.key = site.secret_key()
        self.cache_root = self.config.spool / "ingest" / "deid-cache"
        self.work_root = self.config.spool / "ingest" / "work"
        self._deid_context: Any = None
        #: The step running now, named in an ``UnexpectedFailure``.
        self.step = "read"
        #: The study's T1w refacing fits by frame of reference: its T2w, FLAIR and PD series reuse them.
        self._fits: dict[str, Any] = {}
        self._demographics = demographics.Demographics()  # of the study being archived (_run_study)

    # ---------------------------------------------------------------- steps with other components
    def _context(self, project: str, binding: Any, study: list[Dataset]) -> Any:
        """The de-identification context of one study (its ORIGINAL datasets). A study bound to a booking takes
        the booking's participant label as pseudonym and the registry's date shift; any other study the
        registry's pseudonym and date shift when its person is registered and enrolled in ``project`` (matched by
        record number or name with birth date), else the site's keyed defaults."""
        try:
            from incloud_kernel.deid import DeidContext
        except ImportError:
            raise ChainFailure("deidentify", "the de-identification component is not installed") from None
        if self._deid_context is None:
            self._deid_context = DeidContext.for_site(self.site)
        if binding is not None:
            from incloud_kernel.acquisition.binding import deid_context

            return deid_context(self._deid_context, binding)
        if self.keep_pseudonym:
            import dataclasses

            from incloud_kernel.acquisition.binding import Fixed

            label = {str(ds.get("PatientID", "")) for ds in study}
            if len(label) != 1:
                raise ChainFailure("deidentify", "the instances of one upload name more than one pseudonym")
            return dataclasses.replace(self._deid_context, pseudonym=Fixed(label.pop()), date_offset=Fixed(0))
        try:
            return DeidContext.for_site(self.site, registry_project=project, registry_study=study)
        except NotFound:  # the unassigned inbox before its first study: nobody is enrolled there
            return self._deid_context

    def _bind(self, items: list[tuple[Path, Dataset]]) -> Any:
        """The booking binding of a study, read from its ORIGINAL instances (de-identification replaces the
        accession number and the UIDs); applies ``acquisition.unbooked_studies`` to an edge study without one."""
        from incloud_kernel.acquisition.binding import BindingConflict, find

        try:
            with records.transaction(self.site) as db:
                binding = find(db, self.config, [ds for _, ds in items])
        except BindingConflict as exc:
            raise ChainFailure("bind", str(exc)) from None
        if binding is None and self.enforce_booking and self.config.acquisition.unbooked_studies == "quarantine":
            raise ChainFailure("bind", "the study's accession number and study UID name no booking "
                                       "(acquisition.unbooked_studies = quarantine)")
        return binding

    def _deidentify(self, ds: Dataset, context: Any) -> Dataset:
        """PS3.15 de-identification of one instance in its study's context (``_context``)."""
        from incloud_kernel.deid import BurnedInText, DeidError, deidentify  # _context found the component

        try:
            return deidentify(ds, context)
        except BurnedInText as exc:  # a policy hold, not a failure: the caller decides per series
            raise _HeldBack(str(exc.reason)) from None
        except DeidError as exc:
            raise ChainFailure("deidentify", str(exc)) from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A malformed element: name the error type only (its message could hold a value).
            raise ChainFailure("deidentify", f"malformed instance ({type(exc).__name__})") from None

    def _reface(self, nifti: Path) -> None:
        """Replace the face of an anatomical image in place (``incloud_kernel.deface.reface_image``).

        A scan the refacer cannot handle safely raises DefaceQuarantine: the whole study goes to quarantine.
        """
        try:
            from incloud_kernel.deface.reface import reface_image
        except ImportError:
            raise ChainFailure("reface", "the refacing component is not installed") from None
        d = self.config.deface
        try:
            image = reface_image(nib.load(str(nifti)), min_score=d.min_registration_score, threads=d.threads)
        except IncloudError as exc:
            raise ChainFailure("reface", str(exc)) from None
        tmp = nifti.with_name("refaced.nii.gz")
        nib.save(image, str(tmp))
        os.replace(tmp, nifti)

    def _contrast(self, original: Dataset) -> str | None:
        """The structural head contrast (T1w, T2w, FLAIR, PD) named in the original descriptions, else None."""
        try:
            from incloud_kernel.deface.dicom import contrast_of
        except ImportError:
            return None
        return contrast_of(original)

    def _is_t1w(self, original: Dataset) -> bool:
        """T1w series are fitted first: the study's other structural series reuse the fit."""
        return self._contrast(original) == "T1w"

    def _reface_dicom(self, suid: str, cache: Path, kind: str | None) -> bool:
        """Reface the de-identified instances of a structural series in the cache, in place, BEFORE conversion
        (``incloud_kernel.deface.dicom``): only Pixel Data changes, so no faced de-identified copy is kept.

        A T2w, FLAIR or PD series reuses the fit of the study's T1w in the same frame of reference (re-scored on
        this series), as the refacer cannot fit a non-T1 contrast to its T1w template reliably.
        Returns False (nothing changed) when the series is not one regular 3D stack (localizer, 4D, several
        multi-frame instances): such a series is only refaced later if the naming rules call it anatomical.
        Any other refusal (registration not good enough...) raises ChainFailure: the study is quarantined.
        """
        try:
            from incloud_kernel.deface.dicom import reface_session, write_datasets
            from incloud_kernel.deface.reface import Refacer
        except ImportError:
            raise ChainFailure("reface", "the refacing component is not installed") from None
        d = self.config.deface
        paths = sorted(cache.glob("*.dcm"))
        try:
            result = reface_session({suid: paths}, refacer_factory=lambda: Refacer(
                min_score=d.min_registration_score, threads=d.threads), fits=self._fits, kinds={suid: kind})
        except IncloudError as exc:
            raise ChainFailure("reface", str(exc)) from None
        if suid in result.quarantined:
            if result.quarantined[suid] in ("2d", "4d", "multiframe"):
                return False
            raise ChainFailure("reface", f"the series cannot be refaced safely ({result.quarantined[suid]})")
        ordered = result.series[suid].paths
        staged = [p.with_name(f".{p.stem}.refaced.tmp") for p in ordered]
        write_datasets(result.refaced[suid], staged)
        for tmp, final in zip(staged, ordered):
            os.replace(tmp, final)
        return True

    # ---------------------------------------------------------------- the job
    def run_files(self, paths: Iterable[Path], project: str, *, job_id: str,
                  unread: list[Path] | None = None) -> list[StudyOutcome]:
        """Ingest every study found among ``paths`` into ``project``; raises ChainFailure on the first failure.

        Files that are not DICOM instances are appended to ``unread`` when given (see ``read_instances``)."""
        self.step = "read"
        try:
            instances = read_instances(paths, unread)
        except Exception as exc:  # noqa: BLE001 - any fault of one study is that study's, never the worker's
            raise UnexpectedFailure("read", exc) from None
        if not instances:
            raise ChainFailure("read", "no DICOM instances found")
        by_study: dict[str, list[tuple[Path, Dataset]]] = {}
        for path, ds in instances:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append((path, ds))
        return [self.run_study(items, project, job_id=job_id) for items in by_study.values()]

    def run_study(self, items: list[tuple[Path, Dataset]], project: str, *, job_id: str) -> StudyOutcome:
        """One study, all or nothing; a ChainFailure names the step, any other exception becomes an
        ``UnexpectedFailure`` of the step it happened in (its message never quoted)."""
        self.step = "prepare"
        try:
            work = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=private_dir(self.work_root)))
            try:
                return self._run_study(items, project, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        except ChainFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - SimpleITK, database, disk full...: quarantined, not fatal
            raise UnexpectedFailure(self.step, exc) from None

    def _run_study(self, items: list[tuple[Path, Dataset]], project: str, work: Path) -> StudyOutcome:
        # 1. de-identify every instance; keep what naming rules need from the original, in memory only.
        series_files: dict[str, dict[str, Path]] = {}
        facts_src: dict[str, Dataset] = {}
        first_deid: Dataset | None = None
        held: dict[str, HeldBack] = {}  # original SeriesInstanceUID -> instances held back (burned-in text)
        passed: set[str] = set()  # original SeriesInstanceUIDs with at least one de-identified instance
        received: list[Path] = []  # files of de-identified instances: each ends in an archived series
        self.step = "bind"
        binding = self._bind(items)
        if binding is not None:  # the booking's project and participant, whatever the routing said
            project = binding.project
        context = self._context(project, binding, [ds for _, ds in items])
        self.step = "deidentify"
        for path, ds in items:
            try:
                clean = self._deidentify(ds, context)
            except _HeldBack as hb:
                entry = held.setdefault(str(ds.SeriesInstanceUID), HeldBack([], hb.reason))
                entry.paths.append(path)
                continue
            passed.add(str(ds.SeriesInstanceUID))
            received.append(path)
            first_deid = first_deid or clean
            suid, iuid = str(clean.SeriesInstanceUID), str(clean.SOPInstanceUID)
            if not re.match(r"^[0-9.]+$", suid) or not re.match(r"^[0-9.]+$", iuid):
                raise ChainFailure("deidentify", "de-identified UIDs are not valid DICOM UIDs")
            folder = private_dir(work / "deid" / suid)
            target = folder / f"{iuid}.dcm"
            clean.save_as(target, enforce_file_format=True)
            series_files.setdefault(suid, {})[iuid] = target
            facts_src.setdefault(suid, ds)
        # A whole series held back for burned-in text (a secondary capture, a screen save) is quarantined on its
        # own and the rest archived; a series only partly held back, or a study with nothing left, is not
        # archived at all (never half a series). Any other de-identification failure raised ChainFailure above.
        if held.keys() & passed:
            raise ChainFailure("deidentify", "a series has instances held back for burned-in text and others not")
        if first_deid is None:
            reasons = sorted({h.reason for h in held.values()})
            raise ChainFailure("deidentify", "every instance was held back: " + "; ".join(reasons))
        self._demographics = demographics.from_dicom(first_deid)  # only what the de-identification kept
        self.step = "archive"
        participant, scoped = self._resolve_participant(
            project, binding.participant if binding is not None else self._participant_label(first_deid))
        session = _label("s", self.key, "session:" + str(first_deid.StudyInstanceUID), 8)
        outcome = StudyOutcome(project=project, participant=participant, session=session,
                               held_back=list(held.values()),
                               booking=binding.booking_id if binding is not None else None)
        if scoped:  # the same study may already be archived in the participant's first project: own series keys
            series_files = {self._scoped_uid(project, suid): files for suid, files in series_files.items()}
            facts_src = {self._scoped_uid(project, suid): ds for suid, ds in facts_src.items()}
        for entry in outcome.held_back:
            log.info("%d instance(s) of one series held back (%s); quarantined, the rest of the study goes on",
                     len(entry.paths), entry.reason)
        # 2. per series: merge into the de-identified cache, convert, name, reface -- all before archiving,
        #    so that a failing series keeps the whole study out of the archive.
        #    Instances this run adds to the cache are removed again if the study fails (or needs no archiving).
        #    T1w series are prepared first, so the study's other structural series reuse their refacing fit
        #    (same scanner coordinates); everything is archived in series-number order.
        added: dict[str, list[Path]] = {}
        by_number = sorted(series_files, key=lambda s: _series_number(facts_src[s]))
        try:
            ready: dict[str, _Prepared | SeriesOutcome] = {}
            for suid in sorted(by_number, key=lambda s: not self._is_t1w(facts_src[s])):
                ready[suid] = self._prepare_series(suid, series_files[suid], facts_src[suid], work,
                                                   added.setdefault(suid, []))
            prepared = [ready[suid] for suid in by_number]
            # 3. archive every series of the study in ONE transaction (all or nothing: a failure rolls back the
            #    rows and removes the files written), then back up and remember which instances the archive holds.
            done: list[_Prepared] = []
            self.step = "archive"
            with records.transaction(self.site) as db:
                for item in prepared:
                    if isinstance(item, SeriesOutcome):
                        outcome.series.append(item)
                        continue
                    result = self._archive(db, item.suid, item.name, item.params, item.payload, outcome,
                                           item.original, item.existing)
                    done.append(item)
                    outcome.series.append(result)
                if binding is not None and done:
                    self._check_protocol(db, binding, done, outcome.series)
            self.step = "backup"
            self._backup([relpath for s in outcome.series for relpath in s.relpaths])
            for item in done:
                self._mark_archived(item)
                added.pop(item.suid, None)
            outcome.accounted = received
        finally:
            self._fits = {}  # a fit holds its last refaced volume: do not keep it past the study
            for suid, paths in added.items():
                self._drop_from_cache(suid, paths)
        return outcome

    def _check_protocol(self, db: Any, binding: Any, done: list[_Prepared], results: list[SeriesOutcome]) -> None:
        """In the archive transaction of a bound study: mark its booking acquired and compare each archived
        series (not those under sourcedata/) with the booked protocol versions (``acquisition.compliance``)."""
        from incloud_kernel.acquisition import binding as bindings
        from incloud_kernel.acquisition import compliance

        by_suid = {r.series_uid: r for r in results}
        booking = bindings.acquired(db, binding, [by_suid[i.suid].series_id for i in done])
        if booking is None:
            return
        for item in done:
            result = by_suid[item.suid]
            series = db.get(Series, result.series_id)
            if series is None or item.name.datatype == records.SOURCEDATA:
                continue
            sidecar = json.loads(item.payload["json"])
            acquired = compliance.acquired_parameters(sidecar, item.params,
                                                      compliance.read_bvals(item.payload.get("bval")),
                                                      compliance.header_facts(item.original))
            result.verdict = compliance.check_series(db, booking, series, acquired).verdict

    def _mark_archived(self, item: _Prepared) -> None:
        """Record which instances the archive holds. A refaced series does not keep its de-identified DICOM:
        those instances still show the face, so they are removed once the refaced image is archived."""
        tmp = item.cache / f".{ARCHIVED_MARKER}.tmp"
        tmp.write_text(json.dumps({"instances": sorted(item.cached), "cache_kept": not item.refaced}))
        os.replace(tmp, item.cache / ARCHIVED_MARKER)
        if item.refaced:
            for path in item.cache.glob("*.dcm"):
                path.unlink(missing_ok=True)

    def _drop_from_cache(self, suid: str, paths: list[Path]) -> None:
        """Remove instances a failed or no-op run copied into the cache (and the folder if nothing is left)."""
        for path in paths:
            path.unlink(missing_ok=True)
        folder = self.cache_root / suid
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass

    @staticmethod
    def _read_marker(cache: Path) -> tuple[set[str], bool]:
        """(instance UIDs the archive holds, whether the cache keeps them); older markers are a bare list."""
        marker = cache / ARCHIVED_MARKER
        if not marker.exists():
            return set(), True
        data = json.loads(marker.read_text())
        if isinstance(data, list):
            return set(data), True
        return set(data.get("instances", [])), bool(data.get("cache_kept", True))

    def _resolve_participant(self, project: str, label: str) -> tuple[str, bool]:
        """The participant label of this study in ``project`` and whether it is project-scoped.

        Labels are unique across the archive (one BIDS dataset), so the same pseudonymised person already
        archived in ANOTHER project gets, in this project, a label of its own (a keyed hash of project and
        pseudonym: stable for later studies, and not linkable to the first project's label by its members)."""
        with records.transaction(self.site) as db:
            row = db.scalar(select(Participant).where(Participant.label == label))
            if row is None:
                return label, False
            owner = db.get(Project, row.project_id)
            if owner is not None and owner.code == project:
                return label, False
        return _label("p", self.key, f"participant:{project}:{label}"), True

    def _scoped_uid(self, project: str, suid: str) -> str:
        """The archive key (``Series.series_uid``, cache folder) of a series archived for a project-scoped
        participant: a UUID-derived UID (PS3.5 B.2) of project and series, so the same study archived in two
        projects keeps two series (the DICOM files keep the de-identified UIDs)."""
        digest = hmac.new(self.key, f"series:{project}:{suid}".encode(), hashlib.sha256).digest()[:16]
        return "2.25." + str(int.from_bytes(digest, "big"))

    def _participant_label(self, clean: Dataset) -> str:
        pid = re.sub(r"[^A-Za-z0-9]", "", str(clean.get("PatientID", "") or ""))
        if pid and len(pid) <= 64:
            return pid
        return _label("p", self.key, "participant:" + str(clean.StudyInstanceUID))

    def _prepare_series(self, suid: str, files: dict[str, Path], original: Dataset, work: Path,
                        added: list[Path]) -> _Prepared | SeriesOutcome:
        self.step = "cache"
        cache = private_dir(self.cache_root / suid)
        archived_uids, cache_kept = self._read_marker(cache)
        for iuid, path in files.items():
            dest = cache / f"{iuid}.dcm"
            if not dest.exists():
                tmp = cache / f".{iuid}.tmp"
                shutil.copyfile(path, tmp)
                os.replace(tmp, dest)
                added.append(dest)
        cached = {p.stem for p in cache.glob("*.dcm")}
        existing = self._existing_series(suid)
        if existing is not None and existing[1] and cached <= archived_uids:
            return SeriesOutcome(suid, "unchanged", existing[0])  # the finally of _run_study drops ``added``
        if existing is not None and existing[1] and not cache_kept and not archived_uids <= cached:
            # A refaced series keeps no faced de-identified instances, so late instances can only be merged
            # when the whole series is sent again.
            raise ChainFailure("merge", "late instances for a refaced series; send the whole series again")
        # Structural series are refaced as DICOM before conversion (de-identify -> reface -> dcm2niix): the
        # cache then only ever keeps refaced instances. A merge refaces the whole merged series again.
        kind = self._contrast(original)
        self.step = "reface"
        refaced_dicom = bool(self.config.ingest.reface and kind and self._reface_dicom(suid, cache, kind))
        # Convert everything cached for the series (a merge reconverts with the late instances).
        self.step = "convert"
        out = work / "nii" / suid
        try:
            converted: Converted | None = convert_series(cache, out, list(self.config.ingest.dcm2niix_args))
        except ConversionError as exc:
            # Never dropped: a series dcm2niix cannot convert (a dose report, a PDF, ...) is archived under
            # sourcedata/ as its de-identified DICOM only, with the (value-free) reason in its sidecar.
            log.info("a series could not be converted (%s); archived as DICOM under sourcedata/", exc)
            return self._sourcedata(suid, original, existing, cache, cached, None, {"ConversionError": str(exc)})
        image = nib.load(str(converted.nifti))
        volumes = int(image.shape[3]) if len(image.shape) > 3 else 1
        sidecar = json.loads(converted.sidecar.read_text())
        facts = SeriesFacts(
            series_description=_clean_text(original.get("SeriesDescription")),
            protocol_name=_clean_text(original.get("ProtocolName")),
            image_type=tuple(str(v) for v in (original.get("ImageType") or [])),
            volumes=volumes,
            repetition_time=sidecar.get("RepetitionTime"),
            has_bvals=converted.bval is not None,
        )
        self.step = "name"
        name = classify(facts, list(self.config.ingest.bids_rules))
        if name is None:
            if self.config.ingest.unmatched == "quarantine":
                raise ChainFailure("name", "a series matches no BIDS naming rule")
            log.info("a series matches no BIDS naming rule: archived under sourcedata/")
            return self._sourcedata(suid, original, existing, cache, cached, converted, sidecar)
        # Fallback: an anatomical series (by the naming rules) not refaced as DICOM is refaced as NIfTI; its
        # cache then still shows the face and is removed once the series is archived (``_mark_archived``).
        refaced = bool(name.anatomical and self.config.ingest.reface and not refaced_dicom)
        if refaced:
            self.step = "reface"
            self._reface(converted.nifti)
        if name.datatype == "func" and "TaskName" not in sidecar:
            sidecar["TaskName"] = name.entities.get("task", "rest")
        payload: dict[str, Any] = {"nii.gz": converted.nifti,
                                   "json": json.dumps(sidecar, indent=2, sort_keys=True).encode()}
        if name.datatype == "dwi" and converted.bval and converted.bvec:
            payload["bval"], payload["bvec"] = converted.bval, converted.bvec
        params = _params(sidecar, image, len(cached))
        return _Prepared(suid, name, params, payload, original, existing, cache, cached, refaced)

    def _sourcedata(self, suid: str, original: Dataset, existing: tuple[int, bool] | None, cache: Path,
                    cached: set[str], converted: Converted | None, sidecar: dict[str, Any]) -> _Prepared:
        """A series no BIDS rule names (or dcm2niix cannot convert), prepared for ``sourcedata/``: its
        de-identified (and, for a structural contrast, refaced) DICOM instances from the cache plus the dcm2niix
        NIfTI and sidecar (bval/bvec too) when there is one. Named ``<modality>`` with ``acq-series<number>``
        (SeriesNumber is a console counter, no header text goes into a name)."""
        modality = str(original.get("Modality", "") or "")
        modality = modality if re.fullmatch(r"[A-Z0-9]{1,16}", modality) else "OT"
        number = _series_number(original)
        entities = {"acq": f"series{number}"} if number > 0 else {}
        name = BidsName(records.SOURCEDATA, modality, entities)
        payload: dict[str, Any] = {f"dicom/{iuid}.dcm": cache / f"{iuid}.dcm" for iuid in sorted(cached)}
        payload["json"] = json.dumps(sidecar, indent=2, sort_keys=True).encode()
        params: dict[str, Any] = {"Instances": len(cached)}
        if converted is not None:
            payload["nii.gz"] = converted.nifti
            for key, path in (("bval", converted.bval), ("bvec", converted.bvec)):
                if path is not None:
                    payload[key] = path
            params = _params(sidecar, nib.load(str(converted.nifti)), len(cached))
        else:
            params["Converted"] = False
        return _Prepared(suid, name, params, payload, original, existing, cache, cached, False)

    # ---------------------------------------------------------------- archive
    def _existing_series(self, suid: str) -> tuple[int, bool] | None:
        with records.transaction(self.site) as db:
            row = db.scalar(select(Series).where(Series.series_uid == suid))
            if row is None:
                return None
            has_files = db.scalar(select(DataFile.id).where(DataFile.series_id == row.id).limit(1)) is not None
            return row.id, has_files

    def _archive(self, db: Any, suid: str, name: BidsName, params: dict[str, Any], payload: dict[str, Any],
                 study: StudyOutcome, original: Dataset, existing: tuple[int, bool] | None) -> SeriesOutcome:
        """Add (or merge) one series in the study's ``records.transaction`` ``db``."""
        status = "archived"
        project = db.scalar(select(Project).where(Project.code == study.project))
        if project is None:
            if study.project != self.config.dicom.unassigned_project:
                raise ChainFailure("archive", f"project {study.project} does not exist")
            project = create_project(db, self.actor, study.project, "Unassigned inbox",
                                     "Studies no routing rule assigned; a coordinator moves them.")
        facts = self._demographics
        participant = db.scalar(select(Participant).where(Participant.label == study.participant))
        if participant is None:
            participant = records.add_participant(db, self.actor, project, study.participant,
                                                  **({"sex": facts.sex} if facts.sex else {}))
        elif participant.project_id != project.id:
            raise ChainFailure("archive", "participant already belongs to another project")
        elif facts.sex and not participant.sex:
            records.update_participant(db, self.actor, participant, sex=facts.sex)
        session = db.scalar(select(Session).where(Session.participant_id == participant.id,
                                                  Session.label == study.session))
        if session is None:
            session = records.add_session(db, self.actor, participant, study.session,
                                          age_at_scan=facts.age_at_scan, scanner=facts.scanner)
        else:  # a later part of the study: fill what the first part did not say, never overwrite
            session.age_at_scan = session.age_at_scan if session.age_at_scan is not None else facts.age_at_scan
            session.scanner = session.scanner or facts.scanner
        # Series row, file rows and audit events commit together (records.register_series /
        # replace_files in this transaction); a failure removes the files written, a crash leaves only
        # orphan files for the sweeper -- never a series without its files.
        if existing is None:
            series, rows = self._add_series_with_run(db, session, name, dict(name.entities), params, suid,
                                                     original, payload)
        else:
            series = db.get(Series, existing[0])
            assert series is not None
            if existing[1]:  # merge: the reconverted files replace the old ones, rows swapped in one commit
                series.params = params
                rows = records.replace_files(self.site, self.actor, series, payload, db=db)
                status = "merged"
            else:  # a series row without files (left by an older release): give it its files
                rows = records.add_files(self.site, self.actor, series, payload, db=db,
                                         overwrite_unrecorded=True)
        audit(db, self.actor, "series.ready_for_qc", "series", series.id)
        series_id, stem = series.id, records.bids_stem(series)
        relpaths = [r.relpath for r in rows]
        return SeriesOutcome(suid, status, series_id, relpaths, Path(stem).name)

    def _add_series_with_run(self, db: Any, session: Session, name: BidsName, entities: dict[str, str],
                             params: dict[str, Any], suid: str, original: Dataset,
                             payload: dict[str, Any]) -> tuple[Series, list[DataFile]]:
        """Add the series; a second series with the same BIDS name in the session gets ``run-2``, ``run-3``..."""
        same = [s for s in db.scalars(select(Series).where(Series.session_id == session.id,
                                                           Series.datatype == name.datatype,
                                                           Series.suffix == name.suffix))
                if {k: v for k, v in (s.entities or {}).items() if k != "run"} == entities]
        if same:
            entities = {**entities, "run": str(len(same) + 1)}
        modality = str(original.get("Modality", "MR") or "MR")
        modality = modality if re.match(r"^[A-Z0-9]{1,16}$", modality) else "MR"
        return records.register_series(self.site, self.actor, db, session, name.datatype, name.suffix, payload,
                                       entities, params, modality=modality, series_uid=suid)

    def _backup(self, relpaths: list[str]) -> None:
        """Run the site's backup hook with the new archive-relative paths; a failing hook is logged, not fatal."""
        command = self.config.ingest.backup_command.strip()
        if not command or not relpaths:
            return
        try:
            result = subprocess.run([*shlex.split(command), *relpaths], cwd=self.site.archive_root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            if result.returncode != 0:
                log.warning("backup hook exited with status %d", result.returncode)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("backup hook failed: %s", type(exc).__name__)
