"""The feature library through the INCloud API, the client and the CLI (issue 16 item 3), on SQLite and PostgreSQL.

The real API application (``hub.services.api.app.make_app`` with the feature routes) serves in a thread; only the
hub's token check is a table (scopes from ``hub.roles`` as the hub grants them). Two users with different rights
see the same count and different rows; grants made through the client open rows; bad input is one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pytest
from api_thread import ACCESS, TableAuth, serving

from hub.roles import scopes_of
from incloud_kernel.client import Client
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from library_data import build, expected
from test_projects_cli import _capture, ok, one_line_error, run, run_process  # noqa: F401 - _capture: autouse

TOKENS = {f"t-{name}": {"name": name, "kind": "user", "groups": groups,
                        "scopes": sorted({ACCESS, *scopes_of(groups, False)})}
          for name, groups in (("max", ["researcher"]), ("bert", ["researcher"]), ("olivia", ["researcher"]),
                               ("eve", ["researcher"]), ("cli", ["clinician"]))}


@pytest.fixture
def api(site) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from hub.services.api.app import make_app

    build(site)
    app = make_app(site.config, hub_auth=TableAuth(TOKENS))
    with serving(app) as url:
        yield url


def test_two_users_same_count_different_rows_and_grants_over_the_api(api, tmp_path: Path) -> None:  # type: ignore
    scz = expected(diagnosis="SCZ", age=(18, 60))
    criteria: dict[str, Any] = {"diagnosis": "SCZ", "age": (18, 60), "feature": "gmv", "atlas": "aal"}
    max_, bert, eve = Client(api, "t-max"), Client(api, "t-bert"), Client(api, "t-eve")
    count_max, rows_max = max_.features(**criteria)
    count_bert, rows_bert = bert.features(**criteria)
    assert count_max == count_bert == len(scz)
    assert set(rows_max["participant"]) == {p.label for p in scz if p.project == "SCZA"}
    assert set(rows_bert["participant"]) == {p.label for p in scz if p.project == "SCZB"}
    assert eve.features(**criteria)[1].empty
    # wide and xarray shapes
    _, wide = max_.features(shape="wide", **criteria)
    assert len(wide) == len(rows_max["series"].unique()) and "aal/gmv/Hippocampus_L" in wide.columns
    _, cube = max_.features(shape="xarray", **criteria)
    assert cube.dims == ("scan", "region", "feature") and cube.sizes["region"] == 5
    # the owner shares SCZA's features with eve; eve now lists them, and exports them
    olivia = Client(api, "t-olivia")
    with pytest.raises(PermissionDenied):
        max_.share_features("SCZA", "2099-12-31", user="eve")
    made = olivia.share_features("SCZA", "2099-12-31", user="eve")
    assert made["active"] and olivia.feature_grants("SCZA")[0]["grantee"] == "eve"
    assert set(eve.features(**criteria)[1]["participant"]) == set(rows_max["participant"])
    path = eve.export_features(tmp_path / "eve.parquet", shape="wide", **criteria)
    assert len(pd.read_parquet(path)) == len(wide)
    csv = eve.export_features(tmp_path / "eve.csv", **criteria)
    assert len(pd.read_csv(csv)) == len(rows_max)
    assert olivia.revoke_feature_grant(made["id"])["active"] is False
    assert eve.features(**criteria)[1].empty
    # small cells over the API
    assert eve.features(diagnosis="SCZ", project="HCC")[0] == "< 5"
    # bad input: one line, HTTP 400 as ValidationError
    for bad in ({"age": (40, 18)}, {"diagnose": "SCZ"}, {"qc": "great"}, {"shape": "cube"}):
        with pytest.raises(ValidationError) as caught:
            max_.features(**bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(NotFound):
        olivia.revoke_feature_grant(99999)
    with pytest.raises(PermissionDenied, match="lacks scope custom:incloud:read"):  # a clinician's token
        Client(api, "t-cli").features(**criteria)


def test_cli_query_export_and_grants(site_env, site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build(site)
    env = site_env
    scz = expected(diagnosis="SCZ")
    out = json.loads(ok(env, "features", "query", "--diagnosis", "SCZ", "--feature", "gmv", "--atlas", "aal",
                        "--json", "--as", "max"))
    assert out["count"] == len(scz) and {r["project"] for r in out["rows"]} == {"SCZA"}
    assert json.loads(ok(env, "features", "query", "--diagnosis", "SCZ", "--json", "--as", "eve"))["rows"] == []
    assert "count: < 5" in ok(env, "features", "query", "--diagnosis", "SCZ", "--project", "HCC", "--as", "eve")
    assert "grant 1" in ok(env, "features", "grant", "SCZB", "--group", "lab", "--expires", "2099-01-01",
                           "--as", "bert")
    target = tmp_path / "gil.csv"
    assert "wrote" in ok(env, "features", "export", str(target), "--diagnosis", "SCZ", "--shape", "wide",
                         "--as", "gil")
    assert set(pd.read_csv(target)["project"]) == {"SCZB", "HCC"}  # HCC as a collaborator, SCZB by the grant
    assert "active" in ok(env, "features", "grants", "SCZB", "--as", "bert")
    assert "revoked" in ok(env, "features", "revoke", "1", "--as", "bert")
    assert "scans in compacted" in ok(env, "features", "compact")
    for args, code in ((("features", "query", "--age", "forty"), 2), (("features", "query", "--sex", "X"), 2),
                       (("features", "export", str(tmp_path / "x.xlsx")), 2),
                       (("features", "grant", "SCZB", "--user", "eve", "--expires", "2099-01-01", "--as", "max"), 4)):
        line = one_line_error(run_process(env, *args), code)
        assert "SCZ" not in line or "SCZB" in line
