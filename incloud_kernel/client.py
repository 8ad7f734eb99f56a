"""``incloud_kernel.connect()``: the INCloud API with the user's own hub token, results as pandas DataFrames.

Inside a hub workstation the hub puts ``JUPYTERHUB_API_TOKEN`` and ``INCLOUD_API_URL`` into the environment,
so ``connect()`` needs no arguments. Elsewhere (a laptop, an SSH session) it takes ``INCLOUD_API_URL`` and
``INCLOUD_API_TOKEN`` from the environment or ``url``/``token`` from a TOML file (``INCLOUD_CLIENT_CONFIG`` or
``~/.config/incloud/client.toml``). It never holds database credentials, never prints or logs the token, and
turns every refusal into one ``ApiError`` line (expired or revoked token, another user's token, a missing scope).
"""
from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from typing import Any, Iterator, Mapping

import requests

from incloud_kernel.errors import IncloudError, NotFound, PermissionDenied, ValidationError


class ApiError(IncloudError):
    """The INCloud API could not be reached or refused the request."""


class TokenError(ApiError):
    """The token is missing, expired, revoked, or belongs to somebody else."""

    exit_code = 3


class ScopeError(ApiError, PermissionDenied):
    """The token is valid but lacks the ``custom:incloud:*`` scope the call needs."""


def _config_file() -> Path:
    explicit = os.environ.get("INCLOUD_CLIENT_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "incloud" / "client.toml"


def resolve_credentials(url: str | None = None, token: str | None = None,
                        env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(url, token, where from): arguments, then environment, then the client config file.

    Raises TokenError (no token) or ApiError (no URL) with what to set.
    """
    env = os.environ if env is None else env
    source = "arguments"
    url = url or env.get("INCLOUD_API_URL")
    token = token or env.get("INCLOUD_API_TOKEN") or env.get("JUPYTERHUB_API_TOKEN")
    if url and token:
        source = "workstation" if env.get("JUPYTERHUB_API_TOKEN") == token else "environment"
    if not (url and token):
        path = Path(env["INCLOUD_CLIENT_CONFIG"]).expanduser() if env.get("INCLOUD_CLIENT_CONFIG") \
            else _config_file()
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, OSError) as exc:
                raise ApiError(f"client config {path} is unreadable: {type(exc).__name__}") from None
            url = url or data.get("url")
            token = token or data.get("token")
            source = f"file {path}"
    if not token:
        raise TokenError("no API token: set INCLOUD_API_TOKEN (create one at <hub>/hub/token) "
                         "or run inside a hub workstation")
    if not url:
        raise ApiError("no API URL: set INCLOUD_API_URL (e.g. https://hub.example.org/services/incloud-api/)")
    return url.rstrip("/") + "/", token, source


class Client:
    """A session with the INCloud API as one user. Listing methods return every page as one DataFrame."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, source: str = "arguments") -> None:
        self.url = url.rstrip("/") + "/"
        self.source = source
        self.timeout = timeout
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"token {token}"
        self.user: dict[str, Any] = {}

    def __repr__(self) -> str:  # never the token
        return f"<incloud Client user={self.user.get('name')!r} url={self.url!r}>"

    # -- transport ---------------------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, Any] | None = None, stream: bool = False) -> requests.Response:
        return self._request("GET", path, params, stream=stream)

    def _request(self, method: str, path: str, params: Mapping[str, Any] | None = None, *, stream: bool = False,
                 body: Any = None, headers: Mapping[str, str] | None = None) -> requests.Response:
        try:
            r = self._http.request(method, self.url + path, params=params, timeout=self.timeout, stream=stream,
                                   json=body, headers=headers)
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach the INCloud API at {self.url}: {type(exc).__name__}") from None
        if r.status_code < 400:
            return r
        try:
            message = str(r.json().get("message") or r.reason)
        except ValueError:
            message = r.reason or f"HTTP {r.status_code}"
        message = " ".join(message.split())
        if r.status_code == 401:
            raise TokenError("the API refused the token (expired, revoked or unknown): in a workstation, restart "
                             "it; elsewhere create a new token at <hub>/hub/token")
        if r.status_code == 403 and "lacks scope" in message:
            scope = message.rsplit(" ", 1)[-1]
            raise ScopeError(f"your token lacks scope {scope}: ask an administrator for the INCloud role "
                             "that grants it")
        if r.status_code == 403 and "may not use" in message:
            raise ScopeError("your token may not use the INCloud API service: ask an administrator for an "
                             "INCloud role (researcher, qc_reviewer, clinician, registrar)")
        if r.status_code == 403:
            raise PermissionDenied(message)
        if r.status_code == 404:
            raise NotFound(message)
        if r.status_code in (400, 409):  # 409: a booking's slot was taken
            raise ValidationError(message)
        raise ApiError(f"the INCloud API answered {r.status_code}: {message}")

    def _json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._get(path, params).json()

    def whoami(self) -> dict[str, Any]:
        """The token's user: name, groups and INCloud scopes."""
        self.user = self._json("api/me")
        return self.user

    def pages(self, listing: str, /, *, project: str | None = None, page_size: int = 500,
              **filters: Any) -> Iterator[dict[str, Any]]:
        """Every row of a listing (``projects``, ``participants``, ``sessions``, ``series``, ``files``).

        ``listing`` is positional-only so that a filter may itself be called ``kind`` (``files(kind=...)``)."""
        params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        if project is not None:
            params["project"] = project
        page = 1
        while True:
            data = self._json(f"api/{listing}", {**params, "page": page, "page_size": page_size})
            yield from data["items"]
            if not data["has_more"]:
                return
            page += 1

    def _frame(self, listing: str, /, **kwargs: Any):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame(list(self.pages(listing, **kwargs)))

    # -- listings as DataFrames --------------------------------------------------------------------------------
    def projects(self, **filters: Any):  # type: ignore[no-untyped-def]
        """Projects you may read (DataFrame: id, code, name, description, created_at)."""
        return self._frame("projects", **filters)

    def participants(self, project: str | None = None, **filters: Any):  # type: ignore[no-untyped-def]
        """Participants of your projects (pseudonymous attributes only)."""
        return self._frame("participants", project=project, **filters)

    def sessions(self, project: str | None = None, **filters: Any):  # type: ignore[no-untyped-def]
        return self._frame("sessions", project=project, **filters)

    def series(self, project: str | None = None, modality: str | None = None,
               **filters: Any):  # type: ignore[no-untyped-def]
        """Series of your projects; filters: modality, datatype, suffix, qc_status, session, participant.
        ``datatype="sourcedata"``: series no BIDS rule names (de-identified DICOM + NIfTI under sourcedata/)."""
        return self._frame("series", project=project, modality=modality, **filters)

    def files(self, project: str | None = None, **filters: Any):  # type: ignore[no-untyped-def]
        """Archived files (relpath, sha256, size in bytes) of your projects; filters: series, session, kind."""
        return self._frame("files", project=project, **filters)

    # -- pipelines (runs on the site's Dask cluster, started and watched with your permissions) ----------------
    def pipelines(self):  # type: ignore[no-untyped-def]
        """The site's pipelines (DataFrame: name, version, requires_qc, description, stages)."""
        import pandas as pd

        return pd.DataFrame(self._json("api/pipelines")["items"])

    def run(self, pipeline: str, project: str) -> int:
        """Start ``pipeline`` over ``project``'s series (``client.run("qc", project="DEMO")``); returns the run id
        at once (the run goes on on the cluster; watch it with ``progress``). Needs write on the project."""
        r = self._request("POST", "api/runs", body={"pipeline": pipeline, "project": project})
        return int(r.json()["run"])

    def progress(self, run_id: int, *, wait: bool = False, interval: float = 2.0) -> dict[str, Any]:
        """A run's state and its done / running / waiting / failed / cancelled counts, per stage (``stages``)
        and per subject (``subjects``), with every input's error and outputs (``tasks``). ``wait=True`` polls
        every ``interval`` s until the run has ended (or its driver is gone: ``interrupted``)."""
        import time

        while True:
            report = self._json(f"api/runs/{int(run_id)}")
            if not wait or report["state"] in ("done", "failed", "cancelled") or report.get("interrupted"):
                return report
            time.sleep(interval)

    def runs(self, project: str | None = None):  # type: ignore[no-untyped-def]
        """Your projects' newest runs with their counts (DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self._json("api/runs", {"project": project} if project else None)["items"])

    def provenance(self, run_id: int) -> list[dict[str, Any]]:
        """How each derivative of a run was made: stage and versions, parameters, input checksums, libraries
        with the workstation image's digest, host, run time and output files (for a methods section)."""
        return list(self._json(f"api/runs/{int(run_id)}/provenance")["items"])

    def cancel(self, run_id: int) -> str:
        """Cancel a run you started (or one of a project you manage); returns its new state."""
        return str(self._request("POST", f"api/runs/{int(run_id)}/cancel").json()["state"])

    # -- file access -------------------------------------------------------------------------------------------
    def read_file(self, file_id: int) -> bytes:
        """The bytes of one file you may read, checked against its recorded SHA-256."""
        r = self._get(f"api/files/{int(file_id)}/content")
        data = r.content
        expected = r.headers.get("X-Incloud-Sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ApiError(f"file #{file_id} arrived corrupted (SHA-256 mismatch)")
        return data

    def download(self, file_id: int, dest: str | Path) -> Path:
        """Write one file to ``dest`` (a folder keeps the archive's file name); returns the path written."""
        r = self._get(f"api/files/{int(file_id)}/content", stream=True)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"file-{int(file_id)}"
        digest = hashlib.sha256()
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as fh:
            for chunk in r.iter_content(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
        expected = r.headers.get("X-Incloud-Sha256")
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise ApiError(f"file #{file_id} arrived corrupted (SHA-256 mismatch)")
        tmp.replace(dest)
        return dest

    # -- images (streamed with your token; the server checks your permission for every file) ------------------
    def series_files(self, series: Any) -> list[dict[str, Any]]:
        """The archived files of one series (``series``: its id, a row of ``series()``, or a dict with ``id``)."""
        return list(self.pages("files", series=_series_id(series)))

    def load(self, series: Any):  # type: ignore[no-untyped-def]
        """The series' NIfTI image as a ``nibabel`` image, read in memory from the API (nothing written to disk).

        A series with several NIfTI files (e.g. multi-echo) gives the first by archive path; NotFound when the
        series has none (or is not yours: the two look the same).
        """
        import gzip

        import nibabel as nib

        image = self.nifti_file(series)
        data = self.read_file(image["id"])
        if image["relpath"].endswith(".gz"):
            data = gzip.decompress(data)
        try:
            return nib.Nifti1Image.from_bytes(data)
        except Exception:  # noqa: BLE001 - a NIfTI-2 header is the other valid kind
            return nib.Nifti2Image.from_bytes(data)

    def load_dicom(self, series: Any) -> list[Any]:
        """The series' archived (de-identified) DICOM instances as ``pydicom`` datasets, by InstanceNumber.

        NotFound when the archive holds no DICOM for the series (sites that keep only BIDS NIfTI).
        """
        import io

        import pydicom

        sid = _series_id(series)
        files = [f for f in self.series_files(sid) if f["relpath"].endswith(".dcm")]
        if not files:
            raise NotFound(f"series #{sid} has no DICOM files in the archive")
        datasets = [pydicom.dcmread(io.BytesIO(self.read_file(f["id"]))) for f in files]
        return sorted(datasets, key=lambda ds: int(getattr(ds, "InstanceNumber", 0) or 0))

    # -- quality control (the server decides who may rate: QC reviewers and project owners) ---------------------
    def qc_queue(self, project: str) -> dict[str, Any]:
        """The QC review queue of ``project``: ``items`` (one dict per series: id, participant, session, suffix,
        qc_status, ``indices`` by MRIQC IQM name, ``flags`` per index: fail / review (between the site's
        thresholds) / high / low (group outlier), ``review``: the current decision, ``motion_file``: a per-volume
        motion TSV file id or None), ``accept`` (states that enter processing), ``can_review`` (may you rate)."""
        return self._json("api/qc/queue", {"project": project})

    def review(self, series: Any, decision: str, comment: str = "", reason: str = "") -> dict[str, Any]:
        """Rate one series: ``pass``, ``fail``, ``caveat`` (needs a reason; the comment serves when none is
        given) or ``pending`` (re-open). PermissionDenied unless you are a QC reviewer or owner of its project."""
        return self._request("POST", f"api/qc/series/{_series_id(series)}/review",
                             body={"decision": decision, "comment": comment, "reason": reason}).json()

    def qc_policy(self, project: str) -> list[str]:
        """The QC states whose series of ``project`` enter processing (default: pass and caveat)."""
        return list(self._json("api/qc/policy", {"project": project})["accept"])

    def set_qc_policy(self, project: str, accept: list[str]) -> list[str]:
        """Choose which QC states enter processing in ``project`` (project owners only)."""
        return list(self._request("PUT", "api/qc/policy", {"project": project}, body={"accept": list(accept)})
                    .json()["accept"])

    def usable_series(self, project: str, **filters: Any) -> list[int]:
        """Ids of ``project``'s series that enter processing now (their QC state is one the project accepts)."""
        params = {"project": project, **{k: v for k, v in filters.items() if v is not None}}
        return list(self._json("api/qc/usable", params)["series"])

    # -- participant registry (identities: registrars only, every read audited with its reason) ---------------
    # Identities go in request bodies, never in URLs; the reason in the X-Incloud-Reason header.
    def register_person(self, identity: Mapping[str, Any], *, project: str | None = None,
                        same_as: str | None = None, keep_apart: bool = False) -> dict[str, Any]:
        """Register a person (family_name, given_names, birth_date YYYY-MM-DD, sex, record_number, contact):
        ``{"uid", "status", "pseudonym", "kept_apart_from"}``. A suspected duplicate is an ``ApiError`` (409)
        naming internal ids: call again with ``same_as=UID`` or ``keep_apart=True``."""
        return self._request("POST", "api/registry/persons", body={
            "identity": dict(identity), "project": project, "same_as": same_as, "keep_apart": keep_apart}).json()

    def find_person(self, reason: str, **query: str) -> list[str]:
        """Internal ids by exact look-up: ``record_number=``, or ``family_name=, given_names=, birth_date=``."""
        return list(self._request("POST", "api/registry/find", body=query,
                                  headers={"X-Incloud-Reason": reason}).json()["persons"])

    def person(self, uid: str, reason: str) -> dict[str, Any]:
        """A person's identity, enrolments and scans in every project (audited with ``reason``)."""
        return self._request("GET", f"api/registry/persons/{uid}", headers={"X-Incloud-Reason": reason}).json()

    def enrol(self, uid: str, project: str) -> str:
        """Enrol a registered person in ``project``; returns the project's pseudonym (the participant label)."""
        return str(self._request("POST", f"api/registry/persons/{uid}/enrol", body={"project": project})
                   .json()["pseudonym"])

    def decide_persons(self, keep: str, other: str, decision: str) -> dict[str, Any]:
        """``merge`` ``other`` into ``keep``, or ``keep-apart``: the registrar's decision on a suspected pair."""
        return self._request("POST", "api/registry/decisions",
                             body={"keep": keep, "other": other, "decision": decision}).json()

    def attributes(self, pseudonym: str, **changes: Any) -> dict[str, Any]:
        """A participant's research attributes by pseudonym; keyword arguments change them (project members)."""
        if changes:
            return self._request("PUT", f"api/registry/attributes/{pseudonym}", body=changes).json()
        return self._json(f"api/registry/attributes/{pseudonym}")


    # -- the brain feature library (count over all data; rows only from projects you may list) -----------------
    @staticmethod
    def _criteria(criteria: Mapping[str, Any]) -> dict[str, Any]:
        """Criteria as query arguments: age (low, high) as "low-high", booleans as true/false, lists repeated."""
        out: dict[str, Any] = {}
        for name, value in criteria.items():
            if value is None:
                continue
            if name == "age" and isinstance(value, (tuple, list)):
                value = "-".join(str(v) for v in value) if len(value) == 2 else "invalid"
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[name] = list(value) if isinstance(value, (tuple, set, frozenset)) else value
        return out

    def features(self, *, shape: str = "long", limit: int = 100, offset: int = 0, **criteria: Any):  # type: ignore[no-untyped-def]
        """``(total_count, DataFrame)`` of the feature library: ``client.features(diagnosis="SCZ", age=(18, 40),
        feature="gmv", atlas="aal", qc="pass")``. ``total_count`` counts matching scans in *every* project (a
        count of 1-4 shows as "< 5"); the rows are ``limit`` scans (from ``offset``) of projects you are a member
        of or hold a feature grant for. ``shape``: ``long`` (one row per value), ``wide`` (one row per scan, one
        column per atlas/feature/region) or ``xarray`` (a scan x region x feature DataArray). Criteria: project,
        pipeline, version, participant, session, sex, diagnosis, medication, scanner, qc, feature, atlas, region
        (a list means any of), first_episode, follow_up (bool), age ((low, high) years, inclusive)."""
        import pandas as pd

        wanted = "long" if shape == "xarray" else shape
        data = self._json("api/features", {**self._criteria(criteria), "shape": wanted, "limit": limit,
                                           "offset": offset})
        frame = pd.DataFrame(data["rows"], columns=data["columns"])
        if shape == "xarray":
            from incloud_kernel.library.query import to_xarray

            return data["count"], to_xarray(frame)
        return data["count"], frame

    def export_features(self, dest: str | Path, *, fmt: str | None = None, shape: str = "long",
                        **criteria: Any) -> Path:
        """Every matching row you may list, saved to ``dest`` as CSV or Parquet (``fmt`` or ``dest``'s ending)."""
        target = Path(dest)
        fmt = fmt or target.suffix.lstrip(".").lower()
        r = self._get("api/features/export", {**self._criteria(criteria), "format": fmt, "shape": shape})
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(r.content)
        os.replace(tmp, target)
        return target

    def share_features(self, project: str, expires: str, *, user: str | None = None, group: str | None = None,
                       to_project: str | None = None) -> dict[str, Any]:
        """Share ``project``'s features (not its images) with one user, group or project until ``expires``
        (YYYY-MM-DD); project owners only. Returns the grant."""
        return self._request("POST", "api/features/grants", body={
            "project": project, "expires": expires, "user": user, "group": group, "to_project": to_project}).json()

    def feature_grants(self, project: str) -> list[dict[str, Any]]:
        """The feature grants of ``project`` (owners), newest first."""
        return list(self._json("api/features/grants", {"project": project})["items"])

    def revoke_feature_grant(self, grant_id: int) -> dict[str, Any]:
        return self._request("POST", f"api/features/grants/{int(grant_id)}/revoke").json()

    # -- scanner bookings (the server applies every rule: opening hours, quotas, screening, no double booking) ---
    def scanners(self) -> list[dict[str, Any]]:
        """Scanners that can be booked: id, ae_title, modality, site, opening_hours, timezone, manager."""
        return list(self._json("api/scanners")["items"])

    def booking_rules(self) -> dict[str, Any]:
        """The site's booking rules: slot_minutes, approval_required, notice_hours, and the one-key protocol
        sets (what a calendar needs to draw itself; the server still checks every rule)."""
        return dict(self._json("api/scanners")["rules"])

    def bookings(self, **filters: Any) -> list[dict[str, Any]]:
        """Bookings you may see; filters: scanner (AE title), project, from, to (ISO date-times), status."""
        params = {("from" if k == "start" else "to" if k == "end" else k): v for k, v in filters.items()
                  if v is not None}
        return list(self._json("api/bookings", params)["items"])

    def book(self, scanner: str, participant: str | int, protocol: str, start: str, *, minutes: int | None = None,
             end: str | None = None, protocol_version: int | None = None, weekly: int = 1,
             waitlist: bool = False) -> dict[str, Any]:
        """Book ``scanner`` (AE title) for ``participant`` (label, or internal id) with ``protocol`` (a one-key
        set or a protocol key) from ``start`` (ISO; no offset: the scanner's local time). Returns ``{"items":
        [booking...]}``, or ``{"waitlist": request}`` when ``waitlist`` and the slot is taken. A broken rule or a
        taken slot is a one-line ValidationError."""
        body = {"scanner": scanner, "participant": participant, "protocol": protocol, "start": start,
                "minutes": minutes, "end": end, "protocol_version": protocol_version, "weekly": weekly,
                "waitlist": waitlist}
        return self._request("POST", "api/bookings", body={k: v for k, v in body.items() if v is not None}).json()

    def cancel_booking(self, booking_id: int, *, series: bool = False) -> list[dict[str, Any]]:
        return list(self._request("POST", f"api/bookings/{int(booking_id)}/cancel", body={"series": series})
                    .json()["items"])

    def move_booking(self, booking_id: int, start: str, *, minutes: int | None = None,
                     end: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"start": start, "minutes": minutes, "end": end}.items() if v is not None}
        return self._request("POST", f"api/bookings/{int(booking_id)}/move", body=body).json()

    def approve_booking(self, booking_id: int) -> dict[str, Any]:
        """Approve a pending booking of a scanner you manage (needs the ``custom:incloud:approve`` scope)."""
        return self._request("POST", f"api/bookings/{int(booking_id)}/approve", body={}).json()

    def compliance(self, project: str, *, booking: int | None = None) -> list[dict[str, Any]]:
        """The protocol-compliance verdicts of a project's booked series (``booking`` narrows to one booking):
        series, booking, verdict, protocol, deviations as {parameter, booked, acquired}, unverified."""
        params = {} if booking is None else {"booking": int(booking)}
        return list(self._json(f"api/projects/{project}/compliance", params)["items"])

    def scanner_calendar(self, scanner_id: int) -> bytes:
        """The scanner's iCalendar feed (parse it with ``icalendar.Calendar.from_ical``)."""
        return self._get(f"api/scanners/{int(scanner_id)}/calendar.ics").content

    # -- the image of a series (issue 13 item 4: the JupyterLab sidebar's viewer shows the file load() reads) ----
    def nifti_file(self, series: Any) -> dict[str, Any]:
        """The file row (id, relpath, sha256, size) of the series' NIfTI image: the first by archive path when
        there are several (e.g. multi-echo). NotFound when the series has none (or is not yours: the same)."""
        sid = _series_id(series)
        images = sorted((f for f in self.series_files(sid) if f["relpath"].endswith((".nii.gz", ".nii"))),
                        key=lambda f: f["relpath"])
        if not images:
            raise NotFound(f"series #{sid} has no NIfTI image in the archive")
        return images[0]


def _series_id(series: Any) -> int:
    """An id from an int, a row of ``Client.series()`` (pandas) or a dict; ValidationError otherwise."""
    value = series
    if not isinstance(series, (int, str)):
        try:
            value = series["id"]
        except (KeyError, TypeError, IndexError):
            raise ValidationError("series must be a series id, a row of client.series() or a dict with 'id'") \
                from None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"series id must be an integer, got {value!r}") from None


def connect(url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> Client:
    """A client for the INCloud API, checked at once (one round trip to ``api/me``).

    Raises TokenError for a refused token or a token of another user than the workstation's
    (``JUPYTERHUB_USER``), ScopeError for a token without access to the API, ApiError when unreachable.
    """
    url, token, source = resolve_credentials(url, token)
    client = Client(url, token, timeout=timeout, source=source)
    me = client.whoami()
    expected = os.environ.get("JUPYTERHUB_USER")
    if expected and source == "workstation" and me.get("name") != expected:
        raise TokenError(f"the token belongs to another user than this workstation's ({expected})")
    if expected and source != "workstation" and me.get("name") != expected:
        raise TokenError(f"the token in use belongs to user {me.get('name')}, not to {expected} who runs this "
                         "workstation; unset INCLOUD_API_TOKEN to use your own")
    return client
