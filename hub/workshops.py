"""The hub's side of teaching workshops (``incloud_kernel.workshops``): students log in with their temporary
accounts, join with a code, get a workstation with the course notebooks and the workshop's limits, and an expiry
service removes everything of theirs after the end.

- ``configure(c, cfg)`` (from ``hub.hubconfig``): wraps whichever authenticator the site uses so that a workshop
  account's name is checked against the workshop's password hash (and never reaches the site's own
  authenticator), puts a new student into the ``student`` group, adds the join page ``/hub/workshop/join``,
  chains a pre-spawn hook (limits, one workstation, the course), and adds the ``workshop-expiry`` service.
- ``python -m hub.workshops expire --every S`` is that service: every S seconds it removes the accounts of ended
  workshops: their servers and hub users (hub REST API, the service's own token), their processes, system account
  and home folder (the root launcher's ``remove-user``, which only acts on accounts it created as temporary), then
  records each removal as an audit event.
- ``seed_course(root)`` runs in the student's workstation (``hub.workstation``) and copies the course notebooks,
  fetched from the INCloud API with the student's own token.

Must never log a password or join code, never let a workshop account log in through the site's authenticator,
and never remove an account that is not a workshop's. Module level imports stay standard library only (the
workstation imports this module).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: Where a student's workstation finds the course notebooks (below the server's root folder).
COURSE_FOLDER = "Workshop"
#: The expiry service's name and scopes (hub REST API: stop servers, delete users; nothing else).
SERVICE = "workshop-expiry"
SERVICE_SCOPES = ["admin:users", "admin:servers"]
#: The variable that tells a student's workstation its workshop (the launcher passes INCLOUD_API_* on).
WORKSHOP_ENV = "INCLOUD_API_WORKSHOP"

_engine: Any = None


def _site_engine() -> Any:
    global _engine
    if _engine is None:
        from incloud_kernel.site import Site

        _engine = Site.open().engine
    return _engine


async def in_db(work: Callable[[Any], Any]) -> Any:
    """``work(db)`` in a worker thread, committed (the hub's event loop never waits on the database)."""
    from incloud_kernel.db import transaction

    def run() -> Any:
        with transaction(_site_engine()) as db:
            return work(db)
    return await asyncio.get_running_loop().run_in_executor(None, run)


# -- logins --------------------------------------------------------------------------------------------------------

def _login(db: Any, name: str, password: str) -> str | None:
    """``"student"`` (right password, running workshop), ``"refused"`` (a workshop account otherwise), or None
    (not a workshop account: the site's authenticator decides)."""
    from incloud_kernel import workshops

    if workshops.check_login(db, name, password) is not None:
        return "student"
    return "refused" if workshops.is_account(db, name) else None


class WorkshopLogins:
    """Mixed in before the site's authenticator class: workshop accounts log in here, everybody else there."""

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> Any:  # type: ignore[override]
        from jupyterhub.utils import maybe_future

        name = self.normalize_username(str(data.get("username", "")))  # type: ignore[attr-defined]
        verdict = await in_db(lambda db: _login(db, name, str(data.get("password", ""))))
        if verdict == "student":
            return {"name": name, "incloud_workshop": True}
        if verdict == "refused":
            self.log.warning(  # type: ignore[attr-defined]
                "workshop login refused for %s (wrong password or workshop not running)", name)
            return None
        return await maybe_future(super().authenticate(handler, data))  # type: ignore[misc]

    def check_allowed(self, username: str, authentication: dict[str, Any] | None = None) -> Any:
        if authentication and authentication.get("incloud_workshop"):
            return True
        return super().check_allowed(username, authentication)  # type: ignore[misc]

    async def add_user(self, user: Any) -> None:
        """A new hub user that is a workshop account joins the ``student`` group (its role's scopes)."""
        from jupyterhub import orm
        from jupyterhub.utils import maybe_future

        from incloud_kernel import workshops

        await maybe_future(super().add_user(user))  # type: ignore[misc]
        if await in_db(lambda db: workshops.is_account(db, user.name)):
            group = orm.Group.find(user.db, workshops.STUDENT_GROUP)
            if group is not None and group not in user.orm_user.groups:
                user.orm_user.groups.append(group)
                user.db.commit()

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [*super().get_handlers(app), (r"/workshop/join", join_handler())]  # type: ignore[misc]


def join_handler() -> type:
    """``/hub/workshop/join``: a join code gives a new temporary account, whose password is shown once."""
    from jupyterhub.handlers import BaseHandler

    class JoinHandler(BaseHandler):
        async def get(self) -> None:
            self.finish(await self.render_template("workshop_join.html", joined=None, error=None))

        async def post(self) -> None:
            from incloud_kernel import workshops
            from incloud_kernel.errors import IncloudError

            from sqlalchemy.exc import IntegrityError

            code = self.get_body_argument("code", "")
            for attempt in range(5):  # two students joining at the same moment drew the same next user name
                try:
                    name, password, shown = await in_db(lambda db: workshops.join(db, code))
                    break
                except IntegrityError:
                    if attempt == 4:
                        raise
                except IncloudError as exc:
                    self.set_status(400)
                    self.finish(await self.render_template("workshop_join.html", joined=None, error=str(exc)))
                    return
            self.log.info("workshop %s: new account %s by join code", shown.code, name)
            self.finish(await self.render_template("workshop_join.html", error=None, joined={
                "username": name, "password": password, "title": shown.title, "ends_on": shown.ends_on}))

    return JoinHandler


def _authenticator_class(value: Any) -> type:
    """The class the hub config names: a class, a dotted path, or an entry point name (``shared-password``)."""
    if isinstance(value, type):
        return value
    from importlib.metadata import entry_points

    from traitlets.utils.importstring import import_item

    name = str(value)
    if "." in name:
        return import_item(name)
    for ep in entry_points(group="jupyterhub.authenticators"):
        if ep.name == name:
            return ep.load()
    raise ValueError(f"unknown authenticator {name!r}")


# -- spawning ------------------------------------------------------------------------------------------------------

def _spawn_settings(db: Any, name: str) -> dict[str, Any] | None:
    from incloud_kernel import workshops

    w = workshops.running_workshop_of(db, name)
    if w is None:
        return {"ended": True} if workshops.is_account(db, name) else None
    return {"code": w.code, "cores": w.cores, "memory": w.memory}


def spawn_hook(previous: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """pre_spawn_hook: ``previous`` first; then, for a workshop account, one workstation only, the workshop's
    memory and core limits, and the workshop's code for the course notebooks. An ended workshop's account cannot
    start anything."""
    async def hook(spawner: Any) -> None:
        from jupyterhub.utils import maybe_future

        if previous is not None:
            await maybe_future(previous(spawner))
        name = spawner.user.name
        found = await in_db(lambda db: _spawn_settings(db, name))
        if found is None:
            return
        from tornado import web

        if found.get("ended") or spawner.name:
            error = web.HTTPError(403, "workshop accounts have one workstation while the workshop runs")
            error.jupyterhub_message = ("your workshop has ended" if found.get("ended")  # type: ignore[attr-defined]
                                        else "workshop accounts have one workstation (no named servers)")
            raise error
        spawner.mem_limit = found["memory"]
        spawner.cpu_limit = found["cores"]
        for trait, value in (("req_memory", found["memory"]), ("req_nprocs", str(max(1, int(found["cores"]))))):
            if spawner.has_trait(trait):  # batchspawner (cluster mode): Slurm enforces them
                setattr(spawner, trait, value)
        spawner.environment = {**spawner.environment, WORKSHOP_ENV: found["code"]}
    return hook


def configure(c: Any, cfg: Any) -> None:
    """Workshop logins, the join page, the spawn hook and the expiry service (see the module's doc)."""
    from hub.services import incloud_env

    base = _authenticator_class(c.JupyterHub.authenticator_class)
    c.JupyterHub.authenticator_class = type("WorkshopAuthenticator", (WorkshopLogins, base), {})
    sections = [name for name in ("Spawner", "LocalProcessSpawner", "IsolatedSpawner") if
                name in c and "pre_spawn_hook" in c[name]]
    for name in sections or ["Spawner"]:
        c[name].pre_spawn_hook = spawn_hook(c[name].get("pre_spawn_hook"))
    c.JupyterHub.services = [*c.JupyterHub.services, {
        "name": SERVICE, "command": [sys.executable, "-m", "hub.workshops", "expire",
                                     f"--every={cfg.hub.workshop_expire_every}"],
        "environment": incloud_env()}]
    c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {
        "name": SERVICE, "description": "Remove the accounts of ended workshops", "scopes": SERVICE_SCOPES,
        "services": [SERVICE]}]


# -- expiry --------------------------------------------------------------------------------------------------------

class HubApi:
    """The hub's REST API with the service's token (``JUPYTERHUB_API_URL``/``JUPYTERHUB_API_TOKEN``)."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        import requests

        self.url = (url or os.environ["JUPYTERHUB_API_URL"]).rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token or os.environ['JUPYTERHUB_API_TOKEN']}"

    def user(self, name: str) -> dict[str, Any] | None:
        r = self.http.get(f"{self.url}/users/{name}", timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def remove(self, name: str, wait: float = 120) -> list[str]:
        """Stop every server of ``name`` and delete the hub user; what was removed."""
        model = self.user(name)
        if model is None:
            return []
        removed = []
        for server in model.get("servers", {}):
            path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
            r = self.http.delete(self.url + path, json={"remove": bool(server)}, timeout=60)
            if r.status_code not in (202, 204, 404):
                r.raise_for_status()
            removed.append("server")
        deadline = time.monotonic() + wait
        while removed and time.monotonic() < deadline and (self.user(name) or {}).get("servers"):
            time.sleep(0.5)
        r = self.http.delete(f"{self.url}/users/{name}", timeout=60)
        if r.status_code not in (204, 404):
            r.raise_for_status()
        return [*removed, "hub user"]


def remove_files(name: str, launcher: str, users_dir: Path | None) -> list[str]:
    """The account's processes, system account and home folder (isolated: the root launcher), or its folder under
    the hub's ``users`` folder (one-person embedded mode)."""
    import shutil
    import subprocess

    if launcher:
        r = subprocess.run(["sudo", "-n", launcher, "remove-user", name], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError((r.stderr.strip().splitlines() or ["the launcher failed"])[-1])
        return json.loads(r.stdout.strip().splitlines()[-1]).get("removed", [])
    if users_dir is not None and (users_dir / name).exists():
        shutil.rmtree(users_dir / name)
        return ["home folder"]
    return []


def expire_round(hub: HubApi, launcher: str, users_dir: Path | None, log: Callable[[str], None]) -> list[str]:
    """Remove every due account (see the module's doc); the names removed. A failure leaves the account for the
    next round (one line in the log) and goes on with the others."""
    from incloud_kernel import workshops
    from incloud_kernel.db import transaction

    done = []
    with transaction(_site_engine()) as db:
        due = workshops.due_accounts(db)
    for name in due:
        try:
            removed = hub.remove(name) + remove_files(name, launcher, users_dir)
        except Exception as exc:  # noqa: BLE001 - retried next round
            log(f"could not remove workshop account {name} yet: {type(exc).__name__}: {exc}")
            continue
        with transaction(_site_engine()) as db:
            workshops.mark_removed(db, name, removed)
        log(f"removed workshop account {name}: {', '.join(removed) or 'nothing left'}")
        done.append(name)
    return done


def expire_forever(every: float) -> None:
    """The ``workshop-expiry`` service: a removal round every ``every`` seconds."""
    from incloud_kernel.config import get_config

    from hub.spawners import state_dir

    cfg = get_config()
    hub = HubApi()
    users_dir = None if cfg.hub.launcher else state_dir(cfg) / "users"

    def log(line: str) -> None:
        print(f"[{SERVICE}] {line}", file=sys.stderr, flush=True)
    while True:
        try:
            expire_round(hub, cfg.hub.launcher, users_dir, log)
        except Exception as exc:  # noqa: BLE001 - e.g. the database restarting: try again next round
            log(f"round failed: {type(exc).__name__}: {exc}")
        time.sleep(every)


# -- the student's workstation -------------------------------------------------------------------------------------

def seed_course(root: Path) -> list[str]:
    """Copy the course notebooks the student does not have yet into ``root/Workshop`` (fetched from the INCloud
    API with the workstation's own token); the names copied. Nothing happens outside a workshop."""
    import urllib.request

    code = os.environ.get(WORKSHOP_ENV)
    url, token = os.environ.get("INCLOUD_API_URL"), os.environ.get("JUPYTERHUB_API_TOKEN")
    if not (code and url and token):
        return []
    request = urllib.request.Request(f"{url.rstrip('/')}/api/workshops/{code}/notebooks",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the site's own API
        notebooks = json.loads(answer.read())["notebooks"]
    folder = root / COURSE_FOLDER
    folder.mkdir(exist_ok=True)
    copied = []
    for name, text in sorted(notebooks.items()):
        target = folder / Path(name).name
        if not target.exists():
            target.write_text(text)
            copied.append(target.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["expire"] or len(args) > 2:
        print("usage: python -m hub.workshops expire [--every=SECONDS]", file=sys.stderr)
        return 2
    every = float(args[1].split("=", 1)[1]) if len(args) == 2 else 300.0
    expire_forever(every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
