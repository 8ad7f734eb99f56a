"""Issue 19: the portal's Upload tile is live for the upload scope: the viewer's own newest uploads with their
state and processing steps (never another user's, never a pseudonym or a ticket id). The tile's page is checked
in Chromium by tests/test_portal.py (how to install and run the uploader, with this site's API address)."""
from __future__ import annotations

import json
import time

from hub.roles import modules_for, scopes_of
from hub.services.api import portal
from hub.services.api.upload import Store
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import session_factory
from incloud_kernel.site import private_dir


def test_the_upload_tile_lists_the_viewers_own_uploads_and_their_steps(site) -> None:  # type: ignore
    assert "upload" in [m.key for m in modules_for(["clinician"]) if m.built]
    store = Store(private_dir(site.config.spool / "upload"))
    steps = [{"name": "archived", "state": "done", "detail": "1 series"},
             {"name": "qc", "state": "review", "detail": "0 usable, 0 failed, 1 waiting for review"},
             {"name": "features", "state": "waiting", "detail": ""}, {"name": "report", "state": "waiting"}]
    for n, (user, state) in enumerate([("cleo", "archived"), ("cleo", "receiving"), ("otto", "archived")]):
        store.save({"id": f"ticket{n:012d}xyzw", "user": user, "project": "CLIN", "pseudonym": f"UPLSECRET{n}",
                    "created": time.time() + n, "state": state, "series": [{"id": 7, "name": "T1w"}],
                    "steps": steps if state == "archived" else []})
    with session_factory(site.engine)() as db:
        actor = Actor.resolve(db, "cleo", extra_groups=["clinician"])
        tile = portal.status(db, actor, site, scopes_of(["clinician"]))["upload"]
    assert tile["uploads"] == 2
    assert [(u["state"], u["steps"]) for u in tile["last"]] == [
        ("receiving", []), ("archived", [{"name": s["name"], "state": s["state"]} for s in steps])]
    text = json.dumps(tile)
    assert "UPLSECRET" not in text and "ticket0" not in text
