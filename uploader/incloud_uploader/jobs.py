"""One upload job of the local program: per chosen study, a server ticket, local preparation, the user's
confirmation, the resumable upload, and the server's archive outcome.

A job's state lives in the work folder, one folder per study named by a keyed hash (never the study's UID):
``state.json`` (ticket, this upload's UID key, the acknowledged SOP UIDs, refusals) and ``outbox/`` (the
de-identified, refaced instances and the QC renders). A restarted program that is pointed at the same input
and the same series finds them and resumes: same ticket, same new UIDs, only unsent instances are sent.
The work folder holds no identified file; its state file holds the UID key: keep the folder private.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incloud_kernel.ingest.followup import SETTLED

from incloud_uploader import prepare, send
from incloud_uploader.scan import FoundSeries


@dataclass
class StudyJob:
    """One study of the selection."""

    key: str
    folder: Path
    series: list[FoundSeries]
    state: send.State
    prepared: list[prepare.Prepared] = field(default_factory=list)
    phase: str = "waiting"  # waiting, preparing, confirm, uploading, completing, ingesting, archived, ...
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    series_phase: dict[str, str] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {"key": self.key, "phase": self.phase, "message": self.message, "progress": self.progress,
                "series": [{"key": s.key, "description": s.description, "images": s.images,
                            "phase": self.series_phase.get(s.key, ""),
                            "blocked": next((p.blocked for p in self.prepared if p.key == s.key), s.blocked),
                            "refaced": any(p.refaced for p in self.prepared if p.key == s.key),
                            "qc": any(p.qc_png for p in self.prepared if p.key == s.key),
                            "ready": sum(len(p.files) for p in self.prepared if p.key == s.key)}
                           for s in self.series]}


class Uploader:
    """The local program's work: the API client, the work folder, the jobs. Methods run in worker threads."""

    def __init__(self, api: send.Api, workdir: Path) -> None:
        self.api = api
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        secret = workdir / "local.key"
        if not secret.exists():
            secret.write_bytes(secrets.token_bytes(32))
        self._secret = secret.read_bytes()
        self.jobs: list[StudyJob] = []
        self.error = ""
        self._confirmed = threading.Event()
        self._lock = threading.Lock()
        #: Seconds between looks at the server's processing of an uploaded study (longer during a QC review).
        self.poll, self.review_poll = 2.0, 15.0

    def folder_for(self, series: list[FoundSeries]) -> Path:
        """The study's work folder: a keyed hash of its study UID and the chosen series (never the UIDs)."""
        text = "|".join([series[0].study_uid, *sorted(s.series_uid for s in series)])
        return self.workdir / "uploads" / hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:20]

    def start(self, chosen: list[FoundSeries], project: str) -> None:
        by_study: dict[str, list[FoundSeries]] = {}
        for s in chosen:
            by_study.setdefault(s.study_uid, []).append(s)
        jobs = []
        for i, series in enumerate(by_study.values()):
            folder = self.folder_for(series)
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append(StudyJob(f"study{i + 1}", folder, series, send.State(folder / "state.json")))
        with self._lock:
            self.jobs, self.error = jobs, ""
            self._confirmed.clear()
        threading.Thread(target=self._run, args=(project,), daemon=True).start()

    def confirm(self) -> None:
        self._confirmed.set()

    def resume(self) -> None:
        """Start the sending again after a stop (retries used up); prepared outboxes are reused."""
        project = self.jobs[0].state.data.get("project", "") if self.jobs else ""
        self.error = ""
        self._confirmed.set()
        threading.Thread(target=self._run, args=(project,), daemon=True).start()

    def view(self) -> dict[str, Any]:
        return {"error": self.error, "jobs": [j.view() for j in self.jobs]}

    # ------------------------------------------------------------------ the work
    def _run(self, project: str) -> None:
        try:
            for job in self.jobs:
                self._prepare(job, project)
            if any(j.phase == "confirm" for j in self.jobs):
                self._confirmed.wait()
            for job in self.jobs:
                if job.phase in ("confirm", "uploading", "stopped"):
                    self._send(job)
        except send.UploadError as exc:
            self.error = str(exc)
            for job in self.jobs:
                if job.phase in ("uploading", "preparing"):
                    job.phase = "stopped"
        except Exception as exc:  # noqa: BLE001 - shown on the page by type only (a message could hold a value)
            self.error = f"unexpected error ({type(exc).__name__}); nothing identified was sent"

    def _prepare(self, job: StudyJob, project: str) -> None:
        data = job.state.data
        outbox = job.folder / "outbox"
        if data.get("prepared"):  # a resumed upload: the outbox is complete and its UIDs are the ones sent
            job.prepared = [prepare.Prepared(**{**p, "files": [_outbox_file(outbox, f) for f in p["files"]],
                                                "qc_png": outbox / p["qc_png"] if p["qc_png"] else None})
                            for p in data["prepared"]]
            job.series_phase.update({p.key: "ready" for p in job.prepared})  # what prepare_study said last
            job.phase = "confirm" if not data.get("confirmed") else "uploading"
            return
        if "ticket" not in data:
            request: dict[str, Any] = {"project": project}
            if self.api.get("api/upload/tickets").get("lookup"):  # this clinic may use the registry's pseudonym
                request["identity"] = lookup_identity(job.series[0].patient)
            ticket = self.api.post("api/upload/tickets", request)
            job.state.save(ticket=ticket, project=project, uid_key=secrets.token_hex(32))
        t = data["ticket"]
        ticket = prepare.Ticket(t["id"], t["pseudonym"], int(t["date_offset"]), tuple(t["options"]), project)
        job.phase = "preparing"

        def say(key: str, text: str) -> None:
            job.series_phase[key] = text

        job.prepared = prepare.prepare_study(job.series, ticket, bytes.fromhex(data["uid_key"]), outbox,
                                             progress=say)
        job.state.save(prepared=[{"key": p.key, "files": [f.relative_to(outbox).as_posix() for f in p.files],
                                  "blocked": p.blocked,
                                  "refaced": p.refaced,
                                  "qc_png": str(p.qc_png.relative_to(outbox)) if p.qc_png else None}
                                 for p in job.prepared])
        job.phase = "confirm" if any(p.files for p in job.prepared) else "nothing to send"

    def _send(self, job: StudyJob) -> None:
        job.state.save(confirmed=True)
        job.phase = "uploading"
        files = [f for p in job.prepared for f in p.files]
        ticket = job.state.data["ticket"]["id"]

        def report(p: send.Progress) -> None:
            job.progress = p.as_dict()

        progress = send.upload(self.api, ticket, files, job.state, report=report)
        job.progress = progress.as_dict()
        if progress.refused:
            job.phase = "refused"
            job.message = "the server refused: " + "; ".join(sorted(set(progress.refused.values())))
            return
        job.phase = "completing"
        self.api.post(f"api/upload/{ticket}/complete", {"instances": len(files)})
        job.phase = "ingesting"
        self.follow(job, ticket)

    def follow(self, job: StudyJob, ticket: str) -> None:
        """Watch the server archive the study and process it (archived, QC, features, report) until nothing
        changes by itself any more; a QC review may take days, so that state is looked at less often."""
        while True:
            state = self.api.get(f"api/upload/{ticket}")
            job.phase = state["state"]
            job.message = state.get("reason") or ""
            job.progress["series"] = state.get("series") or []
            job.progress["steps"] = state.get("steps") or []
            job.progress["result"] = state.get("result")
            if state["state"] != "ingesting" and ended(job.progress["steps"]):
                return
            review = any(s.get("state") == "review" for s in job.progress["steps"])
            time.sleep(self.review_poll if review else self.poll)


def _outbox_file(outbox: Path, name: str) -> Path:
    """A prepared file of the state (its path in the outbox; a state written before paths were kept names the
    file alone, which lies in its series' folder)."""
    path = outbox / name
    if path.exists() or "/" in name:
        return path
    return next(outbox.glob(f"*/{name}"), path)


def lookup_identity(patient: dict[str, str]) -> dict[str, str]:
    """The fields a clinic allowed to look patients up sends with its ticket request (over TLS, to the
    registry's look-up only; the server keeps and logs none of them): the Patient ID as record number, and the
    name with birth date when the DICOM name has a family and a given part and the birth date is complete."""
    out = {"record_number": patient.get("id", "")}
    family, _, given = patient.get("_dicom_name", "").partition("^")
    born = patient.get("birth_date", "")
    if family.strip() and given.split("^")[0].strip() and len(born) == 8 and born.isdigit():
        out.update(family_name=family.strip(), given_names=given.split("^")[0].strip(),
                   birth_date=f"{born[:4]}-{born[4:6]}-{born[6:]}")
    return {k: v for k, v in out.items() if v}


def ended(steps: list[dict[str, Any]]) -> bool:
    """True when every processing step is at an end (the server's ``followup.SETTLED``; no steps: an upload that
    was not archived). Unlike ``followup.settled`` a QC review is not an end: the page keeps looking, less often."""
    return all(s.get("state") in SETTLED for s in steps)
