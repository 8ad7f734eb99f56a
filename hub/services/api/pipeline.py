"""The INCloud API's pipeline routes: list pipelines, start a run, watch its progress, read how its derivatives
were made, cancel it.

A run is started for the calling user (``custom:incloud:write`` and write on the project, checked by
``incloud_kernel.pipeline.runs`` through ``archive.permissions``) and driven by a background process of the
service (``executor.spawn_driver``), so no request waits on Dask. Progress and cancel follow the same rules as
the CLI (read the project to watch; own the run or manage the project to cancel). A running run's Dask
dashboard is proxied for its owner (``hub.services.api.dashboard``); progress gives its link. Never returns a
token, the dashboard's internal address or a patient-identifying value: inputs are series ids and pseudonymous
labels.
"""
from __future__ import annotations

from typing import Any

from tornado import web

from hub.services.api.app import BaseHandler, Route
from hub.services.api.dashboard import DashboardHandler
from incloud_kernel.archive.permissions import Actor

READ, WRITE = "custom:incloud:read", "custom:incloud:write"


class PipelineHandler(BaseHandler):
    scope = READ

    @property
    def heartbeat(self) -> float:
        return self.api.site.config.compute.heartbeat_interval

    def linked(self, report: dict[str, Any]) -> dict[str, Any]:
        """``report`` with its dashboard path made an absolute URL on the host the caller used (the proxy's)."""
        if report.get("dashboard"):
            report["dashboard"] = f"{self.request.protocol}://{self.request.host}{report['dashboard']}"
        return report


class PipelinesHandler(PipelineHandler):
    """The site's pipelines."""

    async def get(self) -> None:
        from incloud_kernel.pipeline.pipeline import available

        self.send({"items": [{"name": p.name, "version": p.version, "requires_qc": p.requires_qc,
                              "description": p.description,
                              "stages": [{"name": s.name, "version": s.version, "datatypes": list(s.datatypes),
                                          "suffixes": list(s.suffixes), "after": list(s.after)} for s in p.stages]}
                             for p in available()]})


class RunsHandler(PipelineHandler):
    """GET: the newest runs you may see (``?project=``); POST ``{"pipeline", "project"}``: start a run."""

    methods = ("get", "post")

    async def get(self) -> None:
        from incloud_kernel.pipeline import runs

        project = self.get_query_argument("project", None)

        def work(db: Any, actor: Actor) -> list[dict[str, Any]]:
            return [self.linked(runs.progress(db, actor, r.id, self.heartbeat, with_tasks=False))
                    for r in runs.list_runs(db, actor, project)]

        self.send({"items": await self.in_db(work)})

    async def post(self) -> None:
        from incloud_kernel.pipeline import runs
        from incloud_kernel.pipeline.executor import spawn_driver

        self.require_scope(WRITE)
        body = self.body()
        name, project = body.get("pipeline"), body.get("project")
        if not isinstance(name, str) or not isinstance(project, str):
            raise web.HTTPError(400, "give 'pipeline' and 'project' as strings", reason="invalid request")
        site = self.api.site

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            run = runs.create_run(db, actor, name, project, backend=site.config.compute.backend)
            db.commit()
            return {"run": run.id, "tasks": len(run.tasks), "state": run.state}

        created = await self.in_db(work)
        spawn_driver(site.config.home, created["run"])
        self.set_status(201)
        self.send(created)


class RunHandler(PipelineHandler):
    """Progress of one run: counts per stage and subject, and every input with its error and outputs."""

    async def get(self, run_id: str) -> None:
        from incloud_kernel.pipeline import runs

        self.send(self.linked(await self.in_db(lambda db, actor: runs.progress(db, actor, int(run_id),
                                                                               self.heartbeat))))


class RunProvenanceHandler(PipelineHandler):
    """How each derivative of one run was made (``incloud_kernel.pipeline.runs.provenance_of``)."""

    async def get(self, run_id: str) -> None:
        from incloud_kernel.pipeline import runs

        self.send({"items": await self.in_db(lambda db, actor: runs.provenance_of(db, actor, int(run_id)))})


class RunCancelHandler(PipelineHandler):
    """POST: cancel a run you own (or one of a project you manage)."""

    methods = ("post",)
    scope = WRITE

    async def post(self, run_id: str) -> None:
        from incloud_kernel.pipeline import runs

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            run = runs.cancel(db, actor, int(run_id), self.heartbeat)
            db.commit()
            return {"run": run.id, "state": run.state}

        self.send(await self.in_db(work))


ROUTES: list[Route] = [
    Route("api/pipelines", PipelinesHandler, "Pipelines of this site, their stages and versions"),
    Route("api/runs", RunsHandler, "Pipeline runs you may see (GET) or start (POST {pipeline, project})"),
    Route(r"api/runs/([0-9]+)", RunHandler, "Progress of one run per stage and subject, errors and outputs per input"),
    Route(r"api/runs/([0-9]+)/provenance", RunProvenanceHandler, "How each derivative of a run was made: versions, "
          "parameters, input checksums, libraries and image digest, host, run time, outputs"),
    Route(r"api/runs/([0-9]+)/cancel", RunCancelHandler, "Cancel a run (POST)"),
    Route(r"runs/([0-9]+)/dashboard/(.*)", DashboardHandler, "The Dask dashboard of a running run (pages and "
          "websockets; its owner and site admins only; 404 once the run has ended)"),
]
