"""The home page's live status (``hub.services.api.portal``) and module choice (``hub.roles.modules_for``) without a
hub: counts go through the permission layer as the viewer, tiles follow the viewer's scopes, site health only for
the admin scope, and nothing patient-identifying is in it."""
from __future__ import annotations

import json

from archive_data import ADMIN, populate

from hub.roles import MODULES, modules_for, scopes_of
from hub.services.api import portal
from incloud_kernel.archive import projects
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import session_factory, transaction
from incloud_kernel.site import Site


def _status(site: Site, user: str, groups: list[str], admin: bool = False) -> dict:
    with session_factory(site.engine)() as db:
        actor = Actor.resolve(db, user, extra_groups=groups)
        return portal.status(db, actor, site, scopes_of(groups, admin))


def test_status_counts_only_what_the_viewer_may_see(site: Site) -> None:
    stored = populate(site)
    with transaction(site.engine) as db:
        projects.grant(db, ADMIN, stored.project, "rita", "member")
    member = _status(site, "rita", ["researcher"])
    assert set(member) == {m.key for m in modules_for(["researcher"]) if m.key != "workstation"}
    assert (member["archive"]["projects"], member["archive"]["participants"], member["archive"]["series"]) == (1, 3, 4)
    assert [s["id"] for s in member["archive"]["last_arrivals"]] == [4, 3, 2, 1]  # newest first
    assert {s["project"] for s in member["archive"]["last_arrivals"]} == {stored.project}
    assert member["reservation"] == {"upcoming": 0, "to_approve": 0} and "qc" not in member and "health" not in member
    stranger = _status(site, "olga", ["researcher"])
    assert stranger["archive"] == {"projects": 0, "participants": 0, "series": 0, "last_arrivals": []}
    assert (member["features"], stranger["features"]) == ({"projects": 1}, {"projects": 0})  # the library tile
    reviewer = _status(site, "rita", ["qc_reviewer"])
    assert reviewer["qc"] == {"waiting": 4, "failed": 0}
    clinician = _status(site, "rita", ["clinician"])
    assert clinician == {"reports": {"scans": 0, "model": None}, "upload": {"uploads": 0, "last": []}}


def test_site_health_only_for_the_admin_scope(site: Site) -> None:
    populate(site)
    health = _status(site, "root-of-all", ["admin"])["health"]
    assert health["services"]["database"] is True
    assert health["disk"] and all(0 <= d["used_percent"] <= 100 for d in health["disk"])
    assert health["queues"]["quarantine"] == 0 and health["queues"]["slurm"] is None  # embedded: no Slurm
    assert all("health" not in _status(site, "u", [g]) for g in ("researcher", "qc_reviewer", "clinician"))


def test_frame_page_hands_the_status_to_the_same_origin_only() -> None:
    page = portal.post_message_page({"archive": {"last_arrivals": [{"suffix": "</script><b>"}]}})
    assert "window.location.origin" in page and "</script><b>" not in page  # no way out of the script


def test_built_modules_first_and_every_module_reaches_some_role() -> None:
    assert [m.key for m in modules_for(["researcher", "qc_reviewer"])][:3] == ["archive", "qc", "workstation"]
    reached = {m.key for group in ("researcher", "qc_reviewer", "clinician", "registrar") for m in modules_for([group])}
    assert reached | {m.key for m in modules_for([], admin=True)} == {m.key for m in MODULES}
    assert [m.key for m in modules_for([])] == ["workstation"]
    json.dumps([m.__dict__ for m in MODULES])


def test_workstation_gets_dashboards_replaced_and_examples_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What hub/workstation.py puts into a server's root: dashboards are the site's (replaced at every start),
    examples become the user's (an edited one is kept, a missing one comes back)."""
    import nbformat
    import voila_apps
    from incloud_kernel import notebooks

    dashboards, examples = voila_apps.install(tmp_path), notebooks.install(tmp_path)
    assert sorted(p.name for p in dashboards.iterdir()) == sorted(d.notebook for d in voila_apps.DASHBOARDS)
    assert sorted(p.name for p in examples.iterdir()) == sorted(notebooks.NOTEBOOKS)
    for folder in (dashboards, examples):
        for path in folder.iterdir():
            nbformat.validate(nbformat.read(path, as_version=4))
    (dashboards / "archive.ipynb").write_text("stale")
    (examples / notebooks.NOTEBOOKS[0]).write_text("mine")
    (examples / notebooks.NOTEBOOKS[1]).unlink()
    voila_apps.install(tmp_path), notebooks.install(tmp_path)
    assert (dashboards / "archive.ipynb").read_text() != "stale"
    assert (examples / notebooks.NOTEBOOKS[0]).read_text() == "mine"
    assert (examples / notebooks.NOTEBOOKS[1]).exists()
    assert all(d.render_path == f"voila/render/INCloud/dashboards/{d.notebook}" for d in voila_apps.DASHBOARDS)
