"""Embedded workstations as each hub user's own system account, for a hub that is not root (the hub side of
``hub.launcher``, JupyterHub's sudospawner pattern).

The hub runs as the ``incloud`` service user and may run exactly one command as root, the launcher wrapper, through
sudo. This module asks it to create the account on first login, start the user's server and signal it. The hub
never holds root, never starts a server itself, and never passes the token on a command line (the spawn request,
environment included, goes to the launcher on stdin).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import List, Unicode

#: Where scripts/start.sh installs the wrapper sudo runs (root-owned, 0755).
DEFAULT_LAUNCHER = "/usr/local/sbin/incloud-workstation"


class LauncherError(RuntimeError):
    """The launcher refused or failed; ``jupyterhub_message`` is shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message


async def run_launcher(launcher: list[str], *args: str, stdin: dict | None = None,
                       timeout: float = 30) -> dict[str, Any]:
    """Run ``sudo -n LAUNCHER ARGS`` with ``stdin`` as JSON; its one-line JSON answer, or LauncherError."""
    proc = await asyncio.create_subprocess_exec(
        *launcher, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(stdin or {}).encode()), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        raise LauncherError(f"the workstation launcher did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise LauncherError(lines[-1] if lines else f"the workstation launcher failed ({proc.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


#: Ports this hub handed to servers lately (port -> when): not handed again while those may still be starting.
_handed: dict[int, float] = {}


def server_port(now: float | None = None) -> int:
    """A free port *below* the kernel's ephemeral range for a new server.

    JupyterHub's ``random_port`` binds port 0, i.e. takes an ephemeral port, and closes it; until the server binds
    it (seconds later, in another process) any outgoing connection or kernel ZMQ socket on the machine may take
    it, and the server then exits at once ("port is already in use") while the hub waits its whole
    ``http_timeout`` (it does not poll the process meanwhile): 1 in 20 concurrent workshop spawns on a busy node.
    Ports below the ephemeral range are only ever taken by explicit choice.
    """
    now = time.monotonic() if now is None else now
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port, when in list(_handed.items()):
        if now - when > 300:
            del _handed[port]
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed[port] = now
        return port
    raise LauncherError("no free port for the workstation below the ephemeral range")


class IsolatedSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose process work (account, start, signals) is done by the root launcher."""

    launcher = List(Unicode(), default_value=["sudo", "-n", DEFAULT_LAUNCHER],
                    help="Command that runs hub.launcher as root (sudo and the wrapper).").tag(config=True)

    def make_preexec_fn(self, name: str) -> None:  # type: ignore[override]
        return None

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["USER"] = self.user.name  # HOME and SHELL are set by the launcher from the account it creates
        return env

    async def move_certs(self, paths: dict[str, str]) -> dict[str, str]:  # type: ignore[override]
        return paths  # internal TLS is not used by the embedded hub

    async def start(self) -> tuple[str, int]:  # type: ignore[override]
        if self.port == 0:
            self.port = server_port()
        reply = await run_launcher(self.launcher, "spawn", self.user.name,
                                   stdin={"args": self.get_args(), "env": self.get_env()})
        self.pid = int(reply["pid"])
        self.log.info("workstation of %s started as that system user, pid %s", self.user.name, self.pid)
        return (self.ip or "127.0.0.1", self.port)

    async def poll(self) -> int | None:  # type: ignore[override]
        if not self.pid:
            self.clear_state()
            return 0
        if not await self._signal(0):
            self.clear_state()
            return 0
        return None

    async def _signal(self, sig: int) -> bool:  # type: ignore[override]
        if sig == 0:  # existence only: no sudo round trip (EPERM means it exists, as another user's process)
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        reply = await run_launcher(self.launcher, "signal", self.user.name, str(self.pid), str(int(sig)))
        return bool(reply["alive"])


def account_hook(launcher: list[str]):  # type: ignore[no-untyped-def]
    """``Authenticator.post_auth_hook``: the user's system account exists from the first login on."""
    async def hook(authenticator: Any, handler: Any, authentication: dict[str, Any]) -> dict[str, Any]:
        from tornado import web

        try:
            kind = ["temporary"] if authentication.get("incloud_workshop") else []  # hub.workshops' students
            await run_launcher(launcher, "ensure-user", authenticator.normalize_username(authentication["name"]),
                               *kind)
        except LauncherError as exc:  # e.g. a name that cannot be an account: the login page says why (403)
            error = web.HTTPError(403, "no workstation account")
            error.jupyterhub_message = str(exc)  # type: ignore[attr-defined]
            raise error from None
        return authentication
    return hook
