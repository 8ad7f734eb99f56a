"""The QC gate (issue 14 item 6), on SQLite and PostgreSQL: states, automatic thresholds from the site config,
who may rate, the audit of every decision (never its comment), and the selection of what enters processing.

Indices are written into ``qc_index`` directly (``gate.record_indices``): the indices helper computes real ones.
"""
from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select

from incloud_kernel.archive import projects, records
from incloud_kernel.archive.models import AuditEvent, QCIndex, QCReview, Series
from incloud_kernel.archive.permissions import QC_REVIEWER_GROUP, Actor
from incloud_kernel.config import ConfigError, QCSection, load_config
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from incloud_kernel.qc import gate

CONSOLE = Actor.console("test")
#: A comment that must never reach the audit log or a log line.
SECRET_COMMENT = "ghosting at slice 40, ask Dr Zed about patient Jane Roe"
CFG = QCSection()  # the site defaults: bold fd_mean 0.2/0.5 mm, tsnr 50/20; T1w cjv 0.45/0.8, snr_total 10/4


@pytest.fixture
def proj(site):  # type: ignore[no-untyped-def]
    """Project QCP: owner olga, member mike, collaborators rita (in the qc_reviewer group) and carl (not);
    project ELSE where rita holds no role. Participant 001 with a T1w and two BOLD runs, pending."""
    with records.transaction(site) as db:
        projects.create_project(db, CONSOLE, "QCP", "QC gate test")
        projects.create_project(db, CONSOLE, "ELSE", "Somebody else's")
        for user, role in (("olga", "owner"), ("mike", "member"), ("rita", "collaborator"),
                           ("carl", "collaborator")):
            projects.grant(db, CONSOLE, "QCP", user, role)
        records.add_participant(db, CONSOLE, "QCP", "001")
        ses = records.add_session(db, CONSOLE, "001", "01")
        ids = {"t1": records.add_series(db, CONSOLE, ses, "anat", "T1w").id,
               "bold1": records.add_series(db, CONSOLE, ses, "func", "bold", {"task": "rest", "run": "1"}).id,
               "bold2": records.add_series(db, CONSOLE, ses, "func", "bold", {"task": "rest", "run": "2"}).id}
    return site, ids


def actor(db, name: str) -> Actor:  # type: ignore[no-untyped-def]
    return Actor.resolve(db, name, extra_groups=[QC_REVIEWER_GROUP] if name == "rita" else [])


def status(site, sid: int) -> str:  # type: ignore[no-untyped-def]
    with records.transaction(site) as db:
        return db.get(Series, sid).qc_status


# -- automatic thresholds --------------------------------------------------------------------------------------

def test_thresholds_pass_clear_passes_fail_clear_fails_and_leave_the_band_to_reviewers() -> None:
    rules = gate.rules(CFG)
    assert gate.automatic("bold", {"fd_mean": 0.1, "tsnr": 80}, rules)[0] == "pass"
    state, reason = gate.automatic("bold", {"fd_mean": 0.7, "tsnr": 80}, rules)
    assert state == "fail" and "fd_mean >= 0.5" in reason
    assert gate.automatic("bold", {"fd_mean": 0.1, "tsnr": 10}, rules)[0] == "fail"  # higher is better for tSNR
    assert gate.automatic("bold", {"fd_mean": 0.3, "tsnr": 80}, rules) == ("pending", "")  # between 0.2 and 0.5
    assert gate.automatic("bold", {"fd_mean": 0.1}, rules)[0] == "pending"  # tsnr missing: a reviewer decides
    assert gate.automatic("bold", {"fd_mean": float("nan"), "tsnr": 80}, rules)[0] == "pending"
    assert gate.automatic("T1w", {"cjv": 0.3, "snr_total": 12}, rules)[0] == "pass"
    assert gate.automatic("dwi", {"snr": 30}, rules)[0] == "pending"  # no rule for the suffix


def test_thresholds_come_from_the_site_config_and_bad_ones_are_one_line(tmp_path) -> None:  # type: ignore
    toml = tmp_path / "incloud.toml"
    toml.write_text('[qc]\nusable = ["pass"]\nthresholds = [{suffix = "bold", index = "fd_mean", '
                    'better = "lower", pass = 0.1, fail = 0.3}]\n')
    cfg = load_config(toml, env={"INCLOUD_HOME": str(tmp_path)})
    assert cfg.qc.usable == ["pass"]
    assert gate.automatic("bold", {"fd_mean": 0.25}, gate.rules(cfg.qc))[0] == "pending"
    assert gate.automatic("bold", {"fd_mean": 0.35}, gate.rules(cfg.qc))[0] == "fail"
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_QC_USABLE": "pass,caveat,pending"}
    assert load_config(env=env).qc.usable == ["pass", "caveat", "pending"]
    for bad in ('[qc]\nusable = ["good"]\n',
                '[qc]\nthresholds = [{suffix = "bold", index = "fd_mean", better = "lower", pass = 0.5, '
                'fail = 0.2}]\n',
                '[qc]\nthresholds = [{suffix = "bold", index = "fd_mean"}]\n'):
        toml.write_text(bad)
        with pytest.raises(ConfigError) as info:
            load_config(toml, env={"INCLOUD_HOME": str(tmp_path)})
        assert "\n" not in str(info.value) and "qc." in str(info.value)


def test_recorded_indices_decide_clear_cases_and_keep_every_version(proj) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        assert gate.record_indices(db, CONSOLE, ids["bold1"], {"fd_mean": 0.1, "tsnr": 90.0}, "0.1", CFG) == "pass"
        assert gate.record_indices(db, CONSOLE, ids["bold2"], {"fd_mean": 0.9, "tsnr": 90.0}, "0.1", CFG) == "fail"
        assert gate.record_indices(db, CONSOLE, ids["t1"], {"cjv": 0.6, "snr_total": 12.0}, "0.1", CFG) == "pending"
    assert [status(site, ids[k]) for k in ("bold1", "bold2", "t1")] == ["pass", "fail", "pending"]
    with records.transaction(site) as db:  # a new version computes beside the old one and re-decides
        assert gate.record_indices(db, CONSOLE, ids["bold2"], {"fd_mean": 0.15, "tsnr": 90.0}, "0.2", CFG) == "pass"
        rows = db.scalars(select(QCIndex).where(QCIndex.series_id == ids["bold2"], QCIndex.name == "fd_mean")).all()
        assert sorted((r.pipeline_version, r.value) for r in rows) == [("0.1", 0.9), ("0.2", 0.15)]
        assert gate.current_indices(db, [ids["bold2"]])[ids["bold2"]]["fd_mean"] == 0.15
        auto = db.scalars(select(QCReview).where(QCReview.series_id == ids["bold2"])).all()
        assert [(r.decision, r.source, r.reviewer) for r in auto] == [("fail", "auto", gate.AUTO_REVIEWER),
                                                                     ("pass", "auto", gate.AUTO_REVIEWER)]
        for bad in ({"FD mean": 0.1}, {"fd_mean": float("inf")}, {"fd_mean": "0.1"}):
            with pytest.raises(ValidationError):
                gate.record_indices(db, CONSOLE, ids["bold1"], bad, "0.3", CFG)


def test_a_reviewers_decision_is_never_overwritten_by_later_indices(proj) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        gate.record_indices(db, CONSOLE, ids["bold1"], {"fd_mean": 0.3, "tsnr": 90.0}, "0.1", CFG)
        gate.review(db, actor(db, "rita"), ids["bold1"], "fail", comment="spikes")
        assert gate.record_indices(db, CONSOLE, ids["bold1"], {"fd_mean": 0.05, "tsnr": 99.0}, "0.2", CFG) == "fail"
    assert status(site, ids["bold1"]) == "fail"


# -- states and reviews ----------------------------------------------------------------------------------------

def test_review_states_pass_fail_caveat_with_reason_and_reopen(proj) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        rita = actor(db, "rita")
        gate.review(db, rita, ids["t1"], "pass")
        gate.review(db, rita, ids["bold1"], "fail", comment="  severe\nmotion ")
        with pytest.raises(ValidationError, match="caveat needs a reason"):
            gate.review(db, rita, ids["bold2"], "caveat")
        row = gate.review(db, rita, ids["bold2"], "caveat", comment="mild ghosting")
        assert row.reason == "mild ghosting"  # the comment serves as the reason
        with pytest.raises(ValidationError, match="decision must be one of"):
            gate.review(db, rita, ids["t1"], "maybe")
        with pytest.raises(ValidationError, match="longer than"):
            gate.review(db, rita, ids["t1"], "pass", comment="x" * 3000)
    assert [status(site, ids[k]) for k in ("t1", "bold1", "bold2")] == ["pass", "fail", "caveat"]
    with records.transaction(site) as db:
        last = gate.last_review(db, ids["bold1"])
        assert (last.reviewer, last.decision, last.comment) == ("rita", "fail", "severe motion")  # one line
        gate.review(db, actor(db, "rita"), ids["bold1"], "pending")
    assert status(site, ids["bold1"]) == "pending"


@pytest.mark.parametrize("who,outcome", [
    ("olga", "ok"),              # project owner
    ("rita", "ok"),              # qc_reviewer group + a role in the project
    ("ada", "ok"),               # site admin
    ("mike", PermissionDenied),  # member: writes data, does not rate it
    ("carl", PermissionDenied),  # collaborator without the qc_reviewer role
    ("nina", NotFound),          # no role in the project: the series does not exist for her
])
def test_only_qc_reviewers_and_owners_may_rate(proj, who, outcome) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        projects.add_site_admin(db, CONSOLE, "ada")
    with records.transaction(site) as db:
        who_actor = Actor.resolve(db, who, extra_groups=[QC_REVIEWER_GROUP] if who in ("rita", "nina") else [])
        if outcome == "ok":
            gate.review(db, who_actor, ids["t1"], "pass")
        else:
            with pytest.raises(outcome) as info:
                gate.review(db, who_actor, ids["t1"], "pass")
            assert "\n" not in str(info.value)
    assert status(site, ids["t1"]) == ("pass" if outcome == "ok" else "pending")


def test_every_decision_is_audited_without_its_comment(proj, caplog) -> None:  # type: ignore
    site, ids = proj
    caplog.set_level(logging.DEBUG)
    with records.transaction(site) as db:
        gate.record_indices(db, CONSOLE, ids["bold1"], {"fd_mean": 0.9, "tsnr": 90.0}, "0.1", CFG)
        gate.review(db, actor(db, "rita"), ids["t1"], "caveat", comment=SECRET_COMMENT)
        gate.review(db, actor(db, "olga"), ids["bold2"], "pass", comment=SECRET_COMMENT, reason=SECRET_COMMENT[:20])
        gate.set_policy(db, actor(db, "olga"), "QCP", ["pass"])
    with records.transaction(site) as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action.like("qc.%")).order_by(AuditEvent.id)).all()
        got = [(e.actor, e.action, e.object_id, e.detail.get("decision")) for e in events]
        assert got == [("console:test", "qc.indices", str(ids["bold1"]), None),
                       (gate.AUTO_REVIEWER, "qc.auto", str(ids["bold1"]), "fail"),
                       ("rita", "qc.review", str(ids["t1"]), "caveat"),
                       ("olga", "qc.review", str(ids["bold2"]), "pass"),
                       ("olga", "qc.policy", "QCP", None)]
        assert events[2].detail["fields"] == ["reason", "comment"] and events[2].detail["previous"] == "pending"
        dumped = json.dumps([e.detail for e in db.scalars(select(AuditEvent))])
        assert "ghosting" not in dumped and "Roe" not in dumped
        assert db.scalars(select(QCReview.comment).where(QCReview.series_id == ids["t1"])).one() == SECRET_COMMENT
    assert "ghosting" not in caplog.text and "Roe" not in caplog.text


# -- what enters processing ------------------------------------------------------------------------------------

def test_usable_series_follow_decisions_and_the_owners_policy(proj) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        olga, mike, rita = actor(db, "olga"), actor(db, "mike"), actor(db, "rita")
        assert gate.usable_series(db, mike, "QCP", CFG) == []  # everything pending: nothing enters
        gate.review(db, rita, ids["t1"], "pass")
        gate.review(db, rita, ids["bold1"], "caveat", reason="mild motion")
        gate.review(db, rita, ids["bold2"], "fail")
        assert [s.id for s in gate.usable_series(db, mike, "QCP", CFG)] == [ids["t1"], ids["bold1"]]
        assert [s.id for s in gate.usable_series(db, mike, "QCP", CFG, suffix="bold")] == [ids["bold1"]]
        with pytest.raises(PermissionDenied):
            gate.set_policy(db, rita, "QCP", ["pass"])  # reviewers rate; owners choose what enters
        with pytest.raises(ValidationError):
            gate.set_policy(db, olga, "QCP", ["good"])
        gate.set_policy(db, olga, "QCP", ["pass"])
        assert gate.accepted_states(db, db.scalar(select(Series.project_id).where(Series.id == ids["t1"]))) \
            == ["pass"]
        assert [s.id for s in gate.usable_series(db, mike, "QCP", CFG)] == [ids["t1"]]
        gate.review(db, rita, ids["bold2"], "pass")  # a reviewer's change reaches the next selection at once
        assert [s.id for s in gate.usable_series(db, mike, "QCP", CFG)] == [ids["t1"], ids["bold2"]]
        with pytest.raises(NotFound):
            gate.usable_series(db, Actor("nina"), "QCP", CFG)


def test_queue_shows_indices_flags_and_decisions_only_to_readers(proj) -> None:  # type: ignore
    site, ids = proj
    with records.transaction(site) as db:
        more = []
        ses = records.add_session(db, CONSOLE, "001", "02")
        for run in range(4):
            more.append(records.add_series(db, CONSOLE, ses, "func", "bold", {"task": "rest", "run": str(run + 1)}).id)
        values = dict(zip([ids["bold1"], ids["bold2"], *more], [0.30, 0.12, 0.11, 0.13, 0.12, 0.14]))
        for sid, fd in values.items():
            gate.record_indices(db, CONSOLE, sid, {"fd_mean": fd, "tsnr": 60.0}, "0.1", CFG)
        gate.review(db, actor(db, "rita"), ids["t1"], "caveat", comment="mild ringing")
    records.add_files(site, CONSOLE, ids["bold1"], {"motion.tsv": b"framewise_displacement\n0\n0.3\n"})
    records.add_files(site, CONSOLE, ids["bold2"], {"tsv": b"onset\tduration\n0\t1\n"})  # not motion
    with records.transaction(site) as db:
        q = gate.queue(db, actor(db, "carl"), "QCP", CFG)
        assert q["can_review"] is False and q["accept"] == ["pass", "caveat"]
        assert gate.queue(db, actor(db, "rita"), "QCP", CFG)["can_review"] is True
        rows = {r["id"]: r for r in q["items"]}
        assert set(rows) == {ids["t1"], ids["bold1"], ids["bold2"], *more}
        assert rows[ids["bold1"]]["flags"] == {"fd_mean": "high"}  # a group outlier (Tukey) in the review band
        assert rows[ids["bold1"]]["qc_status"] == "pending" and rows[ids["bold2"]]["qc_status"] == "pass"
        assert rows[ids["bold1"]]["motion_file"] is not None and rows[ids["bold2"]]["motion_file"] is None
        assert rows[ids["t1"]]["motion_file"] is None
        assert rows[ids["t1"]]["review"]["comment"] == "mild ringing"
        assert rows[ids["t1"]]["participant"] == "001" and rows[ids["bold1"]]["entities"]["run"] == "1"
        with pytest.raises(NotFound):
            gate.queue(db, Actor("nina", frozenset({QC_REVIEWER_GROUP})), "QCP", CFG)


def test_outlier_flags_need_a_group() -> None:
    assert gate.outlier_flags({1: 0.1, 2: 5.0}, 1.5) == {}
    assert gate.outlier_flags({1: 0.1, 2: 0.11, 3: 0.12, 4: 0.13, 5: 0.9}, 1.5) == {5: "high"}
    assert gate.outlier_flags({1: 50, 2: 51, 3: 52, 4: 53, 5: 5}, 1.5) == {5: "low"}


def test_the_api_counts_the_qc_reviewer_group_only_with_the_qc_scope() -> None:
    from hub.services.api.qc import reviewer_groups

    groups = ["researcher", QC_REVIEWER_GROUP]
    assert reviewer_groups(groups, ["custom:incloud:read", "custom:incloud:qc"]) == groups
    assert reviewer_groups(groups, ["custom:incloud:read"]) == ["researcher"]  # a token limited to reading
