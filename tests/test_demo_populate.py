"""README command A's demo shows every module populated (issue 13 item 6): ``incloud_kernel.demo.populate``, the
function ``incloud demo populate`` runs and ``scripts/start.sh`` starts in the background after the hub, takes a
small DEMO project (one synthetic 3 mm T1w with the sidecar ingest writes) through QC, the features pipeline, the
feature library, a CADS model on a synthetic reference cohort and a report, and each demo user then finds theirs
through the API: the researcher DEMO's feature rows, the clinician the report (the researcher, without the reports
scope, gets 403). A second run starts nothing new."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from api_thread import serving
from demo_site import PopulatedDemo, populated_demo, table_auth  # noqa: F401 - the shared populated site
from sqlalchemy import func, select

from incloud_kernel import cads, demo
from incloud_kernel.cads import render
from incloud_kernel.archive.models import CadsModel, PipelineRun, QCIndex
from incloud_kernel.client import Client
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied

pytestmark = pytest.mark.timeout(900)
START = Path(__file__).resolve().parents[1] / "scripts" / "start.sh"


def test_start_populates_the_demo_in_the_background_as_the_service_user() -> None:
    text = START.read_text()
    call = re.search(r'\( trap \'\' HUP; run_exec "\$INCLOUD" demo populate \) >> "\$DEMO_LOG" 2>&1 < /dev/null &',
                     text)
    assert call and call.start() > text.index('"$INCLOUD" hub start')  # after the hub: the URL is not delayed
    assert "what to open first" in text.lower()


def test_populate_gives_qc_features_a_model_and_a_report_each_demo_user_sees(
        populated_demo: PopulatedDemo) -> None:  # noqa: F811 - the fixture imported above
    from hub.services.api.app import make_app

    site, series, summary = populated_demo.site, populated_demo.series, populated_demo.summary
    print("\n".join(populated_demo.lines))
    assert summary.qc_indices == 1 and summary.feature_scans == 1 and summary.report_series == series
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(QCIndex).where(QCIndex.series_id == series)) > 5
        models = db.scalar(select(func.count()).select_from(CadsModel))
        harmoniser = db.scalars(select(CadsModel)).one().metrics["harmoniser"]
    assert models == 1 and harmoniser["method"] == "combat" and "Siemens Prisma_fit 3T" in harmoniser["sites"]
    assert demo.what_to_open(summary)[-1] == f"as clinician: CADS reports, series {series} (model v1)"
    app = make_app(site.config, hub_auth=table_auth())
    with serving(app) as url:
        researcher, clinician = Client(url, "t-researcher"), Client(url, "t-clinician")
        _, rows = researcher.features(project="DEMO", feature="gm_volume")
        assert len(rows) > 20 and set(rows["series"]) == {series}  # DEMO's own rows, from the pipeline
        assert Client(url, "t-reviewer").qc_queue("DEMO")["items"][0]["indices"]["cjv"] > 0
        assert series in {s["series"] for s in cads.fetch_scans(clinician)}
        report = cads.fetch_report(clinician, series)
        assert report["pseudonym"] == "INC0001" and report["model"]["version"] == 1
        assert report["scan"]["scanner"] == "Siemens Prisma_fit 3T" and report["scan"]["age"] == 46
        assert report["n_features"] > 20 and all(r["feature"].split("/")[1] == "gm_volume" for r in report["regions"])
        assert not any("scanner not in the training data" in w for w in report["warnings"])
        # the reader sees that the model learnt from a synthetic cohort (the model's note), while DEMOREF, a
        # project the clinician is not in, is counted and never named
        assert [(p["code"], p["scans"]) for p in report["model"]["training_projects"]] == [
            (None, report["model"]["trained_on"])]
        assert report["model"]["note"] == demo.MODEL_NOTE
        line = render.performance_line(report)
        assert "not for clinical use" in line and demo.REFERENCE + " (" not in line
        with pytest.raises(PermissionDenied):  # a researcher holds no reports scope
            cads.fetch_report(researcher, series)
    # a later start: nothing new is started or trained
    again = demo.populate(site, reference_size=120, validate=False, say=lambda line: None)
    assert again.report_series == series and again.model_version == 1
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(PipelineRun)) == 2  # one QC run, one features run
        assert db.scalar(select(func.count()).select_from(CadsModel)) == 1
