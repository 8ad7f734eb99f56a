"""The brain feature library (issue 16 items 1-3) on SQLite and PostgreSQL: the count is over all data and the same
for every user, rows appear only where a membership or an unexpired feature grant allows, small cells are masked,
grants are audited, bad criteria are one-line errors, and results come long, wide, as xarray, CSV and Parquet."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from sqlalchemy import select

from incloud_kernel.archive.models import AuditEvent
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from incloud_kernel.library import query, sharing, store
from library_data import ADMIN, PEOPLE, build, expected, rows_for

SCZ = {"diagnosis": "SCZ", "feature": "gmv", "atlas": "aal"}


@pytest.fixture
def lib(site):  # type: ignore[no-untyped-def]
    build(site)
    return site


def _ask(site, user: str, **criteria):  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        actor = Actor.resolve(db, user) if user != "admin" else ADMIN
        return query.search(site, db, actor, **criteria)


def _labels(result: query.Result) -> set[str]:
    return set(result.rows["participant"])


def test_count_is_over_all_data_and_rows_follow_memberships(lib) -> None:  # type: ignore[no-untyped-def]
    scz = expected(diagnosis="SCZ")
    counts = {}
    for user in ("max", "bert", "gil", "eve", "admin"):
        result = _ask(lib, user, **SCZ)
        counts[user] = result.count
        allowed = {"max": {"SCZA"}, "bert": {"SCZB"}, "gil": {"HCC"}, "eve": set(),
                   "admin": {"SCZA", "SCZB", "HCC"}}[user]
        assert _labels(result) == {p.label for p in scz if p.project in allowed}, user
        assert set(result.rows["project"]) <= allowed
        assert result.listed == len([p for p in scz if p.project in allowed])
        assert set(result.rows["feature"]) <= {"gmv"} and set(result.rows["atlas"]) <= {"aal"}
    assert set(counts.values()) == {len(scz)}  # the same count, whoever asks


def test_feature_grant_lists_rows_but_gives_no_archive_access(lib) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.archive import permissions

    with transaction(lib.engine) as db:
        with pytest.raises(PermissionDenied):  # a member may not share; owners may
            sharing.grant(db, Actor.resolve(db, "max"), "SCZA", user="eve", expires="2099-01-01")
        with pytest.raises(NotFound):  # a stranger cannot even see the project
            sharing.grant(db, Actor.resolve(db, "eve"), "SCZA", user="eve", expires="2099-01-01")
        olivia = Actor.resolve(db, "olivia")
        made = sharing.grant(db, olivia, "SCZA", user="eve", expires="2099-01-01")
        sharing.grant(db, olivia, "SCZA", to_project="SCZB", expires=datetime.now(timezone.utc) + timedelta(days=3))
    eve = _ask(lib, "eve", **SCZ)
    assert _labels(eve) == {p.label for p in expected(diagnosis="SCZ") if p.project == "SCZA"}
    bert = _ask(lib, "bert", **SCZ)  # SCZB's owner: its own rows and SCZA's through the project grant
    assert {p for p in bert.rows["project"]} == {"SCZA", "SCZB"}
    with transaction(lib.engine) as db:  # no raw access came with the grant
        eve_actor = Actor.resolve(db, "eve")
        assert permissions.count_series(db, eve_actor) == 0
        with pytest.raises(NotFound):
            permissions.require(db, eve_actor, "SCZA")
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "features.grant")).all()
        assert len(events) == 2 and events[0].detail["grantee"] == "eve" and events[0].actor == "olivia"
        sharing.revoke(db, Actor.resolve(db, "olivia"), made.id)
        assert db.scalars(select(AuditEvent).where(AuditEvent.action == "features.revoke")).one().actor == "olivia"
        listed = sharing.list_grants(db, Actor.resolve(db, "olivia"), "SCZA")
        assert [g.active for g in listed] == [True, False]
    assert _ask(lib, "eve", **SCZ).rows.empty  # revoked: nothing listed
    assert _ask(lib, "eve", **SCZ).count == len(expected(diagnosis="SCZ"))


def test_an_expired_grant_lists_nothing(lib) -> None:  # type: ignore[no-untyped-def]
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    with transaction(lib.engine) as db:
        olivia = Actor.resolve(db, "olivia")
        sharing.grant(db, olivia, "SCZA", group="visitors", expires=past + timedelta(minutes=30),
                      now=past - timedelta(days=1))  # granted yesterday, ran out half an hour ago
        from incloud_kernel.archive.projects import add_group_member

        add_group_member(db, ADMIN, "visitors", "vic")
        with pytest.raises(ValidationError, match="future"):
            sharing.grant(db, olivia, "SCZA", user="vic", expires="2001-01-01")
    result = _ask(lib, "vic", **SCZ)
    assert result.rows.empty and result.listed == 0
    assert result.count == len(expected(diagnosis="SCZ"))


def test_small_cells_are_masked(lib) -> None:  # type: ignore[no-untyped-def]
    hcc_scz = expected(diagnosis="SCZ", project="HCC")
    assert 0 < len(hcc_scz) < 5
    result = _ask(lib, "eve", project="HCC", **SCZ)
    assert result.count == "< 5" and result.rows.empty
    gil = _ask(lib, "gil", project="HCC", **SCZ)  # a reader of HCC still sees its own rows, and the masked count
    assert gil.count == "< 5" and _labels(gil) == {p.label for p in hcc_scz}
    assert _ask(lib, "eve", diagnosis="XYZ").count == 0  # nobody: 0 is shown
    assert query.mask(5, 5) == 5 and query.mask(4, 5) == "< 5" and query.mask(9, 10) == "< 10"


def test_criteria_filter_as_documented(lib) -> None:  # type: ignore[no-untyped-def]
    young = _ask(lib, "admin", age=(18, 30), qc="pass", **SCZ)
    assert _labels(young) == {p.label for p in expected(diagnosis="SCZ", age=(18, 30), qc="pass")}
    assert young.count == len(expected(diagnosis="SCZ", age=(18, 30), qc="pass")) or young.count == "< 5"
    first = _ask(lib, "admin", first_episode=True, medication="olanzapine")
    assert _labels(first) == {p.label for p in PEOPLE if p.first_episode and "olanzapine" in (p.medication or "")}
    fa = _ask(lib, "admin", feature="fa", region="Fornix", project="SCZB")
    assert set(fa.rows["region"]) == {"Fornix"} and len(fa.rows) == 6
    both = _ask(lib, "admin", diagnosis=["BD", "HC"], sex="F", scanner="SiteB Skyra 3T")
    assert _labels(both) == {p.label for p in PEOPLE if {"BD", "HC"} & set(p.diagnosis) and p.sex == "F"
                             and p.scanner.startswith("SiteB")}


@pytest.mark.parametrize("criteria, message", [
    ({"diagnose": "SCZ"}, "unknown criterion diagnose"),
    ({"age": (40, 18)}, "age must be a range"),
    ({"age": "old"}, "age must be a range"),
    ({"sex": "X"}, "sex must be one of"),
    ({"qc": "great"}, "qc must be one of"),
    ({"first_episode": "maybe"}, "first_episode must be true or false"),
    ({"feature": "gmv\nDROP"}, "feature must be text of one line"),
    ({"feature": []}, "feature needs at least one value"),
])
def test_bad_criteria_are_one_line_errors(lib, criteria, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message) as caught:
        _ask(lib, "max", **criteria)
    assert "\n" not in str(caught.value)


def test_shapes_xarray_and_exports(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(lib.engine) as db:
        count, long = query.features(lib, db, ADMIN, diagnosis="SCZ", feature="gmv", atlas="aal")
        _, wide = query.features(lib, db, ADMIN, shape="wide", diagnosis="SCZ")
    scz = expected(diagnosis="SCZ")
    assert count == len(scz) and len(long) == len(scz) * 5
    assert "birth_year" not in long.columns and "scan_date" not in long.columns
    assert len(wide) == len(scz) and "aal/gmv/Hippocampus_L" in wide.columns and "jhu/fa/Fornix" in wide.columns
    one = long[long["participant"] == "A00"].set_index("region")["value"]
    assert wide.set_index("participant").loc["A00", "aal/gmv/Hippocampus_L"] == pytest.approx(one["Hippocampus_L"])
    cube = query.to_xarray(long)
    assert cube.dims == ("scan", "region", "feature") and cube.shape == (len(scz), 5, 1)
    assert set(cube.coords["participant"].values) == {p.label for p in scz}
    assert float(cube.sel(feature="gmv", region="Hippocampus_L").isel(scan=0)) > 0
    csv = query.export(wide, tmp_path / "scz.csv")
    parquet = query.export(long, tmp_path / "scz.parquet")
    assert len(pd.read_csv(csv)) == len(scz)
    assert pd.read_parquet(parquet)["value"].tolist() == long["value"].tolist()
    with pytest.raises(ValidationError, match="export format"):
        query.export(long, tmp_path / "scz.xlsx")


def test_storage_is_hive_partitioned_atomic_and_compacts(lib) -> None:  # type: ignore[no-untyped-def]
    root = lib.config.library_root
    assert (root / "scans" / "project=SCZA" / "pipeline=features" / "version=1").is_dir()
    assert not list(root.rglob("*.tmp"))
    assert os.stat(root).st_mode & 0o777 == 0o700
    with duckdb.connect() as con:
        n = con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning = true)",
                        [str(root / "values" / "*" / "*" / "*" / "*.parquet")]).fetchone()[0]
    assert n == len(PEOPLE) * 8
    assert store.compact(lib) == len(PEOPLE)
    assert len(list((root / "scans" / "project=SCZA" / "pipeline=features" / "version=1").glob("*.parquet"))) == 1
    before = _ask(lib, "admin", participant="A00", feature="gmv")
    # Republishing a compacted series replaces its rows (no duplicate), and the count stays a count of scans.
    person = next(p for p in PEOPLE if p.label == "A00")
    with transaction(lib.engine) as db:
        series = int(before.rows["series"].iloc[0])
        store.publish(lib, db, ADMIN, rows_for(person, 999).assign(value=1.0), series=series)
    after = _ask(lib, "admin", participant="A00", feature="gmv")
    assert after.count == before.count and len(after.rows) == 5 and set(after.rows["value"]) == {1.0}
    assert _ask(lib, "admin").count == len(PEOPLE)


def test_publish_refuses_bad_rows_and_writers_without_write(lib) -> None:  # type: ignore[no-untyped-def]
    person = PEOPLE[0]
    with transaction(lib.engine) as db:
        series = int(_ask(lib, "admin", participant=person.label).rows["series"].iloc[0])
        with pytest.raises(ValidationError, match="lack column"):
            store.publish(lib, db, ADMIN, rows_for(person, 1).drop(columns=["region"]), series=series)
        with pytest.raises(ValidationError, match="pipeline must be"):
            store.publish(lib, db, ADMIN, rows_for(person, 1).assign(pipeline="../x"), series=series)
        with pytest.raises(NotFound):  # eve may not even see the series
            store.publish(lib, db, Actor.resolve(db, "eve"), rows_for(person, 1), series=series)


def test_refresh_takes_new_qc_decisions_from_the_archive(lib) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.archive.models import Series

    before = _ask(lib, "admin", qc="fail")
    with transaction(lib.engine) as db:
        for row in db.scalars(select(Series).where(Series.project_id.isnot(None))):
            row.qc_status = "fail"
    with transaction(lib.engine) as db:
        assert store.refresh(lib, db, "SCZA") == 8
    after = _ask(lib, "admin", qc="fail")
    assert before.count == "< 5" and after.count == 8


def test_list_fallback_answers_as_the_bit_masks(lib, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A library with more distinct diagnosis codes or feature sets than fit in a bit mask is searched by list
    functions; both paths give the same answer (the index of a new root is loaded with the patched limit)."""
    asks = [dict(SCZ), {"feature": "fa"}, {"atlas": "jhu", "diagnosis": ["BD", "HC"]}, {"atlas": "none"}]
    with_bits = [(_ask(lib, "max", **a).count, _ask(lib, "max", **a).listed) for a in asks]
    monkeypatch.setattr(query, "MAX_BITS", 0)
    monkeypatch.setattr(query, "_SHARED", {})
    assert [(_ask(lib, "max", **a).count, _ask(lib, "max", **a).listed) for a in asks] == with_bits
    assert not query._SHARED[lib.config.library_root].snapshot.codes
    assert with_bits[0] == (len(expected(diagnosis="SCZ")), 6) and with_bits[3] == (0, 0)
