"""A real workstation hub for tests and the benchmark (in bench/ because bench may not import tests/; tests reach
it through tests/services/hubstack.py): munge + slurmctld + slurmd, JupyterHub with
configurable-http-proxy and the INCloud API service, PostgreSQL for the hub's and INCloud's databases, and
system users created with useradd.

Everything started here is stopped by ``close()`` in reverse order (servers stopped and jobs cancelled before
slurmd stops; users and databases removed). Every wait has a timeout. Never prints a password or token.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import requests
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
SLURM_SH = REPO / "scripts" / "lib" / "slurm.sh"
VENV = Path(sys.executable).parent.parent
PASSWORD = "incloud-" + secrets.token_hex(8)  # one strong password for every test user


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except RuntimeError:  # the thing waited for has died: no point waiting longer
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last failure
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout} s" + (f" (last error: {type(last).__name__}: {last})"
                                                                 if last else ""))


def slurm(action: str, folder: Path) -> None:
    """slurm_start / slurm_stop of scripts/lib/slurm.sh (the same code scripts/start.sh uses)."""
    r = subprocess.run(["bash", "-c", f'source "{SLURM_SH}" && slurm_{action} "{folder}"'], timeout=120,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"slurm_{action} failed: {r.stderr.strip()[-1500:]}")


class PgDatabases:
    """Fresh PostgreSQL databases on the server of ``INCLOUD_TEST_POSTGRES_URL``, dropped by ``drop()``."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.names: list[str] = []
        self.admin = create_engine(base, isolation_level="AUTOCOMMIT")

    def create(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.base.rsplit("/", 1)[0] + f"/{name}"

    def drop(self) -> None:
        from incloud_kernel import db

        for url, engine in list(db._engines.items()):
            if any(url.endswith("/" + n) for n in self.names):
                engine.dispose()
                db._engines.pop(url, None)
        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


class HubUser:
    """A hub user seen from outside: a browser-like session (cookies, xsrf) and, once asked, an API token."""

    #: Seconds any one request may take (the benchmark raises it for 50 concurrent bcrypt logins).
    timeout: float = 30

    def __init__(self, stack: HubStack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.http = requests.Session()
        self.token: str | None = None

    def _xsrf(self, path: str) -> str:
        r = self.http.get(self.stack.url + path, timeout=self.timeout)
        r.raise_for_status()
        match = re.search(r'name="_xsrf"\s+value="([^"]+)"', r.text)
        assert match, f"no _xsrf field in {path}"
        return match.group(1)

    def sign_up(self, password: str = PASSWORD) -> None:
        """Through NativeAuthenticator's real sign-up form."""
        xsrf = self._xsrf("/hub/signup")
        r = self.http.post(self.stack.url + "/hub/signup", timeout=self.timeout, data={
            "_xsrf": xsrf, "username": self.name, "signup_password": password,
            "signup_password_confirmation": password})
        r.raise_for_status()
        assert "has been sent to the admin" in r.text or "signup was successful" in r.text, "sign-up refused"

    def log_in(self, password: str = PASSWORD) -> requests.Response:
        """Through the hub's real login form (HTTP POST with the form's xsrf token)."""
        xsrf = self._xsrf("/hub/login")
        r = self.http.post(self.stack.url + "/hub/login", data={"_xsrf": xsrf, "username": self.name,
                                                                "password": password}, timeout=self.timeout)
        r.raise_for_status()
        return r

    @property
    def logged_in(self) -> bool:
        return any(c.name.startswith("jupyterhub-hub-login") for c in self.http.cookies)

    def hub_api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The hub REST API with this user's login session (cookie + xsrf header), as the hub's own UI does."""
        headers = kwargs.pop("headers", {})
        xsrf = self.http.cookies.get("_xsrf", path="/hub/")
        if xsrf:
            headers["X-XSRFToken"] = xsrf
        return self.http.request(method, self.stack.url + "/hub/api" + path, headers=headers, timeout=self.timeout,
                                 **kwargs)

    def new_token(self, **body: Any) -> str:
        return self.new_token_model(**body)["token"]

    def new_token_model(self, **body: Any) -> dict[str, Any]:
        """A new API token of this user (POST /hub/api/users/<name>/tokens), as the hub's model with id."""
        r = self.hub_api("POST", f"/users/{self.name}/tokens", json={"note": "test", **body})
        assert r.status_code in (200, 201), f"token request answered {r.status_code}: {r.text[:200]}"
        return r.json()


def spawn(user: HubUser, profile: str = "small", server: str = "", timeout: float = 60) -> dict:
    """Ask for a workstation with the user's own login session; wait until ready or failed.

    Returns {"ready": bool, "message": str, "seconds": float, "url": str}.
    """
    path = f"/users/{user.name}/servers/{server}" if server else f"/users/{user.name}/server"
    t0 = time.monotonic()
    r = user.hub_api("POST", path, json={"profile": profile})
    if r.status_code not in (201, 202):
        return {"ready": False, "message": r.json().get("message", r.text), "seconds": 0.0, "url": ""}
    progress = f"/users/{user.name}/servers/{server}/progress" if server else f"/users/{user.name}/server/progress"
    result = {"ready": False, "message": "no progress event", "seconds": 0.0, "url": ""}
    with user.hub_api("GET", progress, stream=True, headers={"Accept": "text/event-stream"}) as stream:
        deadline = time.monotonic() + timeout
        for line in stream.iter_lines(decode_unicode=True):
            if time.monotonic() > deadline:
                result["message"] = "timed out waiting for the spawn"
                break
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("ready"):
                result = {"ready": True, "message": event.get("message", ""), "url": event.get("url", "")}
                break
            if event.get("failed"):
                result = {"ready": False, "message": event.get("message", ""), "url": ""}
                break
    result["seconds"] = time.monotonic() - t0
    return result


class HubStack:
    """Start with ``HubStack(tmp).start()``; stop with ``close()`` (idempotent)."""

    def __init__(self, work: Path, pg_base: str, extra_env: dict[str, str] | None = None) -> None:
        self.work = work
        self.pg = PgDatabases(pg_base)
        self.extra_env = extra_env or {}
        self.slurm_dir = work / "slurm"
        self.system_users: list[str] = []
        self.hub_proc: subprocess.Popen[bytes] | None = None
        self.ports = {k: free_port() for k in ("bind", "hub", "proxy", "api")}
        self.url = f"http://127.0.0.1:{self.ports['bind']}"
        self.api_url = self.url + "/services/incloud-api/"
        self.prefix = "ic" + secrets.token_hex(3)  # system user names unique to this run
        self.admin: HubUser | None = None
        self.admin_token = ""
        self.env: dict[str, str] = {}

    # -- start ---------------------------------------------------------------------------------------------------
    def start(self) -> HubStack:
        os.chmod(self.work, 0o755)
        slurm("start", self.slurm_dir)
        self.site_url = self.pg.create()
        self.hub_db_url = self.pg.create()
        home = self.work / "home"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("INCLOUD_", "JUPYTERHUB_"))},
            "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "SLURM_CONF": str(self.slurm_dir / "slurm.conf"),
            "INCLOUD_HOME": str(home),
            "INCLOUD_DATABASE_URL": self.site_url,
            "INCLOUD_HUB_MODE": "cluster",
            "INCLOUD_HUB_BIND_URL": self.url,
            "INCLOUD_HUB_HUB_BIND_URL": f"http://127.0.0.1:{self.ports['hub']}",
            "INCLOUD_HUB_PROXY_API_PORT": str(self.ports["proxy"]),
            "INCLOUD_HUB_API_PORT": str(self.ports["api"]),
            "INCLOUD_HUB_DB_URL": self.hub_db_url,
            "INCLOUD_HUB_ADMIN_USERS": f"{self.prefix}admin",
            "INCLOUD_HUB_TOKEN_CACHE_SECONDS": "0",
            "INCLOUD_HUB_START_TIMEOUT": "45",
            "INCLOUD_HUB_PROFILES": json.dumps([
                {"name": "small", "display_name": "Small", "cores": 1, "memory": "1G", "walltime": "00:30:00"},
                {"name": "broken", "display_name": "Dies at start", "cores": 1, "memory": "500M",
                 "walltime": "00:05:00", "prologue": "echo failing on purpose; exit 3"},
            ]),
            **self.extra_env,
        }
        self._seed_site(home)
        state = home / "hub"
        state.mkdir(parents=True, exist_ok=True)
        self.hub_log = open(self.work / "jupyterhub.log", "wb")
        self._launch_hub(60)
        wait_for(lambda: requests.get(self.api_url + "health", timeout=5).status_code == 401, 30,
                 "INCloud API service")
        # No first-come admin: the admin's password is set by the operator's command, never by sign-up.
        r = subprocess.run([str(VENV / "bin" / "incloud"), "hub", "admin-password", f"{self.prefix}admin", "--stdin"],
                           input=PASSWORD + "\n", env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-500:]
        self.admin = HubUser(self, f"{self.prefix}admin")
        self.admin.log_in()
        assert self.admin.logged_in, "admin login failed"
        self.admin_token = self.admin.new_token(expires_in=3600)
        return self

    def _launch_hub(self, timeout: float) -> None:
        """Start the hub process (its own session, output to ``hub_log``) and wait until it answers."""
        self.hub_proc = subprocess.Popen(
            [str(VENV / "bin" / "jupyterhub"), "-f", str(REPO / "hub" / "jupyterhub_config.py")],
            cwd=Path(self.env["INCLOUD_HOME"]) / "hub", env=self.env, stdout=self.hub_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(self._hub_up, timeout, "JupyterHub behind configurable-http-proxy")

    def restart_hub(self) -> None:
        """Stop the hub process alone (SIGTERM, as ``systemctl restart`` does; not its session: Slurm jobs are not
        its children anyway) and start it again with the same configuration and state, as its systemd unit
        would (an upgrade, docs/backup.md)."""
        assert self.hub_proc is not None
        os.kill(self.hub_proc.pid, signal.SIGTERM)
        self.hub_proc.wait(60)
        self._launch_hub(90)

    def _hub_up(self) -> bool:
        if self.hub_proc is not None and self.hub_proc.poll() is not None:
            raise RuntimeError(f"jupyterhub exited with {self.hub_proc.returncode}: see {self.work}/jupyterhub.log")
        return requests.get(self.url + "/hub/api/", timeout=5).status_code == 200

    def _seed_site(self, home: Path) -> None:
        """A project P1 with one participant, session and two series (one with a file)."""
        from incloud_kernel.archive import projects, records
        from incloud_kernel.archive.permissions import Actor
        from incloud_kernel.config import load_config
        from incloud_kernel.site import Site

        site = Site.open(load_config(env=self.env), migrate=True)
        site.ensure_roots()
        os.chmod(home, 0o755)
        console = Actor.console("test")
        with records.transaction(site) as db:
            projects.create_project(db, console, "P1", "Hub test project")
            projects.create_project(db, console, "P2", "Nobody's project")
            records.add_participant(db, console, "P1", "hub01", sex="F", birth_year=1980)
            ses = records.add_session(db, console, "hub01", "01", scan_date="2026-01-02")
            self.series_t1 = records.add_series(db, console, ses, "anat", "T1w", params={"RepetitionTime": 2.3}).id
            records.add_series(db, console, ses, "func", "bold", {"task": "rest"})
        self.file_ids = [f.id for f in records.add_files(site, console, self.series_t1,
                                                          {"json": b'{"RepetitionTime": 2.3}'})]
        self.site = site

    def grant(self, user: str, project: str = "P1", role: str = "member") -> None:
        from incloud_kernel.archive import projects
        from incloud_kernel.archive.permissions import Actor
        from incloud_kernel.db import transaction

        with transaction(self.site.engine) as db:
            projects.grant(db, Actor.console("test"), project, user, role)

    # -- users ---------------------------------------------------------------------------------------------------
    def add_user(self, short: str, *, system: bool = True, groups: tuple[str, ...] = ("researcher",)) -> HubUser:
        """A hub user (signed up, approved by the admin, put in ``groups``), with a system account if asked."""
        name = f"{self.prefix}{short}"
        if system:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, timeout=30, capture_output=True)
            self.system_users.append(name)
        user = HubUser(self, name)
        user.sign_up()
        assert self.admin is not None
        r = self.admin.http.get(f"{self.url}/hub/authorize/{name}", timeout=30)
        assert r.status_code == 200, f"approval answered {r.status_code}"
        r = self.hub("POST", f"/users/{name}")  # the hub user (NativeAuthenticator only keeps credentials)
        assert r.status_code in (201, 409), r.text
        for group in groups:
            r = self.hub("POST", f"/groups/{group}/users", json={"users": [name]})
            assert r.status_code == 200, r.text
        return user

    def hub(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The hub REST API with the admin's token."""
        return requests.request(method, self.url + "/hub/api" + path, timeout=30,
                                headers={"Authorization": f"token {self.admin_token}"}, **kwargs)

    # -- workstations --------------------------------------------------------------------------------------------
    def spawn(self, user: HubUser, profile: str = "small", server: str = "", timeout: float = 60) -> dict:
        """Ask for a workstation with the user's own login session; wait until ready or failed (``spawn``)."""
        return spawn(user, profile, server, timeout)

    def stop_server(self, user: HubUser, server: str = "") -> None:
        path = f"/users/{user.name}/servers/{server}" if server else f"/users/{user.name}/server"
        r = self.hub("DELETE", path)
        if r.status_code == 202:
            wait_for(lambda: not self._server_exists(user.name, server), 30, f"stop of {user.name}'s server")

    def _server_exists(self, name: str, server: str) -> bool:
        return server in self.hub("GET", f"/users/{name}").json().get("servers", {})

    # -- stop ----------------------------------------------------------------------------------------------------
    def _leftovers(self) -> list[int]:
        """Processes this stack's hub started in sessions of their own (``start_new_session``: the proxy and the
        managed services, which a ``killpg`` of the hub misses), found by the environment the hub gave them:
        this stack's ``INCLOUD_HOME`` (the proxy) or its hub API URL (the services)."""
        markers = (f"INCLOUD_HOME={self.env.get('INCLOUD_HOME', '?')}".encode(),
                   f"JUPYTERHUB_API_URL=http://127.0.0.1:{self.ports['hub']}/hub/api".encode())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(m in environ for m in markers):
                found.append(int(entry.name))
        return found

    def _stop_leftovers(self) -> None:
        """SIGTERM the hub's leftovers, then SIGKILL what is still there after 5 s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._leftovers()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if not pids or sig == signal.SIGKILL:
                return
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._leftovers():
                time.sleep(0.2)

    def close(self) -> None:
        errors: list[str] = []
        if self.hub_proc is not None and self.hub_proc.poll() is None:
            try:  # stop every server first, so no job outlives the hub
                users = self.hub("GET", "/users").json() if self.admin_token else []
                for user in users:
                    for server in list(user.get("servers", {})):
                        self.hub("DELETE", f"/users/{user['name']}/servers/{server}" if server
                                 else f"/users/{user['name']}/server")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"stopping servers: {exc}")
            os.killpg(self.hub_proc.pid, signal.SIGTERM)
            try:
                self.hub_proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub_proc.pid, signal.SIGKILL)
                self.hub_proc.wait(10)
            self.hub_proc = None
        elif self.hub_proc is not None:  # the hub died by itself: its proxy and services may live on
            try:
                os.killpg(self.hub_proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.hub_proc = None
        self._stop_leftovers()
        try:
            slurm("stop", self.slurm_dir)  # scancel first, then slurmd and slurmctld
        except Exception as exc:  # noqa: BLE001
            errors.append(f"stopping slurm: {exc}")
        for name in self.system_users:
            subprocess.run(["userdel", "-r", "-f", name], timeout=30, capture_output=True)
        self.system_users = []
        try:
            self.pg.drop()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"dropping databases: {exc}")
        if errors:
            raise RuntimeError("; ".join(errors))
