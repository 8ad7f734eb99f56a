"""CADS items 4-5: the report from the library, its PDF, the API, the CLI and the notebook calls, and who may read it.

A clinician who is a collaborator in project CADS gets the report of a CADS participant (JSON, PDF, CLI, through
the client) and 403 for a participant of project OTHER and for a series that does not exist (the same answer, so
probing ids reveals nothing); a token without the reports scope gets 403 too. Every report names its model
version; a report by an older version is reproduced exactly after a newer one is promoted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from api_thread import ACCESS, TableAuth, serving

from cads_data import ADMIN, build
from hub.roles import scopes_of
from incloud_kernel import cads
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.cads import registry, render, report
from incloud_kernel.client import Client
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied
from test_projects_cli import _capture, ok, one_line_error, run, run_process  # noqa: F401 - _capture: autouse

TOKENS = {f"t-{name}": {"name": name, "kind": "user", "groups": groups,
                        "scopes": sorted({ACCESS, *scopes_of(groups, False)})}
          for name, groups in (("cleo", ["clinician"]), ("olivia", ["researcher"]), ("carl", ["clinician"]))}


def _library(site: Any) -> Any:
    frame = build(site, n=120, n_other=4)
    with transaction(site.engine) as db:
        outcome = registry.retrain(site, db, ADMIN, kind="linear", validate=False)
    assert outcome.promoted, outcome.decision
    return frame


def _series(frame: Any, project: str, k: int = 0) -> int:
    return int(frame[frame["project"] == project]["series"].iloc[k])


REQUIRED = ("pseudonym", "scan", "regions", "flagged", "expected_false_flags", "probabilities", "model",
            "statement", "warnings")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_report_permissions_reproducibility_pdf_and_cli(site_env, site, tmp_path: Path) -> None:  # type: ignore
    frame = _library(site)
    mine, other = _series(frame, "CADS", 3), _series(frame, "OTHER")
    with transaction(site.engine) as db:
        cleo = Actor.resolve(db, "cleo")
        first = report.build(site, db, cleo, mine)
        for bad in (other, 999_999):  # not hers, and not there: the same refusal
            with pytest.raises(PermissionDenied, match=f"no CADS report you may open for series {bad}"):
                report.build(site, db, cleo, bad)
    assert all(key in first for key in REQUIRED)
    assert first["pseudonym"] == frame.set_index("series").loc[mine, "participant"]
    assert first["scan"]["qc"] == "pass" and first["model"]["version"] == 1
    assert first["statement"].startswith("This report supports and does not replace clinical judgement")
    assert first["expected_false_flags"] == pytest.approx(60 * 0.0455, abs=0.01)
    assert {p["category"] for p in first["probabilities"]} == {"BD", "HC", "SCZ"}
    assert all(p["low"] <= p["probability"] <= p["high"] for p in first["probabilities"])
    assert first["model"]["validated"]["heldout"]["balanced_accuracy"] > 0.5
    sources = first["model"]["training_projects"]  # what the model learnt from is named on the report ...
    assert {p["code"]: p["name"] for p in sources}["CADS"] == "CADS cohort"
    assert "OTHER" not in {p["code"] for p in sources}  # ... but a project cleo is not in only counted
    assert sum(p["scans"] for p in sources) == first["model"]["trained_on"]
    # a newer model is promoted; the old report is reproduced by naming its version
    with transaction(site.engine) as db:
        assert registry.retrain(site, db, ADMIN, kind="ensemble", validate=False, tolerance=0.5).promoted
    with transaction(site.engine) as db:
        cleo = Actor.resolve(db, "cleo")
        newer = report.build(site, db, cleo, mine)
        again = report.build(site, db, cleo, mine, model=1)
    assert newer["model"]["version"] == 2
    assert again["model"].pop("status") == "retired" and first["model"].pop("status") == "current"
    strip = lambda r: {k: v for k, v in r.items() if k != "created_at"}  # noqa: E731
    assert strip(again) == strip(first)  # every number, flag and probability the same
    # the PDF
    pdf = render.pdf(first, tmp_path / "report.pdf")
    head = pdf.read_bytes()
    assert head.startswith(b"%PDF") and len(head) > 20_000
    # the CLI: the clinician's rights, the console's models and retraining
    env = site_env
    out = ok(env, "cads", "report", str(mine), "--as", "cleo", "--pdf", str(tmp_path / "cli.pdf"))
    assert "model v2" in out and "supports and does not replace clinical judgement" in out
    assert " of CADS (CADS cohort)" in out
    assert "expected by chance: 2.7" in out and (tmp_path / "cli.pdf").is_file()
    assert json.loads(ok(env, "cads", "report", str(mine), "--model", "1", "--json", "--as", "cleo"))[
        "input_sha256"] == first["input_sha256"]
    line = one_line_error(run_process(env, "cads", "report", str(other), "--as", "cleo"), 3)
    assert "no CADS report you may open" in line
    assert "v1\tretired" in ok(env, "cads", "models") and "v2\tcurrent" in ok(env, "cads", "models")
    line = one_line_error(run_process(env, "cads", "retrain", "--as", "cleo"), 3)
    assert "site administrator" in line
    out = ok(env, "cads", "retrain", "--kind", "linear", "--no-validate", "--harmonise", "combat", "--note",
             "synthetic test cohort")
    assert out.startswith("model v3: ") and "harmonised by combat" in out
    v3 = json.loads(ok(env, "cads", "models", "--json"))[-1]["harmoniser"]  # recorded with the version
    assert v3["method"] == "combat" and v3["batch"] == "site" and v3["protected"] == ["age", "sex"]
    assert "note: synthetic test cohort" in ok(env, "cads", "report", str(mine), "--model", "3", "--as", "cleo")


@pytest.fixture
def api(site) -> Iterator[tuple[str, Any]]:  # type: ignore[no-untyped-def]
    from hub.services.api.app import make_app

    frame = _library(site)
    app = make_app(site.config, hub_auth=TableAuth(TOKENS))
    with serving(app) as url:
        yield url, frame


def test_clinician_collaborator_gets_the_report_over_the_api_others_403(api, tmp_path: Path) -> None:  # type: ignore
    url, frame = api
    mine, other = _series(frame, "CADS", 5), _series(frame, "OTHER", 1)
    cleo = Client(url, "t-cleo")
    got = cads.fetch_report(cleo, mine, threshold=2.5)
    assert got["model"]["version"] == 1 and got["threshold"] == 2.5 and got["series"] == mine
    pdf = cads.fetch_report_pdf(cleo, mine, tmp_path / "r.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    assert cads.fetch_models(cleo)[0]["status"] == "current"
    for series in (other, 999_999):
        with pytest.raises(PermissionDenied, match="no CADS report you may open"):
            cads.fetch_report(cleo, series)
    with pytest.raises(PermissionDenied):  # carl is a clinician but not in project CADS
        cads.fetch_report(Client(url, "t-carl"), mine)
    with pytest.raises(PermissionDenied, match="lacks scope custom:incloud:reports"):  # a researcher's token
        cads.fetch_report(Client(url, "t-olivia"), mine)
    import requests

    r = requests.get(f"{url}api/cads/report/{mine}", params={"threshold": "lots"},
                     headers={"Authorization": "token t-cleo"}, timeout=30)
    assert r.status_code == 400 and "threshold" in r.json()["message"]


def test_the_map_heading_says_what_the_map_paints_and_what_only_the_table_holds() -> None:
    both = {"regions": [{"feature": "aal/gmv/Hippocampus_L"}, {"feature": "aal/connectivity/A__B"}]}
    heading = render.map_heading(both)
    assert heading.startswith("Brain map of grey-matter volume z-scores") and "Regional volumes" not in heading
    assert heading.endswith("(connectivity: in the table below, not on the map)")
    assert "not on the map" not in render.map_heading({"regions": [{"feature": "aal/gm_volume/Precuneus_R"}]})


def test_the_map_paints_one_kind_when_a_region_has_a_volume_and_a_thickness() -> None:
    """Harvard-Oxford's T1 rows hold a volume and a thickness per region: the map paints the volume z (a region
    has one colour) and its heading sends the thickness to the table."""
    from incloud_kernel.features.atlases import load_atlas

    atlas = load_atlas("harvardoxford-cortical")
    value, name = next(iter(atlas.labels.items()))
    report = {"regions": [{"feature": f"harvardoxford-cortical/gm_volume/{name}", "z": -3.0},
                          {"feature": f"harvardoxford-cortical/thickness/{name}", "z": 2.5}]}
    painted = np.asarray(render._z_image(report).dataobj)
    assert set(np.unique(painted[np.asarray(atlas.image.dataobj) == value])) == {-3.0}
    heading = render.map_heading(report)
    assert heading.startswith("Brain map of grey-matter volume z-scores")
    assert heading.endswith("(cortical thickness: in the table below, not on the map)")
