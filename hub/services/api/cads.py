"""The INCloud API's computer-aided diagnosis routes: a participant's report (JSON or PDF) and the model registry.

``GET api/cads/report/<series>?model=&threshold=`` answers the report of one series for whoever may read that
series' project (any role: a clinician collaborator gets it; anyone else gets 403, the same for a series that
does not exist); ``GET api/cads/report/<series>/pdf`` the PDF for the clinical record; ``GET api/cads/scans`` the scans whose report
the user may open; ``GET api/cads/models`` the versions with their metrics and decisions (no training series ids). Retraining is the site console's
(``incloud cads retrain``). Every permission decision is ``incloud_kernel.archive.permissions``'; the routes only
parse arguments. Never logs a report's content.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tornado import web

from hub.services.api.app import BaseHandler, Route
from incloud_kernel.archive.permissions import Actor

#: Clinicians hold it (hub.roles: the clinician role); researchers read features, not reports.
REPORTS = "custom:incloud:reports"


class CadsHandler(BaseHandler):
    scope = REPORTS

    def report_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        raw_model = self.get_query_argument("model", None)
        raw_threshold = self.get_query_argument("threshold", None)
        try:
            if raw_model:
                out["model"] = int(raw_model)
            if raw_threshold:
                out["threshold"] = float(raw_threshold)
        except ValueError:
            raise web.HTTPError(400, "model must be a whole number and threshold a number",
                                reason="invalid request") from None
        if "threshold" in out and not 0.5 <= out["threshold"] <= 10:
            raise web.HTTPError(400, "threshold must be between 0.5 and 10", reason="invalid request")
        return out


class CadsReportHandler(CadsHandler):
    """The report of one series as JSON."""

    async def get(self, series: str) -> None:
        from incloud_kernel.cads import report

        options = self.report_options()

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            out = report.build(self.api.site, db, actor, int(series), **options)
            db.commit()  # the report's audit event
            return out

        self.send(await self.in_db(work))


class CadsReportPdfHandler(CadsHandler):
    """The report of one series as a PDF for the clinical record."""

    async def get(self, series: str) -> None:
        from incloud_kernel.cads import render, report

        options = self.report_options()

        def work(db: Any, actor: Actor) -> bytes:
            out = report.build(self.api.site, db, actor, int(series), **options)
            db.commit()
            with tempfile.TemporaryDirectory() as tmp:
                return render.pdf(out, Path(tmp) / "report.pdf").read_bytes()

        data = await self.in_db(work)
        self.set_header("Content-Type", "application/pdf")
        self.set_header("Content-Disposition", f'inline; filename="cads-series-{int(series)}.pdf"')
        self.finish(data)


class CadsScansHandler(CadsHandler):
    """The scans whose report the user may open."""

    async def get(self) -> None:
        from incloud_kernel.cads import report

        self.send({"items": await self.in_db(lambda db, actor: report.available(self.api.site, db, actor))})


class CadsModelsHandler(CadsHandler):
    """Every model version with metrics and decision."""

    async def get(self) -> None:
        from incloud_kernel.cads import registry

        self.send({"items": await self.in_db(lambda db, actor: registry.list_models(db))})


ROUTES: list[Route] = [
    Route(r"api/cads/report/([0-9]+)", CadsReportHandler, "CADS report of a series: flagged regions with z-scores "
          "and centiles, probabilities with their ranges, model version and validated performance (readers of "
          "its project)"),
    Route(r"api/cads/report/([0-9]+)/pdf", CadsReportPdfHandler, "The CADS report of a series as PDF"),
    Route("api/cads/scans", CadsScansHandler, "Scans with features whose CADS report you may open"),
    Route("api/cads/models", CadsModelsHandler, "CADS model versions with held-out metrics and retraining "
          "decisions"),
]
