"""Teaching workshops without a hub: creating one (one-line errors for bad input), temporary accounts and join
codes, what a student may read (through ``incloud_kernel.archive.permissions`` only), and what expiry leaves.

The hub end to end (20 students at once, real system accounts, servers, the expiry service) is
tests/test_workshops_hub.py.
"""
from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from test_projects_cli import _capture, cli_env, ok, one_line_error, run  # noqa: F401 - fixtures run() needs

TODAY = date.today()


def _notebook() -> str:
    return json.dumps({"cells": [{"cell_type": "code", "source": "print(1)", "metadata": {}, "outputs": [],
                                  "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def teach(cli_env: dict[str, str], tmp_path):  # type: ignore[no-untyped-def]
    """Projects TEACH (owned by teacher tina, two series) and OTHER (one series), and a course notebook."""
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.site import Site

    ok(cli_env, "projects", "create", "TEACH", "--owner", "tina")
    ok(cli_env, "projects", "create", "OTHER")
    site = Site.open()
    console = Actor.console("test")
    with records.transaction(site) as db:
        for project, label in (("TEACH", "t01"), ("TEACH", "t02"), ("OTHER", "o01")):
            records.add_participant(db, console, project, label)
            records.add_series(db, console, records.add_session(db, console, label, "01"), "anat", "T1w")
    course = tmp_path / "course"
    course.mkdir()
    (course / "01-intro.ipynb").write_text(_notebook())
    return cli_env, course, site


def _as(db, user: str, *groups: str):  # type: ignore[no-untyped-def]
    from incloud_kernel.archive.permissions import Actor

    return Actor.resolve(db, user, extra_groups=groups)


def test_bad_input_gets_one_line_errors(teach) -> None:  # type: ignore[no-untyped-def]
    env, course, _ = teach
    base = ["workshop", "create", "--title", "Intro to MRI", "--dataset", "TEACH", "--notebook", str(course)]
    day = TODAY.isoformat()
    cases = {
        "is before the start date": ["--start", day, "--end", (TODAY - timedelta(days=1)).isoformat(), "--size", "5"],
        "size must be a number of students from 1": ["--start", day, "--end", day, "--size", "0"],
        "teaching dataset: project NOPE not found": ["--start", day, "--end", day, "--size", "5",
                                                     "--dataset", "NOPE"],
        "must be a date": ["--start", "tomorrow", "--end", day, "--size", "5"],
        "memory must look like": ["--start", day, "--end", day, "--size", "5", "--memory", "lots"],
    }
    for message, args in cases.items():
        line = one_line_error(run(env, *base, *args), 4 if "not found" in message else 2)
        assert message in line, line
    # A teacher who does not own the dataset cannot lend it; somebody without the teacher role cannot teach.
    from incloud_kernel import workshops
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    with transaction(Site.open().engine) as db:
        with pytest.raises(NotFound):
            workshops.create(db, _as(db, "ted", "teacher"), title="x", starts_on=TODAY, ends_on=TODAY, size=2,
                             dataset="TEACH")
        with pytest.raises(PermissionDenied, match="teacher role"):
            workshops.create(db, _as(db, "tina"), title="x", starts_on=TODAY, ends_on=TODAY, size=2,
                             dataset="TEACH")


def test_students_read_the_dataset_only_and_nothing_after_expiry(teach) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel import workshops
    from incloud_kernel.archive import permissions as perm
    from incloud_kernel.archive.models import AuditEvent
    from incloud_kernel.db import transaction

    env, course, site = teach
    with transaction(site.engine) as db:
        shown, join_code = workshops.create(
            db, _as(db, "tina", "teacher"), title="Intro to MRI", starts_on=TODAY, ends_on=TODAY + timedelta(days=2),
            size=3, dataset="TEACH", notebooks={"01-intro.ipynb": _notebook()}, code="mri101")
        made = workshops.make_accounts(db, _as(db, "tina", "teacher"), "mri101", 2)
    (alice, alice_pw), (bob, _) = made
    assert (alice, bob) == ("mri101-s001", "mri101-s002")
    assert len(join_code) == 8 and shown.dataset == "TEACH"

    with transaction(site.engine) as db:
        joined, joined_pw, _ = workshops.join(db, join_code.lower())  # the code is read case-insensitively
        assert joined == "mri101-s003"
        with pytest.raises(ValidationError, match="is full"):
            workshops.join(db, join_code)
        assert workshops.check_login(db, alice, alice_pw) is not None
        assert workshops.check_login(db, alice, alice_pw + "x") is None
        assert workshops.check_login(db, "tina", alice_pw) is None
        student = _as(db, alice, "student")
        assert [p.code for p in perm.list_projects(db, student)] == ["TEACH"]
        assert perm.count_series(db, student) == 2
        with pytest.raises(NotFound):
            perm.require(db, student, "OTHER")
        assert perm.count_series(db, _as(db, "nobody")) == 0
        with pytest.raises(PermissionDenied):
            perm.require(db, student, "TEACH", perm.Action.write)  # read only
        assert workshops.course_notebooks(db, student, "mri101") == {"01-intro.ipynb": _notebook()}
        listed = workshops.list_workshops(db, student)
        assert [w.code for w in listed["attending"]] == ["mri101"] and listed["teaching"] == []
        teacher = workshops.list_workshops(db, _as(db, "tina", "teacher"))
        assert [(w.code, w.students, w.state) for w in teacher["teaching"]] == [("mri101", 3, "running")]
        assert workshops.due_accounts(db) == []
        # The day after its end date, without anybody ending it: no login, no dataset, every account due.
        after = TODAY + timedelta(days=3)
        assert workshops.check_login(db, alice, alice_pw, today=after) is None
        assert not db.scalars(perm.workshop_project_ids(student, today=after)).all()
        assert workshops.due_accounts(db, today=after) == [alice, bob, joined]

    out = ok(env, "workshop", "expire", "mri101")
    assert "ended workshop mri101" in out and "3 account(s)" in out
    with transaction(site.engine) as db:
        student = _as(db, alice, "student")
        assert perm.count_projects(db, student) == 0 and perm.count_series(db, student) == 0
        assert workshops.check_login(db, alice, alice_pw) is None
        with pytest.raises(NotFound):
            workshops.course_notebooks(db, student, "mri101")
        with pytest.raises(ValidationError, match="has ended"):
            workshops.join(db, join_code)
        assert workshops.due_accounts(db) == [alice, bob, joined]
        for name in workshops.due_accounts(db):
            workshops.mark_removed(db, name, ["hub user", "home folder"])
    with transaction(site.engine) as db:
        assert workshops.due_accounts(db) == []
        events = db.query(AuditEvent).filter(AuditEvent.action == "workshop.account_removed").all()
        assert sorted(e.detail["username"] for e in events) == [alice, bob, joined]
        assert all(joined_pw not in json.dumps(e.detail) and alice_pw not in json.dumps(e.detail)
                   for e in db.query(AuditEvent).all())


def test_cli_create_prints_the_join_code_and_accounts_once(teach) -> None:  # type: ignore[no-untyped-def]
    env, course, _ = teach
    out = json.loads(ok(env, "workshop", "create", "--title", "Intro", "--start", TODAY.isoformat(), "--end",
                        TODAY.isoformat(), "--size", "4", "--dataset", "TEACH", "--notebook", str(course),
                        "--code", "intro1", "--accounts", "2", "--json"))
    assert out["notebooks"] == ["01-intro.ipynb"] and len(out["accounts"]) == 2
    listed = ok(env, "workshop", "accounts", "intro1")
    assert "intro1-s001\tactive" in listed and out["accounts"][0]["password"] not in listed
    assert "intro1\trunning" in ok(env, "workshop", "list")
    line = one_line_error(run(env, "workshop", "accounts", "intro1", "--add", "3"), 2)
    assert "is full (4 students)" in line


def test_hub_puts_workshop_logins_before_the_sites_authenticator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Whatever the site's authenticator, workshop accounts are checked first, the join page exists, the spawn
    hook chains the mode's own, and the expiry service holds only the scopes it needs."""
    from jupyterhub.authenticators.shared import SharedPasswordAuthenticator

    from hub.workshops import SERVICE, SERVICE_SCOPES, WorkshopLogins
    from test_hub_config import _configure

    c = _configure(tmp_path, INCLOUD_HUB_AUTHENTICATOR="shared", INCLOUD_HUB_SHARED_PASSWORD="demo-password",
                   INCLOUD_HUB_ADMIN_USERS="[]", INCLOUD_HUB_WORKSHOP_EXPIRE_EVERY="7")
    cls = c.JupyterHub.authenticator_class
    assert issubclass(cls, WorkshopLogins) and issubclass(cls, SharedPasswordAuthenticator)
    assert cls.__mro__[1] is WorkshopLogins
    service = next(s for s in c.JupyterHub.services if s["name"] == SERVICE)
    assert service["command"][-2:] == ["expire", "--every=7"]
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == SERVICE)
    assert role["scopes"] == SERVICE_SCOPES and role["services"] == [SERVICE]
    assert {g for g in c.JupyterHub.load_groups} >= {"teacher", "student"}
    assert callable(c.Spawner.pre_spawn_hook)


def test_workstation_ports_come_from_below_the_ephemeral_range() -> None:
    """20 spawns at once lost one server to a port an outgoing connection took between the hub's pick and the
    server's bind (JupyterHub's random_port is an ephemeral port): ports now come from below that range and are
    not handed twice while a server may still be starting."""
    from hub.isolated import server_port

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [server_port(now=0.0) for _ in range(40)]
    assert all(1024 <= p < low for p in ports) and len(set(ports)) == len(ports)
