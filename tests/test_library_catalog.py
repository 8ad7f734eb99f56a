"""Per-user Intake catalogs of the feature library (issue 16 item 4), on SQLite and PostgreSQL, through the API, and
in a real workstation on Slurm: a user's catalog holds exactly the tables it may read, on local paths in a folder
only it can read; pandas, dask and DuckDB readers give the same rows; an expired or revoked grant removes the
table (the file goes, the API refuses it); the library's own files are not readable by the user's system account.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound
from incloud_kernel.library import catalog, sharing, store
from library_data import ADMIN, build, expected, rows_for
from test_projects_cli import _capture, ok, one_line_error, run  # noqa: F401 - _capture: autouse capsys hook

REPO = Path(__file__).resolve().parents[1]
VALUES_PER_SCAN = 8  # library_data: 5 AAL volumes and 3 JHU FA values


@pytest.fixture
def lib(site):  # type: ignore[no-untyped-def]
    build(site)
    return site


def _materialise(site, user: str, folder: Path) -> Any:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        actor = Actor.resolve(db, user) if user != "admin" else ADMIN
        return catalog.open_catalog(catalog.materialise(site, db, actor, folder))


def _tables(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "tables").glob("*.parquet")}


def test_catalog_holds_the_permitted_tables_readable_by_pandas_dask_and_duckdb(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "max"
    cat = _materialise(lib, "max", folder)
    name = catalog.table_name("SCZA", "features", "1")
    assert sorted(cat.entries) == [name, name + "_dask", name + "_duckdb"]
    assert _tables(folder) == {name}
    frame = cat[name].read()
    scza = expected(project="SCZA")
    assert set(frame["participant"]) == {p.label for p in scza} and len(frame) == len(scza) * VALUES_PER_SCAN
    assert set(frame["project"]) == {"SCZA"} and {"age", "sex", "diagnosis", "atlas", "region", "value"} <= set(frame)
    key = ["series", "atlas", "feature", "region"]
    dask = cat[name + "_dask"].read().compute().sort_values(key).reset_index(drop=True)
    duck = cat[name + "_duckdb"].read().df().sort_values(key).reset_index(drop=True)
    ordered = frame.sort_values(key).reset_index(drop=True)
    for other in (dask, duck):
        assert other["series"].tolist() == ordered["series"].tolist()
        assert other["region"].astype(str).tolist() == ordered["region"].astype(str).tolist()
        assert other["value"].tolist() == ordered["value"].tolist()
    # local paths only (Intake's DuckDB reader would INSTALL httpfs for a URL), private folder and files
    text = (folder / "catalog.yaml").read_text()
    urls = [d["kwargs"]["url"] for d in yaml.safe_load(text)["data"].values()]
    assert urls and all(u.startswith("/") and "://" not in u for u in urls)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "tables").stat().st_mode) == 0o700
    for path in [folder / "catalog.yaml", *(folder / "tables").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # the admin reads every project's table; a stranger none
    assert len(_materialise(lib, "admin", tmp_path / "admin").entries) == 9 and len(_tables(tmp_path / "admin")) == 3
    assert len(_materialise(lib, "eve", tmp_path / "eve").entries) == 0


def test_grant_adds_the_table_and_revocation_or_expiry_removes_it(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, name = tmp_path / "eve", catalog.table_name("SCZA", "features", "1")
    with transaction(lib.engine) as db:
        made = sharing.grant(db, Actor.resolve(db, "olivia"), "SCZA", user="eve", expires="2099-01-01")
    assert name in _materialise(lib, "eve", folder).entries and _tables(folder) == {name}
    with transaction(lib.engine) as db:
        sharing.revoke(db, Actor.resolve(db, "olivia"), made.id)
    assert len(_materialise(lib, "eve", folder).entries) == 0
    assert _tables(folder) == set() and not list((folder / "tables").iterdir())  # the copy is deleted too
    # an expired grant: the same (the database decides at every sync, with the time of the sync)
    with transaction(lib.engine) as db:
        sharing.grant(db, Actor.resolve(db, "olivia"), "SCZA", user="eve",
                      expires=datetime.now(timezone.utc) + timedelta(days=2))
    assert _tables(folder) == set() and name in _materialise(lib, "eve", folder).entries
    with transaction(lib.engine) as db:
        eve = Actor.resolve(db, "eve")
        later = datetime.now(timezone.utc) + timedelta(days=3)
        from incloud_kernel.archive import permissions

        real = permissions.feature_project_codes
        try:  # the manifest at a time after the expiry
            permissions.feature_project_codes = lambda db, actor, now=None: real(db, actor, later)  # type: ignore[assignment]
            catalog.materialise(lib, db, eve, folder)
            with pytest.raises(NotFound):
                catalog.write_table(lib, db, eve, "SCZA", "features", "1", tmp_path / "x.parquet")
        finally:
            permissions.feature_project_codes = real  # type: ignore[assignment]
    assert _tables(folder) == set()


def test_a_table_without_permission_is_refused_and_republishing_refreshes(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(lib.engine) as db:
        max_ = Actor.resolve(db, "max")
        for key in (("HCC", "features", "1"), ("SCZA", "features", "9"), ("SCZA", "../x", "1")):
            with pytest.raises(Exception) as caught:
                catalog.write_table(lib, db, max_, *key, tmp_path / "x.parquet")
            assert caught.type.__name__ in ("NotFound", "ValidationError")
    assert not (tmp_path / "x.parquet").exists()
    folder, name = tmp_path / "max", catalog.table_name("SCZA", "features", "1")
    before = _materialise(lib, "max", folder)[name].read()
    person = expected(project="SCZA")[0]
    with transaction(lib.engine) as db:  # the pipeline publishes one scan again, with doubled values
        series = int(before.loc[before["participant"] == person.label, "series"].iloc[0])
        rows = rows_for(person, 0)
        store.publish(lib, db, ADMIN, rows.assign(value=rows["value"] * 2), series=series)
    after = _materialise(lib, "max", folder)[name].read()
    assert len(after) == len(before)  # the newest publication only, no duplicate rows
    mine = after[after["participant"] == person.label].set_index(["atlas", "region"])["value"]
    assert mine.sort_index().round(6).tolist() == (rows.set_index(["atlas", "region"])["value"] * 2).sort_index().round(6).tolist()


def test_catalog_through_the_api_and_the_workstation_function(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from api_thread import TableAuth, serving
    from test_library_api import TOKENS  # the API test's token table
    from hub.services.api.app import make_app
    from incloud_kernel.client import Client
    from incloud_kernel.features import catalog as open_catalog

    app = make_app(lib.config, hub_auth=TableAuth(TOKENS))
    name = catalog.table_name("SCZA", "features", "1")
    with serving(app) as url:
        max_, eve, olivia = Client(url, "t-max"), Client(url, "t-eve"), Client(url, "t-olivia")
        cat = open_catalog(max_, tmp_path / "max")
        assert sorted(cat.entries) == [name, name + "_dask", name + "_duckdb"]
        assert len(cat[name].read()) == len(expected(project="SCZA")) * VALUES_PER_SCAN
        with pytest.raises(NotFound):
            max_._get("api/features/catalog/table", {"project": "HCC", "pipeline": "features", "version": "1"})
        assert len(open_catalog(eve, tmp_path / "eve").entries) == 0
        made = olivia.share_features("SCZA", "2099-12-31", user="eve")
        assert len(open_catalog(eve, tmp_path / "eve")[name + "_dask"].read().compute()) == len(cat[name].read())
        olivia.revoke_feature_grant(made["id"])
        assert len(open_catalog(eve, tmp_path / "eve").entries) == 0 and _tables(tmp_path / "eve") == set()


def test_cli_writes_a_users_catalog_and_downloads_are_audited(site_env, site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from incloud_kernel.archive.models import AuditEvent
    build(site)
    out = ok(site_env, "features", "catalog", str(tmp_path / "bert"), "--as", "bert")
    assert out.strip() == f"wrote {tmp_path / 'bert' / 'catalog.yaml'}"
    assert _tables(tmp_path / "bert") == {catalog.table_name("SCZB", "features", "1")}
    with transaction(site.engine) as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "features.catalog")).all()
        assert [(e.actor, e.detail["project"]) for e in events] == [("bert", "SCZB")]
    (tmp_path / "afile").write_text("")
    error = one_line_error(run(site_env, "features", "catalog", str(tmp_path / "afile" / "sub"), "--as", "bert"), 2)
    assert "cannot make the catalog folder" in error


def test_importing_features_does_not_import_intake() -> None:
    import sys

    code = "import sys, incloud_kernel.features as f; f.catalog; print(sorted(m for m in ('intake', 'pandas', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


# -- the Done-when test: a notebook in a real workstation on Slurm --------------------------------------------

NOTEBOOK = """
import sys
sys.path.insert(0, %r)  # the checkout under test (the job keeps no PYTHONPATH; unreadable: the venv's copy)
import json, os, pwd, stat, incloud_kernel.features as f
cat = f.catalog()
out = {"unix": pwd.getpwuid(os.getuid()).pw_name, "entries": sorted(cat.entries)}
for name in sorted(cat.entries):
    if name.endswith(("_dask", "_duckdb")):
        continue
    out[name] = {"pandas": len(cat[name].read()), "dask": int(len(cat[name + "_dask"].read().compute())),
                 "duckdb": len(cat[name + "_duckdb"].read().df())}
folder = os.path.expanduser("~/.incloud/catalog")
st = os.stat(folder)
out["folder"] = {"owner": pwd.getpwuid(st.st_uid).pw_name, "mode": oct(stat.S_IMODE(st.st_mode))}
out["tables"] = sorted(os.listdir(os.path.join(folder, "tables")))
probe = %r
try:
    open(probe, "rb").read(4)
    out["probe"] = "read"
except OSError as e:
    out["probe"] = type(e).__name__
try:
    import incloud_kernel
    incloud_kernel.connect()._get("api/features/catalog/table", {"project": "P2", "pipeline": "features", "version": "1"})
    out["api"] = "served"
except Exception as e:
    out["api"] = type(e).__name__
print(json.dumps(out))
"""


from test_hub_slurm import stack  # noqa: E402,F401 - the real hub on Slurm (module-scoped fixture)


def _publish(stack: Any) -> dict[str, Path]:
    """A T1w scan in P1 and one in P2 (nobody's project), published to the stack's library; the P2 value file."""
    from incloud_kernel.archive import records
    from library_data import PEOPLE

    console = Actor.console("test")
    with records.transaction(stack.site) as db:
        p2 = records.add_participant(db, console, "P2", "other01", sex="M", birth_year=1970)
        ses = records.add_session(db, console, p2, "01", age_at_scan=50.0, scanner="SiteB")
        p2_series = records.add_series(db, console, ses, "anat", "T1w").id
    with records.transaction(stack.site) as db:
        a = store.publish(stack.site, db, console, rows_for(PEOPLE[0], 1), series=stack.series_t1)
        b = store.publish(stack.site, db, console, rows_for(PEOPLE[1], 2), series=p2_series)
    return {"P1": a.value_file, "P2": b.value_file}


@pytest.mark.services
@pytest.mark.timeout(900)
def test_notebook_in_a_slurm_workstation_reads_permitted_tables_only(stack) -> None:  # type: ignore[no-untyped-def]
    from services.kernels import run_code

    files = _publish(stack)
    alice = stack.add_user("alice")
    stack.grant(alice.name, "P1", "member")
    alice.log_in()
    alice.token = alice.new_token(expires_in=3600)
    result = stack.spawn(alice, "small")
    assert result["ready"], f"workstation did not start: {result['message']}"

    def notebook() -> dict[str, Any]:
        out = run_code(stack.url, f"/user/{alice.name}/", alice.token, NOTEBOOK % (str(REPO), str(files["P2"])))
        assert not out.error, out.error + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    p1, p2 = catalog.table_name("P1", "features", "1"), catalog.table_name("P2", "features", "1")
    seen = notebook()
    assert seen["unix"] == alice.name
    assert seen["entries"] == [p1, p1 + "_dask", p1 + "_duckdb"]
    assert seen[p1] == {"pandas": VALUES_PER_SCAN, "dask": VALUES_PER_SCAN, "duckdb": VALUES_PER_SCAN}
    assert seen["folder"] == {"owner": alice.name, "mode": "0o700"} and seen["tables"] == [p1 + ".parquet"]
    assert seen["probe"] == "PermissionError" and seen["api"] == "NotFound"
    # the OS agrees: the user's system account cannot read the library's P2 file, nor the library folder
    for path in (files["P2"], files["P1"]):
        denied = subprocess.run(["runuser", "-u", alice.name, "--", "head", "-c", "4", str(path)],
                                capture_output=True, timeout=30)
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    # a grant opens P2's table; its revocation removes the table and the copy
    with transaction(stack.site.engine) as db:
        made = sharing.grant(db, ADMIN, "P2", user=alice.name, expires="2099-01-01")
    seen = notebook()
    assert seen[p2] == {"pandas": VALUES_PER_SCAN, "dask": VALUES_PER_SCAN, "duckdb": VALUES_PER_SCAN}
    assert seen["probe"] == "PermissionError"  # the grant opened the API's table, not the library's files
    with transaction(stack.site.engine) as db:
        sharing.revoke(db, ADMIN, made.id)
    seen = notebook()
    assert p2 not in seen["entries"] and seen["tables"] == [p1 + ".parquet"] and seen["api"] == "NotFound"


def test_the_example_in_catalogs_is_what_the_code_writes(tmp_path: Path) -> None:
    table = catalog.Table("P1_features_v1", "P1", "features", "1", "0123456789abcdef")
    catalog.build(Path("/home/alice/.incloud/catalog/tables"), [table], user="alice").to_yaml_file(
        str(tmp_path / "c.yaml"))
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == yaml.safe_load((REPO / "catalogs" / "example.yaml").read_text())
