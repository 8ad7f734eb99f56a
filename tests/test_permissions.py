"""Every role x action x object, on SQLite and PostgreSQL: who may read/list, write/add and manage what.

Actors: owner, member and collaborator (each once as a direct user grant and once through a group), a user
with no membership at all (but in a group that has none either), and an explicit site admin. Objects:
project, participant, session, series, file. Actions: read (get + list), write (add something to it),
manage (grant on a project; remove for the objects below it).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import func, select

from conftest import _postgres_database
from incloud_kernel.archive import permissions as perm
from incloud_kernel.archive import projects, records
from incloud_kernel.archive.models import AuditEvent, DataFile, Membership, Participant, Series, Session
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.config import load_config
from incloud_kernel.db import transaction
from incloud_kernel.errors import NotFound, PermissionDenied, ValidationError
from incloud_kernel.site import Site

CONSOLE = Actor.console("test")

#: actor name -> (user name, role it holds in project P or "none"/"admin")
ACTORS: dict[str, tuple[str, str]] = {
    "owner-direct": ("olivia", "owner"),
    "owner-via-group": ("oscar", "owner"),
    "member-direct": ("mia", "member"),
    "member-via-group": ("max", "member"),
    "collaborator-direct": ("cleo", "collaborator"),
    "collaborator-via-group": ("carl", "collaborator"),
    "no-membership": ("nina", "none"),
    "site-admin": ("ada", "admin"),
}
EXPECTED: dict[str, set[Action]] = {
    "owner": {Action.read, Action.write, Action.manage},
    "member": {Action.read, Action.write},
    "collaborator": {Action.read},
    "none": set(),
    "admin": {Action.read, Action.write, Action.manage},
}
OBJECTS = ["project", "participant", "session", "series", "file"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One site per backend with projects P (roles as in ACTORS) and Q (nobody's but admins')."""
    home = tmp_path_factory.mktemp(f"perm-{request.param}")
    pg = None
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'incloud.sqlite'}"
    else:
        pg = _postgres_database()
        url = next(pg)
    site = Site.open(load_config(env={"INCLOUD_HOME": str(home), "INCLOUD_DATABASE_URL": url}), migrate=True)
    site.ensure_roots()
    with transaction(site.engine) as db:
        projects.create_project(db, CONSOLE, "P", "Project P")
        projects.create_project(db, CONSOLE, "Q", "Project Q")
        for name, (user, role) in ACTORS.items():
            if name.endswith("-direct"):
                projects.grant(db, CONSOLE, "P", user, role)
            elif name.endswith("-via-group"):
                projects.add_group_member(db, CONSOLE, f"{role}s", user)
                projects.grant(db, CONSOLE, "P", f"{role}s", role, kind="group")
        projects.add_group_member(db, CONSOLE, "outsiders", "nina")  # a group with no membership anywhere
        projects.add_site_admin(db, CONSOLE, "ada")
    # Something in Q that only the admin may see.
    _chain(site, "Q")
    yield site
    if pg is not None:
        pg.close()


_labels = itertools.count(1)


@dataclass
class Chain:
    participant: int
    session: int
    series: int
    file: int
    relpath: str


def _chain(site: Site, project: str = "P") -> Chain:
    """A fresh participant -> session -> series -> file in ``project``, made by the console."""
    n = next(_labels)
    with records.transaction(site) as db:
        p = records.add_participant(db, CONSOLE, project, f"{project}x{n}", sex="F")
        s = records.add_session(db, CONSOLE, p, "1")
        se = records.add_series(db, CONSOLE, s, "anat", "T1w")
        ids = p.id, s.id, se.id
    (f,) = records.add_files(site, CONSOLE, ids[2], {"nii.gz": b"\x00" * 16})
    return Chain(*ids, file=f.id, relpath=f.relpath)


def _actor(site: Site, name: str) -> Actor:
    with transaction(site.engine) as db:
        return Actor.resolve(db, ACTORS[name][0])


def _counts(site: Site) -> dict[str, int]:
    with transaction(site.engine) as db:
        return {m.__tablename__: db.scalar(select(func.count()).select_from(m))
                for m in (Participant, Session, Series, DataFile, Membership)}


# ---- the operations, one per object x action ---------------------------------------------------------------

_GET: dict[str, Callable[..., Any]] = {
    "participant": perm.get_participant, "session": perm.get_session, "series": perm.get_series,
    "file": perm.get_file,
}
_LIST: dict[str, Callable[..., Any]] = {
    "project": perm.list_projects, "participant": perm.list_participants, "session": perm.list_sessions,
    "series": perm.list_series, "file": perm.list_files,
}
_COUNT: dict[str, Callable[..., Any]] = {
    "project": perm.count_projects, "participant": perm.count_participants, "session": perm.count_sessions,
    "series": perm.count_series, "file": perm.count_files,
}


def _object_id(obj: str, chain: Chain, db: Any) -> int:
    if obj == "project":
        return perm.require(db, CONSOLE, "P").id
    return getattr(chain, obj)


def do_read(site: Site, actor: Actor, obj: str, chain: Chain) -> None:
    """Get the object and find it in the unscoped listing; NotFound if either says it is not there."""
    with transaction(site.engine) as db:
        target = _object_id(obj, chain, db)
        got = perm.require(db, actor, "P", Action.read) if obj == "project" else _GET[obj](db, actor, target)
        assert got.id == target
        listed = {row.id for row in _LIST[obj](db, actor, page_size=1000)}
        if target not in listed:
            raise NotFound("listed nowhere")
        # and the project-scoped listing holds it too
        if obj != "project":
            assert target in {row.id for row in _LIST[obj](db, actor, project="P", page_size=1000)}


def do_write(site: Site, actor: Actor, obj: str, chain: Chain) -> None:
    """Add something to the object: a participant to the project, a session to the participant, a series
    to the session, a file to the series, a sibling file next to the file (files themselves are immutable)."""
    n = next(_labels)
    if obj in ("series", "file"):
        records.add_files(site, actor, chain.series, {"json" if obj == "series" else "bvec": b"{}"})
        return
    with records.transaction(site) as db:
        if obj == "project":
            records.add_participant(db, actor, "P", f"new{n}")
        elif obj == "participant":
            records.add_session(db, actor, chain.participant, f"s{n}")
        elif obj == "session":
            records.add_series(db, actor, chain.session, "anat", "T2w", {"run": n})


def do_manage(site: Site, actor: Actor, obj: str, chain: Chain) -> None:
    """Manage: grant a role in the project; remove a participant, session, series or file."""
    if obj == "project":
        with transaction(site.engine) as db:
            projects.grant(db, actor, "P", f"guest{next(_labels)}", "collaborator")
        return
    model = {"participant": Participant, "session": Session, "series": Series, "file": DataFile}[obj]
    with transaction(site.engine) as db:
        target = db.get(model, getattr(chain, obj))
    records.remove(site, actor, target)


DO = {Action.read: do_read, Action.write: do_write, Action.manage: do_manage}


@pytest.mark.parametrize("obj", OBJECTS)
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
@pytest.mark.parametrize("actor_name", list(ACTORS))
def test_role_action_object(world: Site, actor_name: str, action: Action, obj: str) -> None:
    site = world
    chain = _chain(site)
    actor = _actor(site, actor_name)
    role = ACTORS[actor_name][1]
    before = _counts(site)
    if action in EXPECTED[role]:
        DO[action](site, actor, obj, chain)
        if action is Action.manage and obj != "project":  # removing anything above a file removes the file
            assert not (site.archive_root / chain.relpath).exists()
        return
    # Denied: "no membership at all" must not even learn that the object exists.
    expected_error = NotFound if role == "none" else PermissionDenied
    with pytest.raises(expected_error) as info:
        DO[action](site, actor, obj, chain)
    assert "\n" not in str(info.value)
    assert _counts(site) == before, "a denied action changed the database"
    assert (site.archive_root / chain.relpath).exists(), "a denied action touched the archive"


@pytest.mark.parametrize("actor_name", list(ACTORS))
def test_counts_and_listings_cover_exactly_visible_projects(world: Site, actor_name: str) -> None:
    site = world
    actor = _actor(site, actor_name)
    role = ACTORS[actor_name][1]
    with transaction(site.engine) as db:
        codes = {p.code for p in perm.list_projects(db, actor)}
        expected_codes = {"none": set(), "admin": {"P", "Q"}}.get(role, {"P"})
        assert codes == expected_codes
        assert perm.count_projects(db, actor) == len(expected_codes)
        visible = set(db.scalars(perm.visible_project_ids(actor)))
        for obj in OBJECTS[1:]:
            rows = _LIST[obj](db, actor, page_size=1000).items
            assert {r.project_id for r in rows} <= visible
            assert _COUNT[obj](db, actor) == len(rows)
            if role == "none":
                assert rows == []
        if role == "none":
            for code in ("P", "Q", "DOESNOTEXIST"):
                with pytest.raises(NotFound) as info:
                    perm.list_series(db, actor, project=code)
                assert str(info.value) == f"project {code} not found"  # same words: existence not revealed


def test_allowed_table() -> None:
    assert [a for a in Action if perm.allowed("owner", a)] == [Action.read, Action.write, Action.manage]
    assert [a for a in Action if perm.allowed("member", a)] == [Action.read, Action.write]
    assert [a for a in Action if perm.allowed("collaborator", a)] == [Action.read]
    assert not any(perm.allowed(None, a) for a in Action)
    assert not any(perm.allowed("admin", a) for a in Action)  # not a role: admins come from SiteAdmin only


def test_site_admin_is_explicit(world: Site) -> None:
    with transaction(world.engine) as db:
        assert Actor.resolve(db, "ada").site_admin
        for user in ("admin", "root", "olivia"):  # no name makes anybody an admin
            assert not Actor.resolve(db, user).site_admin
        assert not Actor("ada").site_admin
        assert perm.list_projects(db, Actor("ada")).items == []
        with pytest.raises(PermissionDenied):
            projects.create_project(db, Actor.resolve(db, "olivia"), "NEWP")


def test_strongest_role_wins_and_extra_groups_count(world: Site) -> None:
    with transaction(world.engine) as db:
        projects.grant(db, CONSOLE, "P", "greta", "collaborator")
    with transaction(world.engine) as db:
        greta = Actor.resolve(db, "greta")
        assert perm.role_in(db, greta, perm.require(db, greta, "P").id) == "collaborator"
        with pytest.raises(PermissionDenied):
            perm.require(db, greta, "P", Action.write)
        # A group that the hub vouches for (not in the database) counts as well.
        greta_in_owners = Actor.resolve(db, "greta", extra_groups=["owners"])
        assert perm.require(db, greta_in_owners, "P", Action.manage).code == "P"


def test_revoke_takes_access_away(world: Site) -> None:
    with transaction(world.engine) as db:
        projects.grant(db, CONSOLE, "P", "hugo", "member")
    with transaction(world.engine) as db:
        assert [p.code for p in perm.list_projects(db, Actor.resolve(db, "hugo"))] == ["P"]
        projects.revoke(db, CONSOLE, "P", "hugo")
    with transaction(world.engine) as db:
        hugo = Actor.resolve(db, "hugo")
        assert perm.list_projects(db, hugo).items == []
        with pytest.raises(NotFound):
            perm.require(db, hugo, "P")
        events = db.scalars(select(AuditEvent.action).where(AuditEvent.object_type == "project")).all()
        assert "membership.grant" in events and "membership.revoke" in events


def test_series_filters_and_pages(world: Site) -> None:
    site = world
    n = next(_labels)
    with records.transaction(site) as db:
        p = records.add_participant(db, CONSOLE, "P", f"filt{n}")
        s = records.add_session(db, CONSOLE, p, "1", scanner="PrismaA")
        for i, (datatype, suffix) in enumerate([("anat", "T1w"), ("anat", "T2w"), ("func", "bold"),
                                                ("func", "bold"), ("dwi", "dwi")]):
            records.add_series(db, CONSOLE, s, datatype, suffix, {"run": i + 1},
                               qc_status="pass" if i % 2 else "pending")
        session_id, label = s.id, p.label
    with transaction(site.engine) as db:
        max_ = Actor.resolve(db, "max")  # member via group
        first = perm.list_series(db, max_, project="P", session=session_id, page_size=2)
        assert len(first) == 2 and first.has_more
        third = perm.list_series(db, max_, project="P", session=session_id, page=3, page_size=2)
        assert len(third) == 1 and not third.has_more
        ids = [r.id for r in first] + [r.id for r in perm.list_series(
            db, max_, project="P", session=session_id, page=2, page_size=2)] + [r.id for r in third]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert perm.count_series(db, max_, project="P", session=session_id, datatype="func") == 2
        assert perm.count_series(db, max_, session=session_id, datatype=["anat", "dwi"]) == 3
        assert perm.count_series(db, max_, session=session_id, qc_status="pass") == 2
        assert perm.count_series(db, max_, participant=label, suffix="bold", modality="MR") == 2
        assert [s.id for s in perm.list_sessions(db, max_, scanner="PrismaA")] == [session_id]
        with pytest.raises(ValidationError, match="unknown filter"):
            perm.list_series(db, max_, colour="red")
        with pytest.raises(ValidationError, match="page_size"):
            perm.list_series(db, max_, page_size=10_000)
        # the collaborator reads the same page; nina (no membership) gets nothing
        assert perm.count_series(db, Actor.resolve(db, "cleo"), session=session_id) == 5
        assert perm.count_series(db, Actor.resolve(db, "nina"), session=session_id) == 0


def test_bad_names_are_one_line_errors_and_store_nothing(world: Site) -> None:
    before = _counts(world)
    with transaction(world.engine) as db:
        for bad in ("../etc", "/abs", "a b", "a_b", "a-b", "ä", "", "x" * 65):
            with pytest.raises(ValidationError) as info:
                projects.create_project(db, CONSOLE, bad)
            assert "\n" not in str(info.value)
        with pytest.raises(ValidationError, match="already exists"):
            projects.create_project(db, CONSOLE, "p")  # case-insensitive duplicate of P
        with pytest.raises(ValidationError):
            projects.grant(db, CONSOLE, "P", "../x", "member")
        with pytest.raises(ValidationError, match="role"):
            projects.grant(db, CONSOLE, "P", "someone", "boss")
    assert _counts(world) == before


def test_audit_events_hold_no_attribute_values(world: Site) -> None:
    n = next(_labels)
    with records.transaction(world) as db:
        p = records.add_participant(db, CONSOLE, "P", f"aud{n}", sex="M", birth_year=1971, medication="lithium",
                                    diagnosis=["F31"])
        pid = p.id
    with transaction(world.engine) as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "participant.add",
                                                    AuditEvent.object_id == str(pid))).one()
        text = repr(event.detail) + event.object_id + event.actor
        for value in ("1971", "lithium", "F31"):
            assert value not in text
        assert event.detail["fields"] == ["birth_year", "diagnosis", "medication", "sex"]


def test_files_are_listed_only_where_permitted(world: Site, tmp_path: Path) -> None:
    chain_q = _chain(world, "Q")
    with transaction(world.engine) as db:
        olivia = Actor.resolve(db, "olivia")  # owner of P, nothing in Q
        with pytest.raises(NotFound):
            perm.get_file(db, olivia, chain_q.relpath)
        with pytest.raises(NotFound):
            perm.get_series(db, olivia, chain_q.series)
        ada = Actor.resolve(db, "ada")
        assert perm.get_file(db, ada, chain_q.relpath).id == chain_q.file
