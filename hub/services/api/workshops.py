"""The INCloud API's workshop routes (``incloud_kernel.workshops``): list your workshops, create one (teachers),
make temporary accounts, end a workshop early, and fetch the course notebooks (students' workstations do, with the
student's own token).

The routes only parse arguments; every rule (who may teach, what a student may read) is
``incloud_kernel.workshops``' and ``incloud_kernel.archive.permissions``'. Passwords and join codes appear in the
one answer that creates them and are never logged.
"""
from __future__ import annotations

from typing import Any

from tornado import web

from hub.services.api.app import BaseHandler, Route
from incloud_kernel.archive.permissions import Actor

SEE, TEACH = "custom:incloud:workshop", "custom:incloud:teach"
_CODE = r"([A-Za-z0-9]+)"  # checked by incloud_kernel.workshops; the API's usual code pattern


class WorkshopsHandler(BaseHandler):
    """GET: the workshops you teach and attend; POST (teachers): create one."""

    scope = SEE
    methods = ("get", "post")

    async def get(self) -> None:
        from incloud_kernel import workshops

        found = await self.in_db(lambda db, actor: workshops.list_workshops(db, actor))
        self.send({k: [v.as_dict() for v in views] for k, views in found.items()})

    async def post(self) -> None:
        from incloud_kernel import workshops

        self.require_scope(TEACH)
        body = self.body()
        known = {"title", "starts_on", "ends_on", "size", "dataset", "notebooks", "cores", "memory", "code"}
        if set(body) - known or not isinstance(body.get("notebooks", {}), dict):
            raise web.HTTPError(400, f"give {', '.join(sorted(known))} only (notebooks: file name -> notebook "
                                "JSON text)", reason="invalid request")

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            shown, join_code = workshops.create(db, actor, **body)
            db.commit()
            return {**shown.as_dict(), "join_code": join_code}

        created = await self.in_db(work)
        self.set_status(201)
        self.send(created)


class WorkshopAccountsHandler(BaseHandler):
    """GET: the workshop's accounts (no passwords); POST ``{"count": N}``: N new accounts, passwords shown once."""

    scope = TEACH
    methods = ("get", "post")

    async def get(self, code: str) -> None:
        from incloud_kernel import workshops

        self.send({"items": await self.in_db(lambda db, actor: workshops.accounts_of(db, actor, code))})

    async def post(self, code: str) -> None:
        from incloud_kernel import workshops

        count = self.body().get("count")

        def work(db: Any, actor: Actor) -> list[dict[str, str]]:
            made = workshops.make_accounts(db, actor, code, count)  # type: ignore[arg-type]
            db.commit()
            return [{"username": u, "password": p} for u, p in made]

        self.set_status(201)
        self.send({"accounts": await self.in_db(work)})


class WorkshopEndHandler(BaseHandler):
    """POST: end the workshop now; the expiry service removes its accounts, servers and files."""

    scope = TEACH
    methods = ("post",)

    async def post(self, code: str) -> None:
        from incloud_kernel import workshops

        self.body()  # a token header, never a cookie alone

        def work(db: Any, actor: Actor) -> dict[str, Any]:
            shown = workshops.end(db, actor, code)
            db.commit()
            return shown.as_dict()

        self.send(await self.in_db(work))


class WorkshopNotebooksHandler(BaseHandler):
    """GET: the course notebooks (file name -> notebook JSON text), for the workshop's students and teacher."""

    scope = SEE

    async def get(self, code: str) -> None:
        from incloud_kernel import workshops

        self.send({"notebooks": await self.in_db(lambda db, actor: workshops.course_notebooks(db, actor, code))})


ROUTES: list[Route] = [
    Route("api/workshops", WorkshopsHandler, "Workshops you teach and attend (GET) or create one (POST; teachers: "
          "title, starts_on, ends_on, size, dataset, notebooks, cores, memory; answers the join code once)"),
    Route(rf"api/workshops/{_CODE}/accounts", WorkshopAccountsHandler, "A workshop's temporary accounts (GET) or "
          "make more (POST count; passwords shown once)"),
    Route(rf"api/workshops/{_CODE}/end", WorkshopEndHandler, "End a workshop now (its teacher)"),
    Route(rf"api/workshops/{_CODE}/notebooks", WorkshopNotebooksHandler, "A workshop's course notebooks"),
]
