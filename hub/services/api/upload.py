"""The clinic upload route: DICOMweb STOW-RS that accepts only instances already de-identified and refaced.

A clinic user (scope ``custom:incloud:upload`` and a member of the project) first asks for an upload ticket:
the server issues the pseudonym and the date shift, and names the de-identification profile (the site's options
plus Clean Descriptors, so series stay nameable). The uploader (``uploader/``) de-identifies and refaces on the
clinic's computer and sends each instance with ``POST api/upload/<ticket>/studies`` (multipart/related;
type="application/dicom"). Every instance is checked again here before it is kept (``check_instance``):
burned-in text, the de-identification attributes and codes of the ticket's profile, the pseudonym, UIDs of our
mapping's form, the profile re-applied changing nothing (``incloud_kernel.deid.deidentify`` itself, with the
ticket's pseudonym, no date shift and UIDs as they are), and for every structural head series the refacing
marker (DCM 113102 and INCloud's refacing record bound to the pixels, ``incloud_kernel.deface.dicom``). Anything
else is refused in the STOW-RS response with a reason the uploader shows. Instances are idempotent by SOP
Instance UID: one sent again is acknowledged, not stored twice. ``POST api/upload/<ticket>/complete`` hands the
study to the normal ingest chain (``IngestChain.run_files``, as ``incloud ingest PATH``); a failure quarantines it.
Once archived, its processing starts by itself (``incloud_kernel.ingest.followup``: QC, features, CADS report),
followed by a thread and by every ``GET api/upload/<ticket>``, which answers the steps and the result page.
A clinic holding ``custom:incloud:lookup`` may send identifying fields with its ticket request: the ticket then
carries the project's registry pseudonym (``registry.project_pseudonym``); the fields are never logged or kept.

Tickets and received instances live under ``<spool>/upload/`` (folders 0700, files 0600), so an API restart in
the middle of an upload loses nothing. This module must never log or answer with a header value, and never keep
an instance that failed a check.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pydicom
from pydicom.dataset import Dataset
from tornado import web

from hub.roles import MODULES
from hub.services.api.app import BaseHandler, Route
from incloud_kernel.archive import permissions
from incloud_kernel.deid.options import OPTIONS, normalise
from incloud_kernel.errors import ValidationError
from incloud_kernel.site import private_dir

log = logging.getLogger("incloud.api.upload")

UPLOAD_SCOPE = "custom:incloud:upload"
#: A clinic allowed to look patients up in the participant registry (``hub.roles``: the clinic_lookup role):
#: its ticket request may carry identifying fields, answered with the project's registry pseudonym.
LOOKUP_SCOPE = "custom:incloud:lookup"
#: The fields of such a look-up (``registry.project_pseudonym``); never logged, never kept.
LOOKUP_FIELDS = ("record_number", "family_name", "given_names", "birth_date")
#: Largest request body the route reads (one instance or a small batch); bigger: 413. Below tornado's own
#: default limit (100 MB), which would close the connection without an answer.
MAX_REQUEST_BYTES = 96 << 20
#: Requests one user may make per minute on the upload routes (a token bucket); more: 429 with Retry-After.
RATE_PER_MINUTE = 1200
#: Instances one ticket (one study) may hold.
MAX_INSTANCES = 20000
#: STOW-RS Failure Reason codes (PS3.18 / PS3.4 C-STORE statuses).
FAIL_PROCESSING, FAIL_REFUSED, FAIL_RESOURCES = 0x0110, 0xC122, 0xA700
BASIC_PROFILE_CODE = "113100"
#: The options a clinic upload always adds to the site profile: descriptors cleaned (not removed) name series.
UPLOAD_OPTIONS = ("clean_descriptors",)
_TICKET = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: UIDs the profile maps (U): they must have our mapping's form, not the scanner's.
MAPPED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class Refused(Exception):
    """One instance refused; ``reason`` is value-free and shown by the uploader."""

    def __init__(self, reason: str, code: int = FAIL_REFUSED) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


# ------------------------------------------------------------------------------------------- the instance check

def _context(pseudonym: str, options: tuple[str, ...]) -> Any:
    from incloud_kernel.deid import DeidContext

    ctx = DeidContext(key=b"recheck-only", options=options, pseudonym=lambda ds: pseudonym,
                      date_offset=lambda ds: 0)
    ctx.map_uid = lambda uid: str(uid).strip().rstrip("\x00")  # UIDs as they are: only the rest is compared
    return ctx


def _value(elem: Any) -> Any:
    """An element's value with every kind of empty (None, "", []) as one."""
    value = elem.value
    return None if value in (None, "", b"") or (isinstance(value, list) and not value) else value


def _differs(a: Dataset, b: Dataset, path: str = "", skip: frozenset[int] = frozenset()) -> str | None:
    """The first attribute (keyword path, never a value) where ``b`` differs from ``a``; None when equal.
    ``skip``: top-level tags not compared (the refacing record, checked apart)."""
    for elem in a:
        tag = int(elem.tag)
        if tag in skip:
            continue
        name = path + (elem.keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if elem.tag not in b:
            return name
        other = b[elem.tag]
        if elem.VR == "SQ":
            items, others = list(elem.value or []), list(other.value or [])
            if len(items) != len(others):
                return name
            for x, y in zip(items, others):
                found = _differs(x, y, name + ".")
                if found:
                    return found
        elif tag != 0x7FE00010 and _value(elem) != _value(other):
            return name
    for elem in b:
        if int(elem.tag) not in skip and elem.tag not in a:
            return path + (elem.keyword or str(elem.tag))
    return None


def _without_refacing(ds: Dataset) -> tuple[Dataset, frozenset[int]]:
    """A shallow copy of ``ds`` whose De-identification Method Code Sequence lacks the 113102 item the refacer
    adds, and the tags of INCloud's refacing record (its private creator and element): what the profile, applied
    again, must leave exactly as it is."""
    from incloud_kernel.deface.dicom import CLEAN_VISUAL_FEATURES, REFACE_CREATOR

    from pydicom.sequence import Sequence

    copy = Dataset()
    copy.update(ds)
    items = [i for i in ds.get("DeidentificationMethodCodeSequence") or []
             if str(i.get("CodeValue", "")) != CLEAN_VISUAL_FEATURES[0]]
    if "DeidentificationMethodCodeSequence" in ds:
        copy.DeidentificationMethodCodeSequence = Sequence(items)
    skip: set[int] = set()
    for elem in ds.group_dataset(0x0009):
        if elem.tag.is_private_creator and str(elem.value) == REFACE_CREATOR:
            block = elem.tag.element  # creator (0009,00xx) reserves (0009,xx00-xxFF); the record is xx10
            skip |= {int(elem.tag), (0x0009 << 16) | (block << 8) | 0x10}
    return copy, frozenset(skip)


def check_instance(ds: Dataset, pseudonym: str, options: tuple[str, ...]) -> None:
    """Raise ``Refused`` unless ``ds`` is de-identified with ``options`` under ``pseudonym`` and, when it belongs
    to a structural head series, refaced by INCloud's refacer (its marker bound to these pixels)."""
    from incloud_kernel.deface.dicom import contrast_of, refacing_record
    from incloud_kernel.deid import DeidError, deidentify
    from incloud_kernel.deid.burned_in import burned_in_reason

    if burned_in_reason(ds):
        raise Refused("the instance may carry burned-in text; it must stay at the clinic")
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise Refused("not de-identified (Patient Identity Removed is not YES)")
    codes = {str(i.get("CodeValue", "")) for i in ds.get("DeidentificationMethodCodeSequence") or []}
    wanted = {BASIC_PROFILE_CODE} | {OPTIONS[o].code for o in options}
    if not wanted <= codes:
        raise Refused("not de-identified with this site's profile (De-identification Method Codes differ)")
    if str(ds.get("PatientID", "")) != pseudonym or str(ds.get("PatientName", "")) != pseudonym:
        raise Refused("the patient is not the upload ticket's pseudonym")
    for keyword in MAPPED_UIDS:
        if not str(ds.get(keyword, "")).startswith("2.25."):
            raise Refused(f"{keyword} is not a de-identified UID")
    if contrast_of(ds) is not None and refacing_record(ds) is None:
        raise Refused("a head series without INCloud's refacing marker (DCM 113102 and its record): the face "
                      "must be removed at the clinic first")
    try:
        again = deidentify(ds, _context(pseudonym, options))
    except DeidError as exc:
        raise Refused(f"cannot be checked ({exc.reason})") from None
    except Exception as exc:  # noqa: BLE001 - a malformed element: its type only, never its message
        raise Refused(f"a malformed instance ({type(exc).__name__})", FAIL_PROCESSING) from None
    mine, skip = _without_refacing(ds)
    where = _differs(mine, again, skip=skip)
    if where is not None:
        raise Refused(f"not de-identified: the site's profile still changes {where}")


# ------------------------------------------------------------------------------------------- tickets on disk

@dataclass
class Store:
    """Tickets and received instances under ``<spool>/upload`` (0700/0600)."""

    root: Path

    def folder(self, ticket: str) -> Path:
        if not _TICKET.match(ticket):
            raise web.HTTPError(404, "no such upload ticket", reason="not found")
        return self.root / ticket

    def load(self, ticket: str) -> dict[str, Any]:
        try:
            return json.loads((self.folder(ticket) / "ticket.json").read_text())
        except FileNotFoundError:
            raise web.HTTPError(404, "no such upload ticket", reason="not found") from None

    def save(self, data: dict[str, Any]) -> None:
        folder = private_dir(self.folder(data["id"]))
        tmp = folder / f".ticket.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, folder / "ticket.json")

    def instances(self, ticket: str) -> Path:
        return private_dir(self.folder(ticket) / "instances")

    def tickets(self) -> Iterator[dict[str, Any]]:
        """Every ticket kept (none while the folder does not exist; one that cannot be read is skipped)."""
        for path in self.root.glob("*/ticket.json") if self.root.exists() else []:
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def ticket_lock(ticket: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(ticket, threading.Lock())


class RateLimiter:
    """A token bucket per user: ``per_minute`` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, user: str) -> float:
        """0 when the request may go on, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(user, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
            if tokens < 1:
                self._buckets[user] = (tokens, now)
                return (1 - tokens) * 60.0 / self.per_minute
            self._buckets[user] = (tokens - 1, now)
            return 0.0


# ------------------------------------------------------------------------------------------- multipart

def parts(content_type: str, body: bytes) -> list[bytes]:
    """The application/dicom parts of a multipart/related body (PS3.18 STOW-RS, RFC 2387); ValidationError
    otherwise. Split on the boundary directly: the e-mail parser copies every byte of every part several times."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        raise ValidationError("the body must be multipart/related; type=\"application/dicom\"")
    found = re.search(r'boundary="?([^";]+)"?', params)
    if not found:
        raise ValidationError("the multipart body names no boundary")
    delimiter = b"--" + found.group(1).encode("latin-1")
    sections = body.split(b"\r\n" + delimiter)
    if not sections[0].startswith(delimiter):
        raise ValidationError("the multipart body does not start with its boundary")
    sections[0] = sections[0][len(delimiter):]
    out = []
    for section in sections:
        if section.startswith(b"--"):
            break  # the closing delimiter
        head, sep, payload = section.partition(b"\r\n\r\n")
        if not sep:
            raise ValidationError("a part of the multipart body has no headers")
        ctype = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = value.split(";")[0].strip().lower()
        if ctype != "application/dicom":
            raise ValidationError("every part must be application/dicom")
        out.append(payload)
    if not out:
        raise ValidationError("the request holds no instance")
    return out


def _dicom_json_item(sop_class: str, sop_uid: str, reason: str | None = None, code: int | None = None) -> dict:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                            "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}}
    if code is not None:
        item["00081197"] = {"vr": "US", "Value": [code]}
        item["00000902"] = {"vr": "LO", "Value": [reason or "refused"]}  # Error Comment: the reason, no value
    return item


# ------------------------------------------------------------------------------------------- handlers

class UploadHandler(BaseHandler):
    """Upload routes: the upload scope, a project the caller may write to, the per-user rate limit."""

    scope = UPLOAD_SCOPE
    limiter = RateLimiter(RATE_PER_MINUTE)

    def store(self) -> Store:
        return Store(private_dir(self.api.site.config.spool / "upload"))

    def throttle(self) -> None:
        wait = self.limiter.allow(self.current_user["name"])  # type: ignore[index]
        if wait:
            self._retry_after = str(max(1, int(wait + 0.999)))
            raise web.HTTPError(429, "too many upload requests; wait and send again", reason="slow down")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if getattr(self, "_retry_after", None):  # send_error clears the headers set before
            self.set_header("Retry-After", self._retry_after)
        super().write_error(status_code, **kwargs)

    def owned(self, ticket: str) -> dict[str, Any]:
        data = self.store().load(ticket)
        if data["user"] != self.current_user["name"]:  # type: ignore[index]
            raise web.HTTPError(404, "no such upload ticket", reason="not found")
        return data


class TicketsHandler(UploadHandler):
    """GET: the projects the caller may upload to; POST {project}: a new upload ticket (pseudonym, date shift,
    profile)."""

    async def get(self) -> None:
        def work(db: Any, actor: Any) -> list[dict[str, str]]:
            page = permissions.list_projects(db, actor, page_size=permissions.MAX_PAGE_SIZE)
            return [{"code": p.code, "name": p.name} for p in page.items
                    if actor.site_admin or permissions.allowed(permissions.role_in(db, actor, p.id), "write")]

        self.send({"projects": await self.in_db(work), "lookup": LOOKUP_SCOPE in self.scopes})

    async def post(self) -> None:
        body = self.body()
        self.throttle()
        project = str(body.get("project", ""))
        identity = body.pop("identity", None)
        if identity is not None:
            self.require_scope(LOOKUP_SCOPE)  # before anything is read from it
            if not isinstance(identity, dict) or set(identity) - set(LOOKUP_FIELDS):
                raise web.HTTPError(400, f"identity holds only {', '.join(LOOKUP_FIELDS)}", reason="invalid request")
        site = self.api.site

        def work(db: Any, actor: Any) -> tuple[str, int] | None:
            permissions.require(db, actor, project, "write")
            if identity is None:
                return None
            from incloud_kernel.acquisition import keyring, registry

            try:
                found = registry.project_pseudonym(db, actor, project, config=site.config,
                                                   **{k: identity.get(k) for k in LOOKUP_FIELDS})
            except keyring.RegistryKeyError:
                # The registry holds people but its keys cannot be read here: a server pseudonym would file this
                # patient under a second participant, so the clinic is told to wait (the key path stays in the
                # service's own log, not in the clinic's answer).
                log.error("registry look-up for an upload refused: the registry keys are not readable")
                raise web.HTTPError(503, "the participant registry is unavailable at this site; ask its "
                                    "administrator", reason="registry unavailable") from None
            db.commit()  # the look-up's audit event
            return found

        found = await self.in_db(work)
        site_options = tuple(self.api.site.config.deid.options)
        pseudonym, offset = found or ("UPL" + secrets.token_hex(6).upper(), -secrets.choice(range(365, 3651)))
        data = {
            "id": secrets.token_urlsafe(18), "project": project, "user": self.current_user["name"],  # type: ignore
            "pseudonym": pseudonym, "date_offset": offset,
            "pseudonym_source": "registry" if found else "server",
            "options": list(normalise(site_options + UPLOAD_OPTIONS)), "created": time.time(),
            "received": 0, "state": "receiving",
        }
        self.store().save(data)
        keys = ("id", "project", "pseudonym", "pseudonym_source", "date_offset", "options", "state")
        self.send({k: data[k] for k in keys}
                  | {"max_request_bytes": MAX_REQUEST_BYTES, "rate_per_minute": self.limiter.per_minute})


class TicketHandler(UploadHandler):
    """GET: the ticket's state (receiving, ingesting, archived, quarantined with its reason) and, once archived,
    its processing steps (archived, QC, features, report) and the result page when there is one."""

    async def get(self, ticket: str) -> None:
        data = self.owned(ticket)
        if data["state"] == "ingesting":  # after an API restart nothing runs it any more: the chain is idempotent
            start_ingest(self.api.site, self.store(), ticket)
        if data["state"] == "archived" and not data.get("settled") and self.api.site.config.ingest.process_uploads:
            store, site = self.store(), self.api.site
            data = await asyncio.get_running_loop().run_in_executor(None, lambda: follow_once(site, store, ticket))
            start_follow(site, store, ticket)  # after an API restart: the follower goes on without the uploader
        out = {k: data.get(k) for k in ("id", "project", "state", "received", "reason", "series", "steps")}
        out["result"] = self.result_page(data)
        self.send(out)

    def result_page(self, data: dict[str, Any]) -> dict[str, str] | None:
        """Where the study's result is: the CADS report dashboard once a report is ready, else the QC review or
        the archive browser when the caller may open it (a link through the hub's ``user-redirect``)."""
        from voila_apps import DASHBOARDS

        steps = {s["name"]: s["state"] for s in data.get("steps") or []}
        if data["state"] != "archived":
            return None
        wanted = []
        if steps.get("report") == "done":
            wanted.append(("cads", "the CADS report"))
        if steps.get("qc") in ("review", "done", "failed"):
            wanted.append(("qc", "the QC review"))
        wanted.append(("archive", "the archive"))
        modules = {m.key: m for m in MODULES}
        for key, title in wanted:
            board = next(d for d in DASHBOARDS if d.key == key)
            if board.module not in modules or modules[board.module].open_to(self.scopes):
                prefix = getattr(self.hub_auth, "hub_prefix", "/hub/") or "/hub/"
                return {"kind": key, "title": title,
                        "url": f"{self.request.protocol}://{self.request.host}{prefix}user-redirect/"
                               f"{board.render_path}"}
        return None


class StowHandler(UploadHandler):
    """STOW-RS: store the instances of the body that pass ``check_instance`` (idempotent by SOP UID)."""

    async def post(self, ticket: str) -> None:
        if not self.request.headers.get("Authorization", "").startswith(("token ", "Bearer ", "bearer ")):
            raise web.HTTPError(403, "uploads need an API token in the Authorization header", reason="forbidden")
        self.throttle()
        if len(self.request.body) > MAX_REQUEST_BYTES:
            raise web.HTTPError(413, f"a request may hold at most {MAX_REQUEST_BYTES >> 20} MiB; send fewer "
                                     "instances per request", reason="too large")
        data = self.owned(ticket)
        await self.in_db(lambda db, actor: permissions.require(db, actor, data["project"], "write"))
        if data["state"] != "receiving":
            raise web.HTTPError(409, f"the upload is {data['state']}; start a new one", reason="conflict")
        try:
            blobs = parts(self.request.headers.get("Content-Type", ""), self.request.body)
        except ValidationError as exc:
            raise web.HTTPError(415, str(exc), reason="unsupported media type") from None
        store = self.store()
        stored, failed = await asyncio.get_running_loop().run_in_executor(None, lambda: receive(store, data, blobs))
        self.set_header("Content-Type", "application/dicom+json")
        self.set_status(200 if not failed else (202 if stored else 409))
        out: dict[str, Any] = {}
        if stored:
            out["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            out["00081198"] = {"vr": "SQ", "Value": failed}
        self.finish(json.dumps(out))


class CompleteHandler(UploadHandler):
    """POST {instances}: the study is complete; the ingest chain archives it (in the background)."""

    async def post(self, ticket: str) -> None:
        body = self.body()
        data = self.owned(ticket)
        try:
            expected = int(body.get("instances", -1))
        except (TypeError, ValueError):
            raise web.HTTPError(400, "instances must be an integer", reason="invalid request") from None
        have = len(list(self.store().instances(ticket).glob("*.dcm")))
        if data["state"] == "receiving":
            if expected != have:
                raise web.HTTPError(409, f"the server holds {have} of {expected} instances; send the rest first",
                                    reason="incomplete")
            data["state"] = "ingesting"
            self.store().save(data)
            start_ingest(self.api.site, self.store(), ticket)
        self.send({k: data.get(k) for k in ("id", "state", "received")})


ROUTES: list[Route] = [
    Route("api/upload/tickets", TicketsHandler, "Projects you may upload to (GET) or a new upload ticket (POST "
          "project): pseudonym, date shift, de-identification profile"),
    Route(r"api/upload/([A-Za-z0-9_-]+)", TicketHandler, "State of an upload: receiving, ingesting, archived, "
          "quarantined (with its reason)"),
    Route(r"api/upload/([A-Za-z0-9_-]+)/studies", StowHandler, "DICOMweb STOW-RS of de-identified, refaced "
          "instances (multipart/related; type=application/dicom); idempotent by SOP Instance UID"),
    Route(r"api/upload/([A-Za-z0-9_-]+)/complete", CompleteHandler, "The study is complete (POST {instances}): "
          "archive it through the ingest chain"),
]


def recent_uploads(site: Any, user: str, newest: int = 5) -> dict[str, Any]:
    """For the portal's Upload tile: the user's newest uploads (project, when, state, processing steps) and
    how many there are. Reads the ticket files (no pseudonym, no ticket id: the tile is a summary)."""
    mine = [d for d in Store(site.config.spool / "upload").tickets() if d.get("user") == user]
    mine.sort(key=lambda d: d.get("created", 0), reverse=True)
    return {"uploads": len(mine),
            "last": [{"project": d["project"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime(d.get("created", 0))),
                      "state": d["state"], "series": len(d.get("series") or []),
                      "steps": [{"name": s["name"], "state": s["state"]} for s in d.get("steps") or []]}
                     for d in mine[:newest]]}


_counts: dict[str, int] = {}


def _count(ticket: str, folder: Path) -> int:
    """Instances a ticket holds: counted on disk once per process, then kept up to date (call under its lock);
    counting the folder on every instance made a 6,000-instance upload quadratic."""
    if ticket not in _counts:
        _counts[ticket] = sum(1 for _ in folder.glob("*.dcm"))
    return _counts[ticket]


def receive(store: Store, data: dict[str, Any], blobs: list[bytes]) -> tuple[list[dict], list[dict]]:
    """Check and keep each instance of one request; returns (stored items, failed items) for the response."""
    stored: list[dict] = []
    failed: list[dict] = []
    folder = store.instances(data["id"])
    options = tuple(data["options"])
    for blob in blobs:
        sop_class = sop_uid = ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger("pydicom").setLevel(logging.CRITICAL)
                try:
                    ds = pydicom.dcmread(io.BytesIO(blob))
                except Exception:  # noqa: BLE001 - not a DICOM Part 10 instance
                    raise Refused("not a readable DICOM instance", FAIL_PROCESSING) from None
                sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
                if not re.match(r"^2\.25\.[0-9]{1,40}$", sop_uid):
                    raise Refused("SOPInstanceUID is not a de-identified UID")
                target = folder / f"{sop_uid}.dcm"
                if target.exists():  # sent again after a lost answer: acknowledged, not stored twice
                    stored.append(_dicom_json_item(sop_class, sop_uid))
                    continue
                check_instance(ds, data["pseudonym"], options)
            with ticket_lock(data["id"]):
                if _count(data["id"], folder) >= MAX_INSTANCES:
                    raise Refused(f"an upload may hold at most {MAX_INSTANCES} instances", FAIL_RESOURCES)
                tmp = folder / f".{sop_uid}.{uuid.uuid4().hex}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, target)
                _counts[data["id"]] += 1
            stored.append(_dicom_json_item(sop_class, sop_uid))
        except Refused as exc:  # its UIDs are never echoed: a refused instance may carry the scanner's own
            failed.append(_dicom_json_item("", "", exc.reason, exc.code))
    with ticket_lock(data["id"]):
        fresh = store.load(data["id"])
        fresh["received"] = _count(data["id"], folder)
        store.save(fresh)
    return stored, failed


_ingesting: set[str] = set()


def _thread_once(running: set[str], ticket: str, work: Any) -> None:
    """Run ``work()`` in a thread of this process unless one runs it for ``ticket`` already (``running``)."""
    with _locks_guard:
        if ticket in running:
            return
        running.add(ticket)

    def run() -> None:
        try:
            work()
        finally:
            with _locks_guard:
                running.discard(ticket)

    threading.Thread(target=run, daemon=True).start()


def start_ingest(site: Any, store: Store, ticket: str) -> None:
    """Run ``ingest_ticket`` in a thread of this process unless one runs it already."""
    _thread_once(_ingesting, ticket, lambda: ingest_ticket(site, store, ticket))


def ingest_ticket(site: Any, store: Store, ticket: str) -> None:
    """Run the normal ingest chain on the ticket's instances (as ``incloud ingest PATH``); record the outcome.
    A failure quarantines the study with its value-free reason, as the CLI does."""
    from incloud_kernel.ingest.chain import ChainFailure, IngestChain
    from incloud_kernel.ingest.quarantine import quarantine_held_back, quarantine_study

    data = store.load(ticket)
    files = sorted(store.instances(ticket).glob("*.dcm"))
    job_id = f"upload-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    try:
        chain = IngestChain(site, keep_pseudonym=data.get("pseudonym_source") == "registry")
        outcomes = chain.run_files(files, data["project"], job_id=job_id)
        quarantine_held_back(site.config.quarantine, job_id, outcomes, source="upload")
        data.update(state="archived", job=job_id,
                    series=[{"id": s.series_id, "name": s.name, "status": s.status}
                            for o in outcomes for s in o.series], processing={}, settled=False)
    except ChainFailure as exc:
        quarantine_study(site.config.quarantine, job_id, files, reason=exc.reason, step=exc.step,
                         source="upload", project=data["project"])
        data.update(state="quarantined", job=job_id, reason=f"{exc.step}: {exc.reason}")
    except Exception as exc:  # noqa: BLE001 - the state says so; the instances stay for another try
        data.update(state="failed", reason=f"{type(exc).__name__}")
        log.warning("upload %s: ingest failed (%s)", ticket, type(exc).__name__)
    store.save(data)
    if data["state"] == "archived" and site.config.ingest.process_uploads:
        start_follow(site, store, ticket)


# ------------------------------------------------------------------------------------------- processing

#: Seconds between two looks of the follower thread at a study's processing.
FOLLOW_INTERVAL = 5.0
_following: set[str] = set()


def follow_once(site: Any, store: Store, ticket: str) -> dict[str, Any]:
    """Advance the archived study's processing (``ingest.followup.advance``: QC, features, report) and keep
    its steps and run ids in the ticket; returns the ticket. Under the ticket's lock: never two runs."""
    from incloud_kernel.ingest import followup

    with ticket_lock(ticket):
        data = store.load(ticket)
        if data["state"] != "archived" or data.get("settled"):
            return data
        record = data.setdefault("processing", {})
        series = sorted({int(s["id"]) for s in data.get("series") or [] if s.get("id") is not None})
        try:
            data["steps"] = followup.advance(site, data["user"], data["project"], series, record)
        except Exception as exc:  # noqa: BLE001 - shown as a failed step; the next look tries again
            log.warning("upload %s: processing could not advance (%s)", ticket, type(exc).__name__)
            data["steps"] = [{"name": "archived", "state": "done", "detail": ""},
                             {"name": "processing", "state": "failed", "detail": type(exc).__name__}]
            store.save(data)
            return data
        # only a ready report ends the looking: a reviewer may still pass a series the QC gate failed or left
        # pending, and a model may be trained later (each look is a few queries)
        data["settled"] = any(s["name"] == "report" and s["state"] == "done" for s in data["steps"])
        store.save(data)
        return data


def start_follow(site: Any, store: Store, ticket: str) -> None:
    """A thread of this process that advances the study's processing until nothing changes by itself any more
    (every step at an end, or a QC review to wait for), so processing goes on with the uploader closed."""
    from incloud_kernel.ingest import followup

    def run() -> None:
        while True:
            data = follow_once(site, store, ticket)
            if data.get("settled") or followup.settled(data.get("steps") or []):
                return
            time.sleep(FOLLOW_INTERVAL)

    _thread_once(_following, ticket, run)
