"""The root side of isolated local workstations: creates a hub user's system account and starts or signals that
user's workstation, for a hub that runs as the unprivileged ``incloud`` user (JupyterHub's "run without root
through sudo" pattern, like ``sudospawner``, plus account creation on first login).

It is run as root through one sudoers rule, ``incloud ALL=(root) NOPASSWD: /usr/local/sbin/incloud-workstation``.
That file is a root-owned wrapper written by :func:`install` which clears the environment and fixes the settings
(``INCLOUD_LAUNCHER_*``: the users' group, home base and workstation venv), so the hub can only choose *which*
action for *which* hub user, never what runs:

    incloud-workstation ensure-user NAME [temporary]   create the account if missing (home 0700, group of
                                             workstation users); ``temporary`` marks a workshop's account
    incloud-workstation remove-user NAME     kill the processes of a *temporary* account, delete it and its home
    incloud-workstation spawn NAME           start the workstation as NAME; stdin {"args": [...], "env": {...}}
    incloud-workstation signal NAME PID SIG  send SIG to PID if that process belongs to NAME

It must never act on an account that it did not create (root, the hub's own user, system accounts: every account
must be in the workstation users' group), never run anything but the venv's ``hub.workstation``, never pass
``PYTHONPATH``/``LD_*`` or any variable outside the hub's own to the workstation, and never print the token. Standard
library only (it runs as root with ``python -I``). Answers are one JSON line on stdout; errors one line on stderr
and exit status 1.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import re
import signal
import subprocess
import sys
from pathlib import Path

#: What a hub user name must look like to become a system account (useradd's portable subset, no leading '-').
NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

#: The comment (GECOS) of accounts made for teaching workshops: the only ones ``remove-user`` may delete.
TEMPORARY = "INCloud temporary workshop account"

#: Variables of the hub's spawner environment a workstation may receive; everything else is dropped.
ENV_PREFIXES = ("JUPYTERHUB_", "JPY_", "INCLOUD_API_")
#: (MEM_LIMIT and CPU_LIMIT are what JupyterHub exports for a server's limits, e.g. a workshop's.)
ENV_NAMES = ("LANG", "LC_ALL", "MEM_LIMIT", "CPU_LIMIT")

WRAPPER = """#!/bin/sh
# Written by `python -m hub.launcher install` (INCloud). Run by the hub's user through sudo; see hub/launcher.py.
exec /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin INCLOUD_LAUNCHER_GROUP={group} INCLOUD_LAUNCHER_HOME_BASE={home_base} \\
  INCLOUD_LAUNCHER_VENV={venv} {python} -I {script} "$@"
"""


class Refused(Exception):
    """The request is not allowed or cannot be carried out; the message is the one line the hub logs."""


def _settings() -> tuple[str, Path, Path]:
    try:
        return (os.environ["INCLOUD_LAUNCHER_GROUP"], Path(os.environ["INCLOUD_LAUNCHER_HOME_BASE"]),
                Path(os.environ["INCLOUD_LAUNCHER_VENV"]))
    except KeyError as exc:
        raise Refused(f"launcher not configured ({exc.args[0]} missing): run it through its wrapper") from None


def account(name: str, group: str) -> pwd.struct_passwd:
    """The system account of hub user ``name``, only if it is one of the workstation users' group."""
    if not NAME.match(name):
        raise Refused(f"hub user name {name!r} cannot be a system account (lower-case letters, digits, _ and -)")
    entry = pwd.getpwnam(name)
    members = grp.getgrnam(group).gr_mem
    if entry.pw_uid == 0 or name not in members:
        raise Refused(f"system account {name} exists and is not a workstation user; refusing to act as it")
    return entry


def ensure_user(name: str, temporary: bool = False) -> pwd.struct_passwd:
    """Create the account on first use: own group, ``/bin/bash``, home ``HOME_BASE/NAME`` mode 0700 (with the
    ``TEMPORARY`` comment for a workshop's account; an existing account is never re-marked)."""
    group, home_base, _ = _settings()
    if not NAME.match(name):
        raise Refused(f"hub user name {name!r} cannot be a system account (lower-case letters, digits, _ and -)")
    try:
        grp.getgrnam(group)
    except KeyError:
        subprocess.run(["groupadd", "--system", group], check=True, capture_output=True, timeout=30)
    try:
        pwd.getpwnam(name)
    except KeyError:
        home_base.mkdir(parents=True, exist_ok=True)
        # useradd refuses a name whose group already exists (e.g. sudo, shadow): no way into a privileged group.
        r = subprocess.run(["useradd", "--create-home", "--home-dir", str(home_base / name), "--shell", "/bin/bash",
                            "--groups", group, "--key", "HOME_MODE=0700", "--key", "UMASK=077",
                            *(["--comment", TEMPORARY] if temporary else []), name],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Refused(f"could not create system account {name}: {r.stderr.strip().splitlines()[-1:]}")
    entry = account(name, group)
    os.chmod(entry.pw_dir, 0o700)
    return entry


def _workstation_env(entry: pwd.struct_passwd, given: dict[str, str], venv: Path) -> dict[str, str]:
    env = {k: str(v) for k, v in given.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env.update({"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name, "SHELL": entry.pw_shell,
                "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"})
    return env


def spawn(name: str, request: dict) -> int:
    """Start the workstation as ``name`` in its home; returns the server's pid (its own session and group).

    A forked child drops to the user for good and waits for the server (so it never becomes a zombie), as
    sudospawner's mediator does; the server's output goes to ``~/.incloud-workstation.log`` (the user's file).
    """
    entry = ensure_user(name)
    _, _, venv = _settings()
    args = [str(a) for a in request.get("args", [])]
    env = _workstation_env(entry, dict(request.get("env", {})), venv)
    cmd = [str(venv / "bin" / "python"), "-m", "hub.workstation", str(venv / "bin" / "jupyterhub-singleuser"), *args]
    read, write = os.pipe()
    child = os.fork()
    if child:
        os.close(write)
        with os.fdopen(read) as pipe:
            answer = pipe.read()
        os.waitpid(child, os.WNOHANG)
        data = json.loads(answer or '{"error": "the workstation launcher child died"}')
        if "pid" not in data:
            raise Refused(data.get("error", "no pid"))
        return int(data["pid"])
    os.close(read)
    try:
        os.setsid()
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.umask(0o077)
        os.chdir(entry.pw_dir)
        log = os.open(os.path.join(entry.pw_dir, ".incloud-workstation.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDWR)
        proc = subprocess.Popen(cmd, env=env, cwd=entry.pw_dir, stdin=null, stdout=log, stderr=log,
                                close_fds=True, start_new_session=True)
        answer = {"pid": proc.pid}
    except Exception as exc:  # noqa: BLE001 - reported to the hub as one line
        answer = {"error": f"could not start the workstation: {type(exc).__name__}: {exc}"}
        proc = None
    with os.fdopen(write, "w") as pipe:
        pipe.write(json.dumps(answer))
    for fd in (0, 1, 2):  # let sudo and the hub see end of file while this waiter lives on
        os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    if proc is not None:
        proc.wait()
    os._exit(0)


def send_signal(name: str, pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` (its whole process group for SIGKILL) if it runs as ``name``; False when gone."""
    group, _, _ = _settings()
    entry = account(name, group)
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return False
    if owner != entry.pw_uid:
        return False  # the pid was reused by another account's process: ours is gone
    try:
        if sig == signal.SIGKILL and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def remove_user(name: str) -> list[str]:
    """Delete a temporary (workshop) account: SIGKILL its processes, ``userdel -r`` (account, group, home), and
    the home folder if anything is left of it. Refuses every account not created as temporary."""
    import shutil
    import time

    group, home_base, _ = _settings()
    try:
        entry = account(name, group)
    except KeyError:
        return []  # already gone
    if entry.pw_gecos != TEMPORARY:
        raise Refused(f"system account {name} is not a temporary workshop account; refusing to remove it")
    removed = []
    for _ in range(20):  # a dying server may still fork: look again until nothing of the account runs
        pids = []
        for entry_dir in Path("/proc").iterdir():
            try:
                if entry_dir.name.isdigit() and entry_dir.stat().st_uid == entry.pw_uid:
                    pids.append(int(entry_dir.name))
            except FileNotFoundError:
                pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        removed = ["processes"]
        time.sleep(0.2)
    r = subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, text=True, timeout=60)
    if r.returncode not in (0, 12):  # 12: the home folder could not be removed (handled below)
        raise Refused(f"could not delete system account {name}: {r.stderr.strip().splitlines()[-1:]}")
    home = Path(entry.pw_dir)
    if home.parent == home_base and home.exists():
        shutil.rmtree(home)
    return [*removed, "system account", "home folder"]


def install(wrapper: str, group: str, home_base: str, venv: str, python: str | None = None) -> str:
    """Write the root-owned wrapper (0755) that sudo runs; returns its text. Needs root."""
    script = Path(__file__).resolve()
    text = WRAPPER.format(group=group, home_base=home_base, venv=venv, python=python or sys.executable,
                          script=script)
    path = Path(wrapper)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chown(tmp, 0, 0)
    tmp.chmod(0o755)
    tmp.replace(path)
    return text


def sudoers_rule(hub_user: str, wrapper: str) -> str:
    """The one sudoers line the hub's user needs (no password, this wrapper only, as root)."""
    return f"{hub_user} ALL=(root) NOPASSWD: {wrapper}\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["install"] and len(args) in (6, 7):
            # install WRAPPER GROUP HOME_BASE VENV HUB_USER [SUDOERS_FILE]
            install(args[1], args[2], args[3], args[4])
            if len(args) == 7:
                sudoers = Path(args[6])
                sudoers.write_text(sudoers_rule(args[5], args[1]))
                sudoers.chmod(0o440)
            return 0
        if os.geteuid() != 0:
            raise Refused("the workstation launcher must run as root (through sudo)")
        if args[:1] == ["ensure-user"] and (len(args) == 2 or args[2:] == ["temporary"]):
            entry = ensure_user(args[1], temporary=len(args) == 3)
            print(json.dumps({"uid": entry.pw_uid, "home": entry.pw_dir}))
        elif args[:1] == ["spawn"] and len(args) == 2:
            request = json.loads(sys.stdin.read() or "{}")
            print(json.dumps({"pid": spawn(args[1], request)}))
        elif args[:1] == ["remove-user"] and len(args) == 2:
            print(json.dumps({"removed": remove_user(args[1])}))
        elif args[:1] == ["signal"] and len(args) == 4:
            print(json.dumps({"alive": send_signal(args[1], int(args[2]), int(args[3]))}))
        else:
            raise Refused("usage: incloud-workstation ensure-user NAME [temporary] | spawn NAME | signal NAME PID SIG"
                          " | remove-user NAME")
    except (Refused, KeyError, ValueError, OSError, subprocess.SubprocessError) as exc:
        message = str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}"
        print(f"incloud-workstation: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
