"""The INCloud API as a hub-managed service: JSON over projects, participants, sessions, series and files.

Every request is identified by the hub (``HubOAuth``: a token header or the service's OAuth cookie), must hold
``access:services!service=incloud-api`` and the route's ``custom:incloud:*`` scope, and then sees exactly what
``incloud_kernel.archive.permissions`` lets that user see: this module never filters rows itself and never
answers a route without an identified user (401) or with a missing scope (403). It must never log a token, and
never put a patient-identifying value into an error message.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Awaitable, Callable

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from incloud_kernel.acquisition.bookings import SlotTaken
from incloud_kernel.acquisition.registry import DuplicateSuspected
from incloud_kernel.archive import permissions
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.config import Config, get_config
from incloud_kernel.db import session_factory
from incloud_kernel.errors import DatabaseError, IncloudError, NotFound, PermissionDenied, ValidationError
from incloud_kernel.site import Site

from hub.roles import API_SERVICE
from hub.services.api import booking, portal, qc, registry

log = logging.getLogger("incloud.api")

#: Query arguments every listing takes; all others are filters handed to the permission layer.
PAGING = ("project", "page", "page_size")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def row_to_dict(row: Any) -> dict[str, Any]:
    """All mapped columns of a row (models hold no identifying values by design)."""
    return {attr.key: _jsonable(getattr(row, attr.key)) for attr in sa_inspect(row).mapper.column_attrs}


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Identifies the caller with the hub in ``prepare`` and refuses (401/403, JSON) before any handler runs."""

    #: Custom scope the route needs on top of access to the service; None: access alone (health, me).
    scope: str | None = None

    def initialize(self, api: Api) -> None:
        self.api = api
        self.hub_auth = api.hub_auth

    def get_current_user(self) -> dict[str, Any] | None:  # set in prepare; never the blocking lookup
        return getattr(self, "_incloud_user", None)

    def get_login_url(self) -> str:
        raise web.HTTPError(401)

    async def prepare(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        except web.HTTPError as exc:  # the hub itself is unreachable
            raise web.HTTPError(503, reason="hub unreachable") from exc
        if not model:
            raise web.HTTPError(401, reason="no valid hub token or session (missing, expired or revoked)")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            raise web.HTTPError(403, reason=f"token may not use the {API_SERVICE} service")
        if self.scope and self.scope not in set(model.get("scopes", [])):
            raise web.HTTPError(403, reason=f"token lacks scope {self.scope}")
        self._incloud_user = model

    def actor_groups(self) -> list[str]:
        return list(self.current_user.get("groups") or [])  # type: ignore[union-attr]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        self.finish(json.dumps({"status": status_code, "message": message}))

    @property
    def scopes(self) -> set[str]:
        """The scopes the caller's token holds (the hub's user model, read in ``prepare``)."""
        return set(self.current_user.get("scopes", []))  # type: ignore[union-attr]

    def require_scope(self, scope: str) -> None:
        """403 unless the caller's token holds ``scope`` (for a route whose methods need different scopes)."""
        if scope not in self.scopes:
            raise web.HTTPError(403, reason=f"token lacks scope {scope}")

    def body(self) -> dict[str, Any]:
        """The JSON object a write sent. Writes must carry a token header (never a cookie alone), so no other
        site's page can post with a user's session."""
        if not self.request.headers.get("Authorization", "").startswith(("token ", "Bearer ", "bearer ")):
            raise web.HTTPError(403, "writes need an API token in the Authorization header", reason="forbidden")
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON", reason="invalid request") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object", reason="invalid request")
        return data

    def send(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=_jsonable))

    async def in_db(self, work: Callable[[Any, Actor], Any]) -> Any:
        """Run ``work(db, actor)`` in a worker thread, turning domain errors into HTTP statuses."""
        user = self.current_user["name"]  # type: ignore[index]
        groups = self.actor_groups()

        def run() -> Any:
            with session_factory(self.api.site.engine)() as db:
                actor = Actor.resolve(db, user, extra_groups=groups)
                return work(db, actor)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, run)
        except SlotTaken as exc:
            raise web.HTTPError(409, str(exc), reason="conflict") from None
        except ValidationError as exc:
            raise web.HTTPError(400, str(exc), reason="invalid request") from None
        except NotFound as exc:
            raise web.HTTPError(404, str(exc), reason="not found") from None
        except PermissionDenied as exc:
            raise web.HTTPError(403, str(exc), reason="forbidden") from None
        except DatabaseError as exc:
            raise web.HTTPError(503, str(exc), reason="database unavailable") from None
        except DuplicateSuspected as exc:  # internal ids and scores only
            raise web.HTTPError(409, str(exc), reason="possible duplicate") from None
        except IncloudError as exc:
            raise web.HTTPError(500, str(exc), reason="error") from None


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        ok = await self.in_db(lambda db, actor: db.execute(text("SELECT 1")).scalar() == 1)
        self.send({"status": "ok" if ok else "degraded", "service": API_SERVICE})


class MeHandler(BaseHandler):
    async def get(self) -> None:
        user = self.current_user
        scopes = sorted(s for s in user.get("scopes", []) if s.startswith("custom:incloud:"))  # type: ignore
        self.send({"name": user["name"], "kind": user.get("kind", "user"),  # type: ignore[index]
                   "groups": sorted(user.get("groups") or []), "scopes": scopes})  # type: ignore[union-attr]


def _int_arg(handler: web.RequestHandler, name: str, default: int) -> int:
    raw = handler.get_query_argument(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPError(400, f"{name} must be an integer", reason="invalid request") from None


class ListHandler(BaseHandler):
    """One page of a permission-filtered listing; filters are query arguments (repeat one for "any of")."""

    scope = "custom:incloud:read"
    lister: Callable[..., permissions.Page[Any]]

    def initialize(self, api: Api, lister: Callable[..., Any]) -> None:  # type: ignore[override]
        super().initialize(api)
        self.lister = lister

    async def get(self) -> None:
        page = _int_arg(self, "page", 1)
        page_size = _int_arg(self, "page_size", 50)
        project = self.get_query_argument("project", None)
        filters: dict[str, Any] = {}
        for name in self.request.query_arguments:
            if name in PAGING:
                continue
            values = self.get_query_arguments(name)
            filters[name] = values[0] if len(values) == 1 else values

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            result = self.lister(db, actor, project=project, page=page, page_size=page_size, **filters)
            return {"items": [row_to_dict(r) for r in result.items], "page": result.page,
                    "page_size": result.page_size, "has_more": result.has_more}

        self.send(await self.in_db(work))


class ProjectHandler(BaseHandler):
    scope = "custom:incloud:read"

    async def get(self, code: str) -> None:
        self.send(await self.in_db(lambda db, actor: row_to_dict(permissions.require(db, actor, code, "read"))))


class ComplianceHandler(BaseHandler):
    """The protocol-compliance verdicts of a project's booked series (its readers; ``?booking=`` narrows)."""

    scope = "custom:incloud:read"

    async def get(self, code: str) -> None:
        booking_id = self.get_query_argument("booking", None)
        if booking_id is not None and not booking_id.isdigit():
            raise web.HTTPError(400, reason="booking must be a booking id (a number)")
        from incloud_kernel.acquisition import compliance

        self.send({"items": await self.in_db(lambda db, actor: compliance.verdicts(
            db, actor, code, booking=None if booking_id is None else int(booking_id)))})


class FileContentHandler(BaseHandler):
    """The bytes of one archived file the caller may read (streamed in 1 MiB chunks)."""

    scope = "custom:incloud:files"

    async def get(self, file_id: str) -> None:
        def work(db: Any, actor: Actor) -> tuple[str, int, str]:
            row = permissions.get_file(db, actor, int(file_id))
            return row.relpath, row.size, row.sha256

        relpath, size, sha = await self.in_db(work)
        path = self.api.site.archive_root / relpath
        try:
            fh = open(path, "rb")
        except OSError:
            raise web.HTTPError(404, f"file #{file_id} is recorded but missing from the archive root",
                                reason="not found") from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(size))
        self.set_header("X-Incloud-Sha256", sha)
        with fh:
            while chunk := fh.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class OpenApiHandler(BaseHandler):
    async def get(self) -> None:
        self.send(openapi(self.api.prefix))


class BrowserHandler(BaseHandler):
    """A route a browser may open without a session: it is sent through the service's OAuth handshake first."""

    async def prepare(self) -> None:
        if "text/html" in self.request.headers.get("Accept", "") and not self.hub_auth.get_token(self):
            # The one redirect: a browser starts the service's OAuth handshake with the hub. No data is sent.
            self.redirect(self.get_oauth_login_url())
            return
        await super().prepare()

    def get_oauth_login_url(self) -> str:
        return HubOAuthenticated.get_login_url(self)


class IndexHandler(BrowserHandler):
    """The service's landing page: the route list (browsers without a session are sent to the hub login)."""

    async def get(self) -> None:
        self.send({"service": API_SERVICE, "openapi": url_path_join(self.api.prefix, "openapi.json")})


async def _hub_answers(api_url: str) -> bool:
    from tornado.httpclient import AsyncHTTPClient

    try:
        r = await AsyncHTTPClient().fetch(api_url.rstrip("/") + "/", request_timeout=3, raise_error=False)
    except OSError:
        return False
    return r.code == 200


class PortalStatusHandler(BaseHandler):
    """The home page's live module status for the caller (JSON; ``hub.services.api.portal``)."""

    async def status(self) -> dict[str, Any]:
        scopes = self.scopes
        hub_ok = "custom:incloud:admin" in scopes and await _hub_answers(self.hub_auth.api_url)
        return await self.in_db(lambda db, actor: portal.status(db, actor, self.api.site, scopes, hub_ok))

    async def get(self) -> None:
        self.send(await self.status())


class PortalFrameHandler(BrowserHandler, PortalStatusHandler):
    """The same status as a tiny page for the home page's hidden frame, which hands it to the home page
    (``postMessage`` to the same origin only). A frame navigation carries the service's OAuth session; a script
    request from the hub's page could not (the service's cookie is not the hub's, and its xsrf cookie is only set
    on navigations)."""

    async def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "frame-ancestors 'self'")
        self.finish(portal.post_message_page(await self.status()))


class QCHandler(BaseHandler):
    """The QC review routes (``hub.services.api.qc``). Reading needs ``custom:incloud:read``; who may rate a series
    or choose a project's policy is the permission layer's decision (QC reviewers and project owners), so that an
    owner without the qc role can still rate. Writes must carry a token header (never a cookie alone), so no
    other site's page can post a decision with a reviewer's session."""

    scope = "custom:incloud:read"

    def actor_groups(self) -> list[str]:
        return qc.reviewer_groups(super().actor_groups(), self.current_user.get("scopes", []))  # type: ignore


class QCQueueHandler(QCHandler):
    async def get(self) -> None:
        project = self.get_query_argument("project", None)
        self.send(await self.in_db(lambda db, actor: qc.queue(db, actor, project)))


class QCReviewHandler(QCHandler):
    async def post(self, series_id: str) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: qc.review(db, actor, int(series_id), body)))


class QCPolicyHandler(QCHandler):
    async def get(self) -> None:
        project = self.get_query_argument("project", None)
        self.send(await self.in_db(lambda db, actor: qc.policy(db, actor, project)))

    async def put(self) -> None:
        project = self.get_query_argument("project", None)
        body = self.body()
        self.send(await self.in_db(lambda db, actor: qc.set_policy(db, actor, project, body)))


class QCUsableHandler(QCHandler):
    async def get(self) -> None:
        project = self.get_query_argument("project", None)
        filters = {k: self.get_query_arguments(k) for k in self.request.query_arguments if k != "project"}
        filters = {k: v[0] if len(v) == 1 else v for k, v in filters.items()}
        self.send(await self.in_db(lambda db, actor: qc.usable(db, actor, project, filters)))


class ScannersHandler(BaseHandler):
    scope = booking.BOOK_SCOPE

    async def get(self) -> None:
        self.send(await self.in_db(booking.scanners))


class BookingsHandler(BaseHandler):
    """List the bookings you may see (GET; filters scanner, project, from, to, status) or book (POST)."""

    scope = booking.BOOK_SCOPE

    async def get(self) -> None:
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.send(await self.in_db(lambda db, actor: booking.list_bookings(db, actor, args)))

    async def post(self) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: booking.create(db, actor, body)))


class BookingCancelHandler(BaseHandler):
    scope = booking.BOOK_SCOPE

    async def post(self, booking_id: str) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: booking.cancel(db, actor, int(booking_id), body)))


class BookingMoveHandler(BaseHandler):
    scope = booking.BOOK_SCOPE

    async def post(self, booking_id: str) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: booking.move(db, actor, int(booking_id), body)))


class BookingApproveHandler(BaseHandler):
    scope = booking.APPROVE_SCOPE

    async def post(self, booking_id: str) -> None:
        self.body()  # a token header, as for every write
        self.send(await self.in_db(lambda db, actor: booking.approve(db, actor, int(booking_id))))


class ScannerCalendarHandler(BaseHandler):
    """A scanner's iCalendar feed (text/calendar); bookings you may not see in detail show as Busy."""

    scope = booking.BOOK_SCOPE

    async def get(self, scanner_id: str) -> None:
        data = await self.in_db(lambda db, actor: booking.calendar(db, actor, int(scanner_id)))
        self.set_header("Content-Type", "text/calendar; charset=utf-8")
        self.finish(data)
class RegistryHandler(BaseHandler):
    """Identity routes of the participant registry (``hub.services.api.registry``): the registry scope, and the
    registrar group counted only with it; bodies and the reason header are never logged."""

    scope = registry.REGISTRY_SCOPE

    def actor_groups(self) -> list[str]:
        return registry.registrar_groups(super().actor_groups(), self.current_user.get("scopes", []))  # type: ignore

    @property
    def cfg(self) -> Config:
        return self.api.site.config

    def reason(self) -> str:
        return self.request.headers.get("X-Incloud-Reason", "")


class RegistryPersonsHandler(RegistryHandler):
    async def post(self) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: registry.register(db, actor, self.cfg, body)))


class RegistryFindHandler(RegistryHandler):
    async def post(self) -> None:
        body, reason = self.body(), self.reason()
        self.send(await self.in_db(lambda db, actor: registry.find(db, actor, self.cfg, reason, body)))


class RegistryPersonHandler(RegistryHandler):
    async def get(self, uid: str) -> None:
        reason = self.reason()
        self.send(await self.in_db(lambda db, actor: registry.show(db, actor, self.cfg, uid, reason)))


class RegistryEnrolHandler(RegistryHandler):
    async def post(self, uid: str) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: registry.enrol(db, actor, self.cfg, uid, body)))


class RegistryDecisionHandler(RegistryHandler):
    async def post(self) -> None:
        body = self.body()
        self.send(await self.in_db(lambda db, actor: registry.decide(db, actor, body)))


class RegistryAttributesHandler(BaseHandler):
    """Pseudonymous research attributes: read with the read scope, changed with the write scope and a project
    role (members and owners), as any participant of the archive."""

    scope = "custom:incloud:read"

    async def get(self, pseudonym: str) -> None:
        self.send(await self.in_db(lambda db, actor: registry.attributes(db, actor, pseudonym, None)))

    async def put(self, pseudonym: str) -> None:
        self.require_scope("custom:incloud:write")
        body = self.body()
        self.send(await self.in_db(lambda db, actor: registry.attributes(db, actor, pseudonym, body)))


class CallbackHandler(HubOAuthCallbackHandler):
    """Completes the OAuth handshake; without a code it answers 403 (it never serves data)."""

    def initialize(self, api: Api) -> None:
        self.hub_auth = api.hub_auth

    async def get(self) -> None:
        if not self.get_argument("code", "") or not self.get_argument("state", ""):
            raise web.HTTPError(403, "OAuth callback without a code")
        await super().get()


@dataclass(frozen=True)
class Route:
    """One route of the API: path under the service prefix, handler, scope and description (for OpenAPI)."""

    path: str
    handler: type
    summary: str
    kwargs: Callable[[Any], dict[str, Any]] | None = None


def _lister(fn: Callable[..., Any]) -> Callable[[Any], dict[str, Any]]:
    return lambda api: {"api": api, "lister": fn}


ROUTES: list[Route] = [
    Route("", IndexHandler, "Service index"),
    Route("health", HealthHandler, "Health of the service and its database"),
    Route("openapi.json", OpenApiHandler, "This OpenAPI description"),
    Route("api/me", MeHandler, "Who the token belongs to, its groups and INCloud scopes"),
    Route("api/projects", ListHandler, "Projects you may read", _lister(permissions.list_projects)),
    Route(r"api/projects/([A-Za-z0-9]+)", ProjectHandler, "One project by code"),
    Route(r"api/projects/([A-Za-z0-9]+)/compliance", ComplianceHandler, "Protocol-compliance verdicts of a "
          "project's booked series: compliant, deviation (parameter, booked, acquired) or not_booked (filter: booking)"),
    Route("api/participants", ListHandler, "Participants of your projects",
          _lister(permissions.list_participants)),
    Route("api/sessions", ListHandler, "Sessions of your projects", _lister(permissions.list_sessions)),
    Route("api/series", ListHandler, "Series of your projects (filters: modality, datatype, suffix, ...; "
          "datatype=sourcedata: series no BIDS rule names)",
          _lister(permissions.list_series)),
    Route("api/files", ListHandler, "Files of your projects", _lister(permissions.list_files)),
    Route(r"api/files/([0-9]+)/content", FileContentHandler, "Bytes of one file"),
    Route("api/portal", PortalStatusHandler, "Live status of the home page's modules you may see"),
    Route("api/qc/queue", QCQueueHandler, "QC review queue of a project: series, indices, flags, decisions"),
    Route(r"api/qc/series/([0-9]+)/review", QCReviewHandler, "Rate a series: pass, fail, caveat (with a reason) "
          "or pending; QC reviewers and project owners"),
    Route("api/qc/policy", QCPolicyHandler, "QC states that enter processing in a project (PUT: owners)"),
    Route("api/qc/usable", QCUsableHandler, "Series of a project that enter processing now"),
    Route("api/scanners", ScannersHandler, "Scanners that can be booked: AE title, modality, opening hours"),
    Route(r"api/scanners/([0-9]+)/calendar.ics", ScannerCalendarHandler, "A scanner's bookings as iCalendar"),
    Route("api/bookings", BookingsHandler, "Bookings you may see (GET) or book a slot (POST: scanner, participant, "
          "protocol, start, minutes or end, weekly, waitlist)"),
    Route(r"api/bookings/([0-9]+)/cancel", BookingCancelHandler, "Cancel a booking (or its weekly series)"),
    Route(r"api/bookings/([0-9]+)/move", BookingMoveHandler, "Move a booking to another slot"),
    Route(r"api/bookings/([0-9]+)/approve", BookingApproveHandler, "Approve a pending booking (scanner managers)"),
    Route("api/registry/persons", RegistryPersonsHandler, "Register a person (registrars; identity in the body; "
          "409 with internal ids for a suspected duplicate)"),
    Route("api/registry/find", RegistryFindHandler, "Exact look-up by record number or names with birth date "
          "(registrars; reason in X-Incloud-Reason)"),
    Route(r"api/registry/persons/(P[A-Z2-7]{16})", RegistryPersonHandler, "A person's identity and enrolments "
          "(registrars; reason in X-Incloud-Reason; audited)"),
    Route(r"api/registry/persons/(P[A-Z2-7]{16})/enrol", RegistryEnrolHandler, "Enrol a person in a project: its "
          "pseudonym (registrars)"),
    Route("api/registry/decisions", RegistryDecisionHandler, "Merge two persons or keep them apart (registrars)"),
    Route(r"api/registry/attributes/([A-Za-z0-9]+)", RegistryAttributesHandler, "Research attributes of a "
          "participant by pseudonym (PUT: project members)"),
    Route("portal", PortalFrameHandler, "The same status for the home page's frame (HTML)"),
    Route("oauth_callback", CallbackHandler, "OAuth handshake with the hub"),
]


def all_routes() -> list[Route]:
    """``ROUTES`` plus the pipeline, feature-library, workshop, clinic upload and CADS routes
    (``hub.services.api.pipeline``, ``.features``, ``.workshops``, ``.upload`` and ``.cads``, which import this
    module)."""
    from hub.services.api.cads import ROUTES as CADS_ROUTES
    from hub.services.api.features import ROUTES as FEATURE_ROUTES
    from hub.services.api.pipeline import ROUTES as PIPELINE_ROUTES
    from hub.services.api.upload import ROUTES as UPLOAD_ROUTES
    from hub.services.api.workshops import ROUTES as WORKSHOP_ROUTES

    return ROUTES + PIPELINE_ROUTES + FEATURE_ROUTES + WORKSHOP_ROUTES + UPLOAD_ROUTES + CADS_ROUTES


def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI 3.1 description built from ``ROUTES`` (so it cannot drift from the route table)."""
    paths: dict[str, Any] = {}
    for route in all_routes():
        path = "/" + route.path.replace(r"([A-Za-z0-9_-]+)", "{ticket}").replace(r"([A-Za-z0-9]+)", "{code}").replace(r"([0-9]+)", "{id}") \
            .replace(r"(P[A-Z2-7]{16})", "{uid}").replace("(.*)", "{path}")
        scope = getattr(route.handler, "scope", None)
        op: dict[str, Any] = {
            "summary": route.summary,
            "security": [{"hubToken": [s for s in (f"access:services!service={API_SERVICE}", scope) if s]}],
            "responses": {"200": {"description": "OK"}, "401": {"description": "no valid token"},
                          "403": {"description": "missing scope or role"}},
        }
        if route.handler is ListHandler:
            op["parameters"] = [
                {"name": "project", "in": "query", "schema": {"type": "string"}},
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {"name": "page_size", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": permissions.MAX_PAGE_SIZE}},
            ]
        methods = list(getattr(route.handler, "methods", ())) or \
            [m for m in ("get", "post", "put") if m in vars(route.handler)] or ["get"]
        paths[path] = {m: op for m in methods}
    return {
        "openapi": "3.1.0",
        "info": {"title": "INCloud API", "version": "1"},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {"securitySchemes": {"hubToken": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "'token <JupyterHub API token>' (or the service's OAuth session cookie)"}}},
    }


class UncachedHubOAuth(HubOAuth):
    """HubOAuth that asks the hub about every token (HubAuth's ``cache_max_age = 0`` means "cache forever")."""

    async def _check_hub_authorization(self, url, api_token, cache_key=None, use_cache=True):  # type: ignore
        return await super()._check_hub_authorization(url, api_token, cache_key, use_cache=False)


class Api:
    """The service's state: the site (database, archive root), the hub auth client and the URL prefix."""

    def __init__(self, site: Site, hub_auth: HubOAuth, prefix: str) -> None:
        self.site = site
        self.hub_auth = hub_auth
        self.prefix = prefix


def make_app(cfg: Config | None = None, hub_auth: HubOAuth | None = None) -> web.Application:
    """The tornado application; ``JUPYTERHUB_*`` variables (set by the hub) configure ``HubOAuth``."""
    cfg = cfg or get_config()
    site = Site.open(cfg)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{API_SERVICE}/")
    if hub_auth is None:
        seconds = cfg.hub.token_cache_seconds
        hub_auth = HubOAuth(cache_max_age=seconds) if seconds > 0 else UncachedHubOAuth()
    api = Api(site, hub_auth, prefix)
    handlers = []
    for route in all_routes():
        kwargs = route.kwargs(api) if route.kwargs else {"api": api}
        handlers.append((url_path_join(prefix, route.path), route.handler, kwargs))
    return web.Application(handlers, cookie_secret=os.urandom(32), xsrf_cookies=False)


def main() -> None:
    """Serve on the URL the hub gives (``JUPYTERHUB_SERVICE_URL``); exits with one line on a bad site."""
    from urllib.parse import urlparse

    logging.basicConfig(level=logging.INFO, format="[incloud-api %(levelname)s] %(message)s")
    try:
        app = make_app()
    except IncloudError as exc:
        raise SystemExit(f"error: {exc}") from None
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890"))
    server = HTTPServer(app, xheaders=True)
    server.listen(url.port or 80, url.hostname or "127.0.0.1")
    log.info("INCloud API listening on %s", url.geturl())
    IOLoop.current().start()
