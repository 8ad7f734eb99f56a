"""How feature rows reach the library and stay current: the engine's one call (``store.publish_tables`` on the
``desc-features`` tables a stage names, ``Stage.feature_tables``), and a QC decision refreshing its scan's row
(``qc.gate``), so ``qc=`` queries follow decisions without ``incloud features refresh``."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from incloud_kernel.archive import records
from incloud_kernel.archive.models import Series
from incloud_kernel.db import transaction
from incloud_kernel.errors import ValidationError
from incloud_kernel.features.rows import write_rows
from incloud_kernel.library import query, store
from incloud_kernel.pipeline.stage import Stage
from library_data import ADMIN, PEOPLE, build, rows_for



def _qc_of(site, series_id: int, qc: str) -> set[int]:  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        result = query.search(site, db, ADMIN, qc=qc, limit=None, audit=False)
    return set(result.rows["series"]) & {series_id}


def test_a_reviewers_decision_reaches_the_library(site) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.qc import gate

    ids = build(site)
    sid = ids["A00"]  # passed, published with qc "pass"
    assert _qc_of(site, sid, "pass") == {sid}
    before = store.generation(store.library_root(site))
    with records.transaction(site) as db:
        gate.review(db, ADMIN, sid, "fail", comment="motion")
    assert _qc_of(site, sid, "pass") == set() and _qc_of(site, sid, "fail") == {sid}
    assert store.generation(store.library_root(site)) != before  # queries reload their index
    # after compaction the scan sits in a part file: the decision still reaches it (and only that part)
    store.compact(site, "SCZA")
    with records.transaction(site) as db:
        gate.review(db, ADMIN, sid, "caveat", reason="slight motion")
    assert _qc_of(site, sid, "caveat") == {sid}
    with transaction(site.engine) as db:
        result = query.search(site, db, ADMIN, project="SCZA", limit=None, audit=False)
    assert len(result.rows.drop_duplicates("series")) == sum(p.project == "SCZA" for p in PEOPLE)


def test_an_automatic_decision_reaches_the_library(site) -> None:  # type: ignore[no-untyped-def]
    """A thresholds decision (``record_indices`` -> ``apply_thresholds``) on a published pending scan."""
    from incloud_kernel.qc import gate

    ids = build(site)
    sid = ids["A01"]
    with records.transaction(site) as db:
        db.get(Series, sid).qc_status = "pending"
    with transaction(site.engine) as db:
        store.refresh(site, db, "SCZA")
    assert _qc_of(site, sid, "pending") == {sid}
    with records.transaction(site) as db:
        state = gate.record_indices(db, ADMIN, sid, {"cjv": 0.9, "snr_total": 2.0}, "qc-1")
    assert state == "fail"  # the site's default T1w thresholds (config.QCSection)
    assert _qc_of(site, sid, state) == {sid}


def test_refresh_of_one_scan_leaves_the_others(site) -> None:  # type: ignore[no-untyped-def]
    ids = build(site)
    with transaction(site.engine) as db:
        for row in db.scalars(select(Series).where(Series.id.in_([ids["A00"], ids["A01"]]))):
            row.qc_status = "fail"
    with transaction(site.engine) as db:
        assert store.refresh(site, db, "SCZA", [ids["A00"]]) == 1
    assert _qc_of(site, ids["A00"], "fail") == {ids["A00"]}
    assert _qc_of(site, ids["A01"], "fail") == set()  # not asked for: stays as published


def test_publish_tables_groups_by_the_rows_pipeline(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = build(site)
    sid = ids["B00"]
    person = next(p for p in PEOPLE if p.label == "B00")
    direct = rows_for(person, 1).assign(pipeline="features+direct-mni", series=sid)
    table = write_rows(direct, tmp_path / "sub-B00_desc-features_dwi.tsv")
    with records.transaction(site) as db:
        published = store.publish_tables(site, db, ADMIN, [table], series=sid, provenance=None)
    assert [(p.pipeline, p.version, p.values) for p in published] == [("features+direct-mni", "1", len(direct))]
    with transaction(site.engine) as db:
        result = query.search(site, db, ADMIN, pipeline="features+direct-mni", limit=None, audit=False)
    assert set(result.rows["series"]) == {sid}
    bad = tmp_path / "sub-B00_desc-features_bold.tsv"
    bad.write_text("atlas\tregion\tfeature\tvalue\tunit\naal\tA\talff\t1.0\ta.u.\n")
    with records.transaction(site) as db, pytest.raises(ValidationError, match="pipeline"):
        store.publish_tables(site, db, ADMIN, [bad], series=sid)


def test_stage_names_its_feature_tables() -> None:
    class Any_(Stage):
        name = "anystage"

    outputs = {"anat/run-1_desc-features_T1w.tsv": Path("/x/a.tsv"), "func/desc-features_bold.tsv": Path("/x/b.tsv"),
               "anat/run-1_desc-featuresx_T1w.tsv": Path("/x/c.tsv"), "anat/run-1_desc-features_T1w.json": Path("/x/d"),
               "func/task-rest_desc-confounds_timeseries.tsv": Path("/x/e.tsv")}
    assert Any_().feature_tables(outputs) == [Path("/x/a.tsv"), Path("/x/b.tsv")]
