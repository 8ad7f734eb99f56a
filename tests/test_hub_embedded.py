"""README command A's hub as scripts/start.sh sets it up as root: the site and `incloud hub start` run as a service
user, each hub user's workstation as that user's own system account (created at first login by the root launcher
hub/launcher.py through one sudoers rule), the demo's shared password never reaches an admin name, and the idle
culler stops (through the launcher) a named workstation idle longer than a (tiny) ``hub.idle_timeout``.

Every account, group, sudoers rule and process made here carries a random prefix and is removed at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import requests

from conftest import missing, require_tool
from isolated_hub import (ADMIN_PASSWORD, SHARED, VENV, hub_bash, hub_env, install_hub, isolated_layout,
                          remove_isolated_hub, require_isolated_hub, start_hub, wait_for_hub)

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]

PROBE = """
import json, os, pwd
def readable(path):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        return True
    except OSError:
        return False
print(json.dumps({"uid": os.getuid(), "name": pwd.getpwuid(os.getuid()).pw_name, "home": os.path.expanduser("~"),
                  "readable": {p: readable(p) for p in %r}}))
"""


@pytest.fixture(scope="module")
def demo() -> Iterator[SimpleNamespace]:
    from incloud_kernel.config import load_config

    require_isolated_hub("the isolated demo test", missing)
    at = isolated_layout("ic", "demo")
    names = {k: f"{at.prefix}{k}" for k in ("admin", "alice", "bob", "stranger")}
    names["dotted"] = f"{at.prefix}.dotted"  # a hub name that cannot be a system account
    env = hub_env(at, names["admin"], {"admin": [names["admin"]],
                                       "researcher": [names["alice"], names["bob"], names["dotted"]]}, {
        # A short idle timeout, so the culler acts within the test (production: an hour), long enough for the
        # other tests to use a workstation they just started.
        "INCLOUD_HUB_IDLE_TIMEOUT": "90", "INCLOUD_HUB_CULL_EVERY": "5",
    })
    home = at.home
    proc: subprocess.Popen | None = None
    try:
        install_hub(at, VENV, env)
        cfg = load_config(env=env)
        planted = Path(cfg.quarantine) / "held-original.dcm"
        r = hub_bash(f'(as_service {at.svc} "{home}" sh -c \'umask 077; echo original > "{planted}"\')', env)
        assert r.returncode == 0, r.stderr
        proc = start_hub(at, env)
        wait_for_hub(proc, at)
        secret_paths = {"site": str(home), "site database": str(home / "incloud.sqlite"),
                        "archive": str(cfg.archive_root), "quarantine": str(cfg.quarantine),
                        "held original": str(planted), "spool": str(cfg.spool),
                        "hub state": str(home / "hub")}
        for what, path in secret_paths.items():
            assert os.path.exists(path), f"{what} {path} does not exist: the test would prove nothing"
        yield SimpleNamespace(url=at.url, svc=at.svc, group=at.group, names=names, work=at.work, home=home,
                              homes=at.homes, wrapper=at.wrapper, env=env, proc=proc, secret_paths=secret_paths)
    finally:
        remove_isolated_hub(at.work, proc, [*names.values()], at.svc, at.group, at.sudoers)


def _user(demo, short: str, password: str = SHARED):  # type: ignore[no-untyped-def]
    """A hub user after the real login form (``logged_in`` tells whether the hub accepted the password)."""
    from services.hubstack import HubUser

    user = HubUser(SimpleNamespace(url=demo.url), demo.names.get(short, short))  # type: ignore[arg-type]
    try:
        user.log_in(password)
    except requests.HTTPError as exc:
        assert exc.response.status_code == 403, exc
    return user


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except FileNotFoundError:  # the process ended while /proc was read
            pass
    return pids


def test_hub_runs_as_the_service_user_and_workstations_as_their_users(demo) -> None:  # type: ignore[no-untyped-def]
    import pwd

    from services.hubstack import spawn
    from services.kernels import run_code, run_in_terminal

    svc = pwd.getpwnam(demo.svc)
    hub_pid = demo.proc.pid
    assert Path(f"/proc/{hub_pid}").stat().st_uid == svc.pw_uid, "the hub does not run as the service user"
    assert all(st.st_uid == svc.pw_uid for st in (demo.home.stat(), (demo.home / "incloud.sqlite").stat()))
    assert demo.home.stat().st_mode & 0o077 == 0

    alice, bob = _user(demo, "alice"), _user(demo, "bob")
    bob_home = pwd.getpwnam(bob.name).pw_dir  # made at bob's first login, before any workstation of his
    assert Path(bob_home).stat().st_mode & 0o077 == 0
    result = spawn(alice, timeout=120)
    assert result["ready"], result["message"]
    alice_account = pwd.getpwnam(alice.name)
    assert _pids_of(alice_account.pw_uid), "no process runs as alice's system account"
    token = alice.new_token(expires_in=600)
    paths = {**demo.secret_paths, "bob's home": bob_home}

    out = run_code(demo.url, f"/user/{alice.name}/", token, PROBE % list(paths.values()))
    assert not out.error, out.error + out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["uid"] == alice_account.pw_uid != 0
    assert probe["name"] == alice.name and probe["home"] == alice_account.pw_dir
    readable = {what: probe["readable"][path] for what, path in paths.items()}
    assert not any(readable.values()), f"alice's kernel can read: {[w for w, r in readable.items() if r]}"

    # A real JupyterLab terminal (terminado over the websocket), as a user at the web page would open.
    checks = " ".join(f'"{p}"' for p in paths.values())
    text = run_in_terminal(demo.url, f"/user/{alice.name}/", token,
                           f"id -u; id -un; for p in {checks}; do cat \"$p\" >/dev/null 2>&1 || ls \"$p\" "
                           ">/dev/null 2>&1 && echo READABLE:$p; done; sudo -n true 2>/dev/null && echo SUDO")
    lines = text.splitlines()
    assert lines[:2] == [str(alice_account.pw_uid), alice.name], text
    assert not [line for line in lines if line.startswith(("READABLE:", "SUDO"))], text


def test_no_first_come_admin(demo) -> None:  # type: ignore[no-untyped-def]
    import pwd

    assert not _user(demo, "admin", SHARED).logged_in, "the shared demo password opened the admin account"
    assert not _user(demo, "stranger", SHARED).logged_in, "the shared password created a new account"
    with pytest.raises(KeyError):
        pwd.getpwnam(demo.names["stranger"])
    assert not _user(demo, "root", SHARED).logged_in
    admin = _user(demo, "admin", ADMIN_PASSWORD)
    assert admin.logged_in
    assert admin.hub_api("GET", f"/users/{admin.name}").json()["admin"] is True
    alice = _user(demo, "alice")
    assert alice.hub_api("GET", f"/users/{alice.name}").json()["admin"] is False


def test_launcher_acts_only_on_workstation_accounts(demo) -> None:  # type: ignore[no-untyped-def]
    """The service user's one sudo right cannot reach root, itself or any account the launcher did not create."""
    def launcher(*args: str, stdin: str = "{}") -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", f"--reuid={demo.svc}", f"--regid={demo.svc}", "--init-groups",
                               "sudo", "-n", str(demo.wrapper), *args], input=stdin, capture_output=True, text=True,
                              timeout=60, cwd="/")

    for name in ("root", demo.svc, "nobody", "daemon"):
        r = launcher("spawn", name)
        assert r.returncode == 1 and "not a workstation user" in r.stderr, (name, r.stderr)
    r = launcher("ensure-user", "../etc")
    assert r.returncode == 1 and "cannot be a system account" in r.stderr
    # Through the login form: an allowed hub name that cannot be an account is refused with the reason (403).
    from services.hubstack import HubUser

    dotted = HubUser(SimpleNamespace(url=demo.url), demo.names["dotted"])  # type: ignore[arg-type]
    with pytest.raises(requests.HTTPError) as info:
        dotted.log_in(SHARED)
    assert info.value.response.status_code == 403 and "cannot be a system account" in info.value.response.text
    r = launcher("signal", demo.names["alice"], "1", "9")  # pid 1 is root's: not alice's, so untouched
    assert r.returncode == 0 and json.loads(r.stdout) == {"alive": False}
    # Anything else through sudo is refused (no password, no rule).
    r = subprocess.run(["setpriv", f"--reuid={demo.svc}", f"--regid={demo.svc}", "--init-groups",
                        "sudo", "-n", "/bin/true"], capture_output=True, text=True, timeout=30, cwd="/")
    assert r.returncode != 0


def test_idle_named_workstation_is_culled_through_the_launcher(demo) -> None:  # type: ignore[no-untyped-def]
    import pwd

    from services.hubstack import spawn, wait_for

    alice = _user(demo, "alice")
    result = spawn(alice, server="ws1", timeout=120)
    assert result["ready"], result["message"]
    assert result["url"].rstrip("/").endswith(f"/user/{alice.name}/ws1")
    before = set(_pids_of(pwd.getpwnam(alice.name).pw_uid))

    def culled() -> bool:
        return "ws1" not in alice.hub_api("GET", f"/users/{alice.name}").json().get("servers", {})
    wait_for(culled, 240, "the idle culler to remove the idle named workstation", interval=0.5)
    assert f"Culling server {alice.name}/ws1" in (demo.work / "hub.log").read_text()
    assert len(set(_pids_of(pwd.getpwnam(alice.name).pw_uid)) & before) < len(before), "nothing was stopped"


def test_ssh_lands_beside_the_users_local_workstation(demo) -> None:  # type: ignore[no-untyped-def]
    """Embedded mode's `incloud hub ssh`: the token logs in, the session is the user (not root) with the hub
    variables of the user's running workstation server; with no workstation, one clear line."""
    from services.hubstack import free_port, spawn, wait_for

    require_tool("ssh")
    if not Path("/usr/sbin/sshd").exists():
        missing("openssh-server not installed")
    pam = Path("/etc/pam.d/incloud-sshd")
    assert not pam.exists(), "another incloud-sshd is set up on this machine"
    alice = _user(demo, "alice")
    token = alice.new_token(expires_in=600)
    port = free_port()
    log = open(demo.work / "sshd.log", "wb")
    sshd = subprocess.Popen([str(VENV / "bin" / "incloud"), "hub", "ssh"], env={**demo.env,
                            "INCLOUD_HUB_SSH_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    askpass = demo.work / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{token}'\n")
    askpass.chmod(0o700)

    def ssh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "PreferredAuthentications=keyboard-interactive", "-o", "NumberOfPasswordPrompts=1",
             "-o", "LogLevel=ERROR", f"{alice.name}@localhost", command],
            env={**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"},
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True,
                                        timeout=5).returncode == 0, 20, "sshd")
        state = alice.hub_api("GET", f"/users/{alice.name}").json().get("servers", {})
        if "" in state:
            alice.hub_api("DELETE", f"/users/{alice.name}/server")
            wait_for(lambda: "" not in alice.hub_api("GET", f"/users/{alice.name}").json().get("servers", {}), 60,
                     "alice's workstation to stop")
        r = ssh("id -un")
        assert r.returncode != 0 and f"no workstation of {alice.name} is running" in r.stderr, r.stderr
        result = spawn(alice, timeout=120)
        assert result["ready"], result["message"]
        r = ssh('id -u; id -un; echo "server=$JUPYTERHUB_SERVICE_PREFIX"')
        assert r.returncode == 0, r.stderr[-800:]
        import pwd

        assert r.stdout.split() == [str(pwd.getpwnam(alice.name).pw_uid), alice.name,
                                    f"server=/user/{alice.name}/"], r.stdout
    finally:
        sshd.terminate()
        sshd.wait(10)
        pam.unlink(missing_ok=True)
