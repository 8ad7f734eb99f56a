"""The protocol library (issue 18 item 2): cited standard sets, project sets, versions never edited in place,
impossible values refused with one line, on SQLite and PostgreSQL, from the library and the CLI."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from incloud_kernel.acquisition import protocols
from incloud_kernel.acquisition.standard import SETS, STANDARD
from incloud_kernel.archive.models import AuditEvent, Protocol
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from test_projects_cli import _capture, one_line_error, run, run_process  # noqa: F401 - _capture: the autouse fixture run() needs

ADMIN = Actor.console("tester")
T1 = {"sequence": "MPRAGE", "repetition_time": 2300, "echo_time": [2.98], "inversion_time": 900, "flip_angle": 9,
      "voxel_size": [1.0, 1.0, 1.0], "matrix": [240, 256], "slices": 176}


@pytest.fixture
def demo(site):  # type: ignore[no-untyped-def]
    with transaction(site.engine) as db:
        create_project(db, ADMIN, "DEMO")
        create_project(db, ADMIN, "OTHER")
        grant(db, ADMIN, "DEMO", "alice", "member")
        grant(db, ADMIN, "DEMO", "carol", "collaborator")
        protocols.ensure_standard(db)
    return site


def test_standard_sets_are_loaded_once_and_cited(demo) -> None:  # type: ignore[no-untyped-def]
    with transaction(demo.engine) as db:
        assert protocols.ensure_standard(db) == 0  # already there: nothing added, nothing changed
        rows = protocols.list_latest(db, Actor("alice"))
        assert {r.key for r in rows} == set(STANDARD)
        assert all(r.version == 1 and r.owner == "site" and "NeuroImage" in r.source for r in rows)
        ukb = protocols.resolve_set(db, Actor("alice"), "ukb")
        assert [p.key for p in ukb] == list(SETS["ukb"])
        t1 = ukb[0].params
        assert (t1["repetition_time"], t1["inversion_time"], t1["voxel_size"]) == (2000, 880, [1.0, 1.0, 1.0])


def test_a_project_set_is_versioned_beside_the_old_version_and_hides_the_site_one(demo) -> None:  # type: ignore[no-untyped-def]
    alice = Actor("alice")
    with transaction(demo.engine) as db:
        first = protocols.add_version(db, alice, "ukb-t1w", T1, name="Our MPRAGE", suffix="T1w", vendor="siemens",
                                      project="DEMO")
        second = protocols.add_version(db, alice, "ukb-t1w", {**T1, "flip_angle": 8}, name="Our MPRAGE",
                                       suffix="T1w", project="DEMO")
        assert (first.version, second.version, first.vendor) == (1, 2, "SIEMENS")
        assert protocols.get(db, alice, "ukb-t1w", project="DEMO").params["flip_angle"] == 8
        assert protocols.get(db, alice, "ukb-t1w", project="DEMO", version=1).params["flip_angle"] == 9
        assert protocols.get(db, alice, "ukb-t1w").owner == "site"  # outside the project: the standard one
        assert protocols.get(db, Actor("carol"), "ukb-t1w", project="DEMO").version == 2  # readers see it
        events = db.query(AuditEvent).filter(AuditEvent.action == "protocol.add_version",
                                             AuditEvent.actor == "alice").count()
        assert events == 2


def test_who_may_add_versions(demo) -> None:  # type: ignore[no-untyped-def]
    with transaction(demo.engine) as db:
        with pytest.raises(PermissionDenied):  # a collaborator reads but does not write
            protocols.add_version(db, Actor("carol"), "mine", T1, name="x", suffix="T1w", project="DEMO")
        with pytest.raises(NotFound):  # not a member: the project does not exist for her
            protocols.add_version(db, Actor("alice"), "mine", T1, name="x", suffix="T1w", project="OTHER")
        with pytest.raises(PermissionDenied):  # the site's standard sets are the admins'
            protocols.add_version(db, Actor("alice"), "ukb-t1w", T1, name="x", suffix="T1w")
        with pytest.raises(NotFound):
            protocols.get(db, Actor("alice"), "ukb-t1w", project="OTHER")


@pytest.mark.parametrize("params, words", [
    ({**T1, "repetition_time": 1000, "inversion_time": 500, "echo_time": [1200.0]}, "TE < TR"),
    ({**T1, "inversion_time": 2300}, "TI < TR"),
    ({**T1, "flip_angle": 0}, "flip_angle = 0 is outside (0, 180]"),
    ({**T1, "flip_angle": "nine"}, "flip_angle must be a number"),
    ({**T1, "voxel_size": [1.0, 1.0]}, "voxel_size must be a list of 3 values"),
    ({**T1, "slices": 17.5}, "slices must be a whole number"),
    ({**T1, "TR": 2300}, "unknown protocol parameter 'TR'"),
    ({**T1, "b_values": [0, 1000]}, "one direction count per b-value"),
    ({**T1, "repetition_time": float("nan")}, "repetition_time must be a number"),
    ({}, "non-empty mapping"),
])
def test_impossible_values_are_refused_in_one_line_and_nothing_is_written(demo, params, words) -> None:  # type: ignore[no-untyped-def]
    with transaction(demo.engine) as db:
        before = db.query(Protocol).count()
        with pytest.raises(ValidationError) as err:
            protocols.add_version(db, Actor("alice"), "bad", params, name="Bad", suffix="T1w", project="DEMO")
        assert words in str(err.value) and "\n" not in str(err.value)
        assert db.query(Protocol).count() == before


def test_the_database_refuses_to_edit_a_version_in_place(demo) -> None:  # type: ignore[no-untyped-def]
    """Whoever writes to the database (not only this module): an UPDATE of a protocol row fails."""
    with pytest.raises(DBAPIError) as err:
        with demo.engine.begin() as conn:
            conn.execute(text("UPDATE protocol SET params = '{}' WHERE key = 'ukb-t1w'"))
    assert "never edited in place" in str(err.value)
    with transaction(demo.engine) as db:
        assert protocols.get(db, ADMIN, "ukb-t1w").params["repetition_time"] == 2000


def test_cli_lists_shows_adds_and_refuses(demo, site_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    listed = run(site_env, "protocols", "list", "--json")
    assert listed.returncode == 0 and {r["key"] for r in json.loads(listed.stdout)} == set(STANDARD)
    shown = run(site_env, "protocols", "show", "hcp-t1w")
    assert shown.returncode == 0 and "1.81 x 3.6 x 5.39 x 7.18" in shown.stdout and "NeuroImage" in shown.stdout
    good = tmp_path / "t1.json"
    good.write_text(json.dumps(T1))
    added = run(site_env, "protocols", "add", "site-t1", str(good), "--project", "DEMO", "--name", "Site T1",
                "--suffix", "T1w", "--as", "alice")
    assert added.returncode == 0 and "version 1 to project DEMO" in added.stdout
    assert run(site_env, "protocols", "sets").stdout.startswith("ukb")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**T1, "repetition_time": 1000, "inversion_time": 500, "echo_time": [1500]}))
    proc = run_process(site_env, "protocols", "add", "x", str(bad), "--name", "X", "--suffix", "T1w")
    assert "TE < TR" in one_line_error(proc, 2)
