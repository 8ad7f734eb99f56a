"""The INCloud API's feature-library routes: query (count over all data, rows you may list), export, and grants.

``GET api/features?diagnosis=SCZ&age=18-40&feature=gmv&atlas=aal&qc=pass`` answers ``{"count", "listed",
"rows"}``: the count over every project (masked below ``library.min_cell``), the permitted scans that match and
one page of their rows (``shape`` long or wide, ``limit`` scans from ``offset``). A criterion repeated means "any
of". ``GET api/features/export?format=csv|parquet`` sends every permitted matching row as a file. Grants
(``api/features/grants``) are listed, made and revoked by project owners. Every permission decision is
``incloud_kernel.archive.permissions``'; the routes only parse arguments. Never logs criteria values or rows.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tornado import web

from hub.services.api.app import BaseHandler, Route
from incloud_kernel.archive.permissions import Actor

READ, WRITE = "custom:incloud:read", "custom:incloud:write"
#: Query arguments that are not criteria.
CONTROLS = ("shape", "limit", "offset", "format")


def _table_shape(shape: str) -> str:
    """long or wide: the shapes a table (JSON, CSV, Parquet) can carry; the client builds the xarray view."""
    from incloud_kernel.errors import ValidationError

    if shape not in ("long", "wide"):
        raise ValidationError("shape must be long or wide (the client builds xarray from long rows)")
    return shape


def _json_rows(frame: Any) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (NaN and missing values become null)."""
    records = frame.astype(object).to_dict("records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]


class FeaturesHandler(BaseHandler):
    scope = READ

    def criteria(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.request.query_arguments:
            if name in CONTROLS:
                continue
            values = self.get_query_arguments(name)
            out[name] = values[0] if len(values) == 1 else values
        return out

    def int_arg(self, name: str, default: int | None) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be a whole number", reason="invalid request") from None


class FeatureQueryHandler(FeaturesHandler):
    """One page of the permitted rows that match, with the count over all data."""

    async def get(self) -> None:
        from incloud_kernel.library import query

        criteria, shape = self.criteria(), self.get_query_argument("shape", "long")
        limit, offset = self.int_arg("limit", 100), self.int_arg("offset", 0)

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            _table_shape(shape)
            result = query.search(self.api.site, db, actor, limit=limit, offset=offset or 0, **criteria)
            db.commit()  # the query's audit event
            frame = result.frame(shape)
            return {"count": result.count, "listed": result.listed, "shape": shape, "limit": limit,
                    "offset": offset, "columns": list(frame.columns), "rows": _json_rows(frame)}

        self.send(await self.in_db(work))


class FeatureExportHandler(FeaturesHandler):
    """Every permitted matching row as CSV or Parquet (``format``), long or wide (``shape``)."""

    async def get(self) -> None:
        from incloud_kernel.library import query

        criteria, shape = self.criteria(), self.get_query_argument("shape", "long")
        fmt = self.get_query_argument("format", "csv")

        def work(db: Any, actor: Actor) -> bytes:
            _table_shape(shape)
            if fmt not in query.EXPORT_FORMATS:
                from incloud_kernel.errors import ValidationError

                raise ValidationError(f"format must be one of {', '.join(query.EXPORT_FORMATS)}")
            result = query.search(self.api.site, db, actor, limit=None, **criteria)
            db.commit()
            with tempfile.TemporaryDirectory() as tmp:
                path = query.export(result.frame(shape), Path(tmp) / f"features.{fmt}", fmt)
                return path.read_bytes()

        data = await self.in_db(work)
        self.set_header("Content-Type", "text/csv" if fmt == "csv" else "application/vnd.apache.parquet")
        self.set_header("Content-Disposition", f'attachment; filename="features.{fmt}"')
        self.finish(data)


class FeatureCatalogHandler(FeaturesHandler):
    """The tables (library partitions) the caller may read now: the manifest a workstation's catalog syncs to."""

    async def get(self) -> None:
        from dataclasses import asdict

        from incloud_kernel.library import catalog

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            return {"user": actor.user, "tables": [asdict(t) for t in catalog.manifest(self.api.site, db, actor)]}

        self.send(await self.in_db(work))


class FeatureCatalogTableHandler(FeaturesHandler):
    """One permitted partition (``project``, ``pipeline``, ``version``) as one Parquet file; 404 otherwise."""

    async def get(self) -> None:
        from incloud_kernel.library import catalog

        key = [self.get_query_argument(k, "") for k in ("project", "pipeline", "version")]

        def work(db: Any, actor: Actor) -> Path:
            folder = Path(tempfile.mkdtemp(prefix="incloud-table-"))
            try:
                path = catalog.write_table(self.api.site, db, actor, *key, folder / "table.parquet")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            db.commit()  # the download's audit event
            return path

        path = await self.in_db(work)
        try:  # streamed in chunks: a big partition never sits whole in this process's memory
            self.set_header("Content-Type", "application/vnd.apache.parquet")
            self.set_header("Content-Length", str(path.stat().st_size))
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    self.write(chunk)
                    await self.flush()
            self.finish()
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)


def _grant_dict(view: Any) -> dict[str, Any]:
    return dict(vars(view))


class FeatureGrantsHandler(FeaturesHandler):
    """GET ``?project=CODE``: the project's feature grants; POST ``{"project", "user"|"group"|"to_project",
    "expires"}``: share its features (owners)."""

    methods = ("get", "post")

    async def get(self) -> None:
        from incloud_kernel.library import sharing

        project = self.get_query_argument("project", "")
        self.send({"items": await self.in_db(
            lambda db, actor: [_grant_dict(g) for g in sharing.list_grants(db, actor, project)])})

    async def post(self) -> None:
        from incloud_kernel.library import sharing

        self.require_scope(WRITE)
        body = self.body()
        unknown = set(body) - {"project", "user", "group", "to_project", "expires"}
        if unknown or not isinstance(body.get("project"), str):
            raise web.HTTPError(400, "give project, expires and one of user, group, to_project",
                                reason="invalid request")

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            view = sharing.grant(db, actor, body["project"], expires=body.get("expires"), user=body.get("user"),
                                 group=body.get("group"), to_project=body.get("to_project"))
            db.commit()
            return _grant_dict(view)

        created = await self.in_db(work)
        self.set_status(201)
        self.send(created)


class FeatureGrantRevokeHandler(FeaturesHandler):
    methods = ("post",)
    scope = WRITE

    async def post(self, grant_id: str) -> None:
        from incloud_kernel.library import sharing

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            view = sharing.revoke(db, actor, int(grant_id))
            db.commit()
            return _grant_dict(view)

        self.send(await self.in_db(work))


ROUTES: list[Route] = [
    Route("api/features", FeatureQueryHandler, "Feature library: the count over all data (masked below the site's "
          "minimum cell) and one page of the matching rows you may list (criteria as query arguments)"),
    Route("api/features/export", FeatureExportHandler, "Every matching row you may list as CSV or Parquet"),
    Route("api/features/catalog", FeatureCatalogHandler, "The feature tables (library partitions) you may read "
          "now: what incloud_kernel.features.catalog() syncs your workstation's Intake catalog to"),
    Route("api/features/catalog/table", FeatureCatalogTableHandler, "One feature table you may read (project, "
          "pipeline, version) as Parquet"),
    Route("api/features/grants", FeatureGrantsHandler, "Feature grants of a project (GET) or share its features "
          "with a user, group or project until a date (POST; owners)"),
    Route(r"api/features/grants/([0-9]+)/revoke", FeatureGrantRevokeHandler, "End a feature grant (owners)"),
]
