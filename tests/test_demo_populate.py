"""README command A's demo shows every module populated (issue 13 item 6): ``incloud_kernel.demo.populate``, the
function ``incloud demo populate`` runs and ``scripts/start.sh`` starts in the background after the hub, takes a
small DEMO project (one synthetic 3 mm T1w with the sidecar ingest writes) through QC, the features pipeline, the
feature library, a CADS model on a synthetic reference cohort and a report, and each demo user then finds theirs
through the API: the researcher DEMO's feature rows, the clinician the report (the researcher, without the reports
scope, gets 403). A second run starts nothing new."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from api_thread import serving
from jupyterhub.services.auth import HubOAuth
from sqlalchemy import func, select

from hub.roles import API_SERVICE, scopes_of
from incloud_kernel import cads, demo
from incloud_kernel.archive import records
from incloud_kernel.archive.models import CadsModel, PipelineRun, QCIndex
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.client import Client
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from qc_inputs import synth_t1  # noqa: E402

pytestmark = pytest.mark.timeout(900)
START = Path(__file__).resolve().parents[1] / "scripts" / "start.sh"
ADMIN = Actor.console("tester")
ACCESS = f"access:services!service={API_SERVICE}"
TOKENS = {f"t-{name}": {"name": name, "kind": "user", "groups": [group],
                        "scopes": sorted({ACCESS, *scopes_of([group], False)})}
          for name, group in (("researcher", "researcher"), ("reviewer", "qc_reviewer"), ("clinician", "clinician"))}
#: What dcm2niix writes from the synthetic DICOM that de-identification keeps (age, sex, the scanner).
SIDECAR = {"PatientAge": 46, "PatientSex": "M", "Manufacturer": "Siemens", "ManufacturersModelName": "Prisma_fit",
           "MagneticFieldStrength": 3, "RepetitionTime": 2.3}


class _TableAuth(HubOAuth):
    async def get_user(self, handler, sync=True):  # type: ignore[no-untyped-def, override]
        header = handler.request.headers.get("Authorization", "")
        return TOKENS.get(header.split(" ", 1)[-1]) if header.startswith("token ") else None


def test_start_populates_the_demo_in_the_background_as_the_service_user() -> None:
    text = START.read_text()
    call = re.search(r'\( trap \'\' HUP; run_exec "\$INCLOUD" demo populate \) >> "\$DEMO_LOG" 2>&1 < /dev/null &',
                     text)
    assert call and call.start() > text.index('"$INCLOUD" hub start')  # after the hub: the URL is not delayed
    assert "what to open first" in text.lower()


def _demo_site(site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """DEMO as start.sh leaves it before populating: one participant, one T1w with its sidecar, the demo users
    granted as start.sh grants them. Returns the T1w's series id."""
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_COMPUTE_WORKERS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_HEARTBEAT_INTERVAL", "1")
    site.config = config.get_config(reload=True)
    t1 = synth_t1(tmp_path, seed=5, voxel_mm=3.0)
    with records.transaction(site) as db:
        create_project(db, ADMIN, "DEMO", "Demo cohort (synthetic)")
        for who, role in (("researcher", "member"), ("reviewer", "collaborator"), ("clinician", "collaborator")):
            grant(db, ADMIN, "DEMO", who, role)
        person = records.add_participant(db, ADMIN, "DEMO", "INC0001")  # ingest stores no age, sex or scanner
        series = records.add_series(db, ADMIN, records.add_session(db, ADMIN, person, "1"), "anat", "T1w").id
    records.add_files(site, ADMIN, series, {"nii.gz": t1.read_bytes(), "json": json.dumps(SIDECAR).encode()})
    return series


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_populate_gives_qc_features_a_model_and_a_report_each_demo_user_sees(  # type: ignore[no-untyped-def]
        site, tmp_path, monkeypatch) -> None:
    from hub.services.api.app import make_app

    series = _demo_site(site, tmp_path, monkeypatch)
    lines: list[str] = []
    summary = demo.populate(site, reference_size=120, validate=False, say=lines.append)
    print("\n".join(lines))
    assert summary.qc_indices == 1 and summary.feature_scans == 1 and summary.report_series == series
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(QCIndex).where(QCIndex.series_id == series)) > 5
        models = db.scalar(select(func.count()).select_from(CadsModel))
        harmoniser = db.scalars(select(CadsModel)).one().metrics["harmoniser"]
    assert models == 1 and harmoniser["method"] == "combat" and "Siemens Prisma_fit 3T" in harmoniser["sites"]
    assert demo.what_to_open(summary)[-1] == f"as clinician: CADS reports, series {series} (model v1)"
    app = make_app(site.config, hub_auth=_TableAuth(api_token="unused", access_scopes={ACCESS}, cache_max_age=0))
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
        with pytest.raises(PermissionDenied):  # a researcher holds no reports scope
            cads.fetch_report(researcher, series)
    # a later start: nothing new is started or trained
    again = demo.populate(site, reference_size=120, validate=False, say=lambda line: None)
    assert again.report_series == series and again.model_version == 1
    with transaction(site.engine) as db:
        assert db.scalar(select(func.count()).select_from(PipelineRun)) == 2  # one QC run, one features run
        assert db.scalar(select(func.count()).select_from(CadsModel)) == 1
