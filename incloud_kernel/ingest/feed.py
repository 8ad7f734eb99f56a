"""The durable hand-off: follow Orthanc's change feed (StableStudy) from a persisted cursor, run the chain for
each stable study, and delete from Orthanc exactly the instances taken, only after the archive committed (or the
study was quarantined).

The cursor is a file written atomically (temp, fsync, rename) after each change is fully handled, so a restart
(even after SIGKILL) resumes at the first unhandled change; the chain is idempotent, so a change handled twice
stores nothing new. A sweep of stable studies catches what a restarted Orthanc no longer announces. One worker
per site (a lock file). Never logs a header value; logs name job ids and Orthanc resource ids only.

Any failure of one study is that study's, never the worker's: a data problem (``ChainFailure``) quarantines it at
once; any other exception (disk full, database down, a library crash) and a worker that died during its job count
as failed attempts, retried with exponential back-off (``ingest.retry_backoff``) up to ``ingest.max_attempts``,
then quarantined with the exception's class and a value-free message. Orthanc keeps a study until every instance
taken from it is archived or quarantined (``_account``); only then are they deleted, in one call.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from incloud_kernel.dicom.orthanc_client import OrthancClient, OrthancUnavailable
from incloud_kernel.dicom.routing import route_study
from incloud_kernel.errors import IncloudError
from incloud_kernel.ingest.chain import ChainFailure, IngestChain, StudyOutcome, UnexpectedFailure
from incloud_kernel.ingest.quarantine import quarantine_held_back, quarantine_study
from incloud_kernel.site import Site, private_dir

log = logging.getLogger(__name__)


class WorkerBusy(IncloudError):
    """Another ingest worker already runs for this site."""


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class IngestPaths:
    root: Path

    @classmethod
    def of(cls, site: Site) -> IngestPaths:
        return cls(site.config.spool / "ingest")

    @property
    def cursor(self) -> Path:
        return self.root / "cursor.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def lock(self) -> Path:
        return self.root / "worker.lock"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def retries(self) -> Path:
        return self.root / "retries.json"


class Retries:
    """Failed attempts per Orthanc study (count, next try, last reason), persisted so that a study that kills
    the worker is not retried without bound across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, study_id: str) -> dict[str, Any]:
        return dict(self.load().get(study_id) or {})

    def failed(self, study_id: str, *, step: str, reason: str, backoff: float) -> int:
        """Record one failed attempt; returns the number of failed attempts so far."""
        data = self.load()
        entry = data.get(study_id) or {"failures": 0}
        entry["failures"] = int(entry.get("failures", 0)) + 1
        entry.update(step=step, reason=reason, at=time.time(),
                     next=time.time() + backoff * 2 ** (entry["failures"] - 1))
        data[study_id] = entry
        _atomic_json(self.path, data)
        return int(entry["failures"])

    def clear(self, study_id: str) -> None:
        data = self.load()
        if data.pop(study_id, None) is not None:
            _atomic_json(self.path, data)

    def due(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return [sid for sid, e in self.load().items() if float(e.get("next", 0)) <= now]


class Cursor:
    """The last change sequence number fully handled, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["last"])
        except (OSError, ValueError, KeyError):
            return 0

    def save(self, seq: int) -> None:
        _atomic_json(self.path, {"last": seq, "at": time.time()})


class Journal:
    """One small JSON file per job: state (running, archived, unchanged, quarantined, interrupted), counts, reason,
    the worker (pid, host) and its last heartbeat while running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()  # the worker's heartbeat thread writes too

    def write(self, job_id: str, *, only_if_running: bool = False, **fields: Any) -> None:
        path = self.folder / f"{job_id}.json"
        with self._lock:
            data: dict[str, Any] = {}
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                except ValueError:
                    data = {}
            if only_if_running and data.get("state") != "running":
                return
            data.update(fields, job_id=job_id, updated=time.time())
            _atomic_json(path, data)

    def all(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def job_state(job: dict[str, Any], heartbeat_interval: float, now: float | None = None) -> str:
    """The state to show for a journal entry: a ``running`` job whose worker is gone is ``interrupted``.

    Gone means: the recorded worker pid no longer exists on this host, or (any host) the last heartbeat is older
    than three ``heartbeat_interval`` seconds. Entries without worker data (older journals) use the heartbeat
    or, failing that, the ``updated`` time.
    """
    state = str(job.get("state", "?"))
    if state != "running":
        return state
    worker = job.get("worker") or {}
    if worker.get("host") == socket.gethostname() and isinstance(worker.get("pid"), int):
        if not _pid_alive(worker["pid"]):
            return "interrupted"
    beat = float(job.get("heartbeat") or job.get("updated") or 0)
    if (now or time.time()) - beat > 3 * max(heartbeat_interval, 0.1):
        return "interrupted"
    return "running"


class _Heartbeat:
    """Writes ``heartbeat`` into a running job's journal entry every interval, from a daemon thread."""

    def __init__(self, journal: Journal, job_id: str, interval: float) -> None:
        self.journal, self.job_id, self.interval = journal, job_id, max(interval, 0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.journal.write(self.job_id, only_if_running=True, heartbeat=time.time())
            except OSError:
                log.warning("job %s: cannot write heartbeat", self.job_id)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


class IngestWorker:
    """Follows the feed of one Orthanc and ingests its stable studies."""

    def __init__(self, site: Site, client: OrthancClient | None = None) -> None:
        self.site = site
        self.config = site.config
        self.client = client or OrthancClient.for_site(site.config)
        self.paths = IngestPaths.of(site)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.paths.root, 0o700)
        self.cursor = Cursor(self.paths.cursor)
        self.journal = Journal(self.paths.jobs)
        self.retries = Retries(self.paths.retries)
        self.chain = IngestChain(site, enforce_booking=True)
        self._lock_fh: Any = None
        self._interrupted: dict[str, str] = {}
        self.stop_event = threading.Event()

    def acquire(self) -> None:
        self._lock_fh = open(self.paths.lock, "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise WorkerBusy(f"another ingest worker holds {self.paths.lock}") from None
        self._take_over_interrupted()

    def _take_over_interrupted(self) -> None:
        """Holding the site's worker lock, every job still marked ``running`` belongs to a dead worker: mark it
        ``interrupted``. Its study is still in Orthanc (deleted only after a commit) and its change was not
        acknowledged in the cursor, so this worker ingests it again (the chain is idempotent); the new job
        records ``retry_of``."""
        for job in self.journal.all():
            if job.get("state") != "running":
                continue
            worker = job.get("worker") or {}
            self.journal.write(job["job_id"], state="interrupted", finished=time.time(),
                               reason=f"worker pid {worker.get('pid', '?')} stopped before the job finished; "
                                      "the study is ingested again")
            study_id = str(job.get("orthanc_study") or "")
            try:
                gone = not study_id or self.client.study(study_id) is None
            except OrthancUnavailable:
                gone = False  # cannot tell now: keep it for a retry
            if gone:  # it died after the study left Orthanc (archived or quarantined): nothing to redo
                self.journal.write(job["job_id"], resolved="study no longer in Orthanc")
            else:
                self._interrupted[study_id] = str(job["job_id"])
                # A study that kills its worker (a crash in a library, the OOM killer) must not do so forever.
                self.retries.failed(study_id, step=str(job.get("step") or "unknown"),
                                    reason="WorkerGone: the worker stopped during the job", backoff=0)
            log.warning("job %s was interrupted (worker gone); its study is ingested again", job["job_id"])

    # ------------------------------------------------------------------ one study
    def handle_study(self, study_id: str) -> str:
        """Ingest one Orthanc study; returns the job state. Deletes only the instances it took, once each is
        archived or quarantined. Never raises for a fault of the study (only ``OrthancUnavailable``, which the
        caller waits out): such a fault is retried later or quarantined (see the module docstring)."""
        pending = self.retries.get(study_id)
        if pending and float(pending.get("next", 0)) > time.time():
            return "waiting"  # backing off; ``retry_due`` takes it up when due
        job_id = f"job-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        try:
            instance_ids = self.client.study_instances(study_id)
            if not instance_ids:
                self.retries.clear(study_id)
                return "gone"
            now = time.time()
            retry_of = self._interrupted.pop(study_id, None)
            self.journal.write(job_id, state="running", orthanc_study=study_id, instances=len(instance_ids),
                               started=now, heartbeat=now,
                               worker={"pid": os.getpid(), "host": socket.gethostname()},
                               **({"retry_of": retry_of} if retry_of else {}),
                               **({"attempt": int(pending["failures"]) + 1} if pending else {}))
            if retry_of:
                self.journal.write(retry_of, retried_by=job_id)
            with _Heartbeat(self.journal, job_id, self.config.ingest.heartbeat_interval):
                return self._handle(study_id, job_id, instance_ids, pending)
        except OrthancUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the journal or the quarantine cannot be written (disk full...)
            failure = UnexpectedFailure("worker", exc)
            log.error("job %s: %s; the study stays in Orthanc and is tried again", job_id, failure.reason)
            try:
                self.retries.failed(study_id, step=failure.step, reason=failure.reason,
                                    backoff=self.config.ingest.retry_backoff)
            except OSError:
                pass  # nothing can be written: the sweep meets the study again
            return "failed"

    def _handle(self, study_id: str, job_id: str, instance_ids: list[str], pending: dict[str, Any]) -> str:
        download = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=private_dir(self.paths.downloads)))
        try:
            files: list[Path] = []
            taken: list[str] = []
            for i, instance_id in enumerate(instance_ids):
                target = download / f"{i:06d}.dcm"
                if self.client.download_instance(instance_id, target):
                    files.append(target)
                    taken.append(instance_id)
            if not files:
                self.journal.write(job_id, state="gone")
                self.retries.clear(study_id)
                return "gone"
            max_attempts = self.config.ingest.max_attempts
            if pending and int(pending.get("failures", 0)) >= max_attempts:
                # e.g. the worker died in each of its attempts: no further try, quarantined with the last reason
                return self._quarantine(study_id, job_id, files, taken, ChainFailure(
                    str(pending.get("step") or "unknown"),
                    f"{pending.get('reason', 'failed')} (after {pending.get('failures')} attempts)"))
            unread: list[Path] = []
            try:
                self.chain.step = "route"
                calling = self.client.instance_metadata(taken[0], "RemoteAET")
                called = self.client.instance_metadata(taken[0], "CalledAET")
                first = pydicom.dcmread(files[0], stop_before_pixels=True)
                route = route_study(list(self.config.dicom.routing), self.config.dicom.unassigned_project,
                                    calling_aet=calling, called_aet=called, dataset=first)
                del first
                self.journal.write(job_id, project=route.project, routed_by_rule=route.rule)
                outcomes = self.chain.run_files(files, route.project, job_id=job_id, unread=unread)
            except OrthancUnavailable:
                raise
            except ChainFailure as exc:
                return self._failed(study_id, job_id, files, taken, exc)
            except Exception as exc:  # noqa: BLE001 - routing, reading...: the study's fault, not the worker's
                return self._failed(study_id, job_id, files, taken, UnexpectedFailure(self.chain.step, exc))
            held = quarantine_held_back(self.config.quarantine, job_id, outcomes, source=f"orthanc:{study_id}")
            if unread:
                held.append(quarantine_study(self.config.quarantine, f"{job_id}-unread", unread, step="read",
                                             reason="not a readable DICOM instance (or no study, series or "
                                                    "instance UID)", source=f"orthanc:{study_id}"))
            self._account(files, outcomes, unread)
            self.client.delete_instances(taken)  # every instance archived or quarantined: Orthanc may let go
            self.retries.clear(study_id)
            stored = any(o.stored_anything for o in outcomes)
            state = "archived" if stored else "unchanged"
            self.journal.write(job_id, state=state, finished=time.time(),
                               held_back=sum(len(h.paths) for o in outcomes for h in o.held_back),
                               unread=len(unread), quarantined=[p.name for p in held],
                               series=[{"series_id": s.series_id, "status": s.status, "name": s.name}
                                       for o in outcomes for s in o.series])
            log.info("job %s %s: %d instance(s), %d series", job_id, state, len(taken),
                     sum(len(o.series) for o in outcomes))
            return state
        finally:
            shutil.rmtree(download, ignore_errors=True)

    @staticmethod
    def _account(files: list[Path], outcomes: list[StudyOutcome], unread: list[Path]) -> None:
        """Every file taken is in exactly one place: an archived (or already archived) series, a held-back
        series or the unread entry. Anything else is a bug; it raises, so Orthanc keeps the study."""
        placed = [p for o in outcomes for p in o.accounted] + [p for o in outcomes for h in o.held_back
                                                                 for p in h.paths] + list(unread)
        if sorted(placed) != sorted(files):
            raise ChainFailure("account", f"{len(files)} instance(s) taken, {len(placed)} accounted for")

    def _failed(self, study_id: str, job_id: str, files: list[Path], taken: list[str], exc: ChainFailure) -> str:
        """A data problem is quarantined at once; an unexpected failure is retried with back-off until
        ``ingest.max_attempts`` attempts failed, then quarantined. The study stays in Orthanc meanwhile."""
        if exc.retryable:
            failures = self.retries.failed(study_id, step=exc.step, reason=exc.reason,
                                           backoff=self.config.ingest.retry_backoff)
            if failures < self.config.ingest.max_attempts:
                entry = self.retries.get(study_id)
                self.journal.write(job_id, state="failed", step=exc.step, reason=exc.reason, attempt=failures,
                                   retry_at=entry.get("next"), finished=time.time())
                log.warning("job %s failed at step %s (%s); attempt %d of %d, retried later", job_id, exc.step,
                            exc.reason, failures, self.config.ingest.max_attempts)
                return "failed"
            exc = ChainFailure(exc.step, f"{exc.reason} (after {failures} attempts)")
        return self._quarantine(study_id, job_id, files, taken, exc)

    def _quarantine(self, study_id: str, job_id: str, files: list[Path], taken: list[str],
                    exc: ChainFailure) -> str:
        quarantine_study(self.config.quarantine, job_id, files, reason=exc.reason, step=exc.step,
                         source=f"orthanc:{study_id}")
        self.client.delete_instances(taken)  # only once the quarantine holds every instance taken
        self.retries.clear(study_id)
        self.journal.write(job_id, state="quarantined", step=exc.step, reason=exc.reason, finished=time.time())
        log.warning("job %s quarantined at step %s: %s", job_id, exc.step, exc.reason)
        return "quarantined"

    def retry_due(self) -> int:
        """Handle the studies whose back-off has run out (their change was already consumed)."""
        handled = 0
        for study_id in self.retries.due():
            if self.stop_event.is_set():
                break
            self.handle_study(study_id)
            handled += 1
        return handled

    # ------------------------------------------------------------------ the feed
    def poll_once(self) -> int:
        """Handle every change after the cursor; returns the number of studies handled."""
        handled = 0
        since = self.cursor.load()
        while not self.stop_event.is_set():
            changes, last, done = self.client.changes(since)
            for change in changes:
                if change.change_type == "StableStudy":
                    self.handle_study(change.resource_id)
                    handled += 1
                self.cursor.save(change.seq)
                since = change.seq
                if self.stop_event.is_set():
                    return handled
            if not changes:
                if last > since:
                    self.cursor.save(last)
                    since = last
            if done:
                break
        return handled

    def sweep(self) -> int:
        """Ingest stable studies the feed did not announce (e.g. Orthanc restarted before they became stable)."""
        handled = 0
        for study_id in list(self.client.iter_stable_studies()):
            if self.stop_event.is_set():
                break
            self.handle_study(study_id)
            handled += 1
        return handled

    def run_forever(self) -> None:
        """Poll until ``stop_event`` is set; Orthanc being down is waited out, and no other failure (one
        study's are handled in ``handle_study``; the cursor or journal unwritable...) stops the worker."""
        self.acquire()
        polls = 0
        while not self.stop_event.is_set():
            try:
                if polls % max(1, self.config.ingest.sweep_every) == 0:
                    self.sweep()
                self.poll_once()
                self.retry_due()
            except OrthancUnavailable as exc:
                log.warning("%s; retrying", exc)
            except Exception as exc:  # noqa: BLE001 - log the class only (a message could hold a value)
                log.error("feed step failed (%s); retrying", UnexpectedFailure("feed", exc).reason)
            polls += 1
            self.stop_event.wait(self.config.ingest.poll_interval)
