"""The workstation hub end to end: PostgreSQL, munge, slurmctld, slurmd, JupyterHub with configurable-http-proxy
and the INCloud API service; users sign up and log in through the real forms, workstations are Slurm jobs
running as those users, and code in their kernels calls ``incloud_kernel.connect()``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import missing, require_tool

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

LIST_CODE = """
import json, os, pwd, incloud_kernel
c = incloud_kernel.connect()
frame = c.series()
print(json.dumps({"whoami": c.user["name"], "unix": pwd.getpwuid(os.getuid()).pw_name,
                  "rows": len(frame), "suffixes": sorted(frame["suffix"]) if len(frame) else []}))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator["HubStack"]:
    from services.hubstack import started_stack

    with started_stack() as s:
        yield s


@pytest.fixture(scope="module")
def alice(stack):  # type: ignore[no-untyped-def]
    user = stack.add_user("alice")
    stack.grant(user.name, "P1", "member")
    return user


@pytest.fixture(scope="module")
def bob(stack):  # type: ignore[no-untyped-def]
    return stack.add_user("bob")  # a researcher without any project membership


def _logged_in_with_workstation(stack, user):  # type: ignore[no-untyped-def]
    if not user.logged_in:
        user.log_in()
    assert user.logged_in, "the login form did not log the user in"
    if user.token is None:
        user.token = user.new_token(expires_in=3600)
    state = stack.hub("GET", f"/users/{user.name}").json()
    if "" not in state.get("servers", {}) or not state["servers"][""].get("ready"):
        result = stack.spawn(user, "small")
        assert result["ready"], f"workstation did not start: {result['message']}"
    return user


def _run(stack, user, code: str) -> dict:  # type: ignore[no-untyped-def]
    from services.kernels import run_code

    out = run_code(stack.url, f"/user/{user.name}/", user.token, code)
    assert not out.error, out.error + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_login_spawn_on_slurm_and_list_series_from_a_kernel(stack, alice) -> None:  # type: ignore[no-untyped-def]
    _logged_in_with_workstation(stack, alice)
    jobs = subprocess.run(["squeue", "-h", "-o", "%u %T"], capture_output=True, text=True, timeout=10,
                          env={**os.environ, "SLURM_CONF": stack.env["SLURM_CONF"]}).stdout.split("\n")
    assert f"{alice.name} RUNNING" in jobs, "the workstation is not a running Slurm job of the user"
    result = _run(stack, alice, LIST_CODE)
    assert result == {"whoami": alice.name, "unix": alice.name, "rows": 2, "suffixes": ["T1w", "bold"]}
    # JupyterLab still serves with only the workstation's server extensions loaded (hub.spawners).
    lab = requests.get(f"{stack.url}/user/{alice.name}/lab", headers={"Authorization": f"token {alice.token}"},
                       timeout=30)
    assert lab.status_code == 200 and "JupyterLab" in lab.text


def test_second_user_without_membership_gets_nothing(stack, alice, bob) -> None:  # type: ignore[no-untyped-def]
    _logged_in_with_workstation(stack, bob)
    result = _run(stack, bob, LIST_CODE)
    assert result == {"whoami": bob.name, "unix": bob.name, "rows": 0, "suffixes": []}
    out = _run(stack, bob, "import json, incloud_kernel\ntry:\n    incloud_kernel.connect().series(project='P1')\n"
                           "except Exception as e:\n    print(json.dumps({'error': type(e).__name__, 'msg': str(e)}))")
    assert out == {"error": "NotFound", "msg": "project P1 not found"}


def test_another_users_token_in_a_workstation_is_refused(stack, alice, bob) -> None:  # type: ignore[no-untyped-def]
    _logged_in_with_workstation(stack, alice)
    bob_token = bob.token or bob.new_token(expires_in=600) if bob.logged_in else None
    if bob_token is None:
        bob.log_in()
        bob_token = bob.new_token(expires_in=600)
    code = ("import json, os, incloud_kernel\nos.environ['INCLOUD_API_TOKEN'] = %r\n"
            "try:\n    incloud_kernel.connect()\nexcept Exception as e:\n"
            "    print(json.dumps({'error': type(e).__name__, 'msg': str(e)}))\n"
            "finally:\n    del os.environ['INCLOUD_API_TOKEN']" % bob_token)
    out = _run(stack, alice, code)
    assert out["error"] == "TokenError"
    assert f"belongs to user {bob.name}, not to {alice.name}" in out["msg"]


def test_file_access_through_the_api(stack, alice) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.client import connect

    alice.token = alice.token or alice.new_token(expires_in=3600)
    client = connect(stack.api_url, alice.token)
    files = client.files(project="P1")
    assert list(files["id"]) == stack.file_ids
    assert client.read_file(stack.file_ids[0]) == b'{"RepetitionTime": 2.3}'


def _ssh_command(port: int, user: str, password: str, command: str, folder: Path,
                 tty: bool = False) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the real OpenSSH client, ``password`` typed at its keyboard-interactive prompt."""
    askpass = folder / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
    askpass.chmod(0o700)
    argv = ["ssh", "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=keyboard-interactive", "-o", "NumberOfPasswordPrompts=1",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", *(["-tt"] if tty else []), f"{user}@localhost",
            *([command] if command else [])]
    return argv, {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def _ssh(port: int, user: str, password: str, command: str, folder: Path) -> subprocess.CompletedProcess[str]:
    argv, env = _ssh_command(port, user, password, command, folder)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _workstation_job(stack, user) -> str:  # type: ignore[no-untyped-def]
    out = subprocess.run(["squeue", "-h", "-u", user.name, "-t", "RUNNING", "-n", "spawner-jupyterhub", "-o", "%i"],
                         capture_output=True, text=True, timeout=10,
                         env={**os.environ, "SLURM_CONF": stack.env["SLURM_CONF"]}).stdout.split()
    assert len(out) == 1, f"expected one running workstation job of {user.name}, got {out}"
    return out[0]


@pytest.fixture
def sshd(stack):  # type: ignore[no-untyped-def]
    """`incloud hub ssh` (the real command, as root) on a free port; stopped and its PAM file removed after."""
    from services.hubstack import free_port, wait_for

    require_tool("ssh")
    if not Path("/usr/sbin/sshd").exists():
        missing("openssh-server not installed")
    port = free_port()
    pam = Path("/etc/pam.d/incloud-sshd")
    assert not pam.exists(), "another incloud-sshd is set up on this machine"
    folder = Path(tempfile.mkdtemp(prefix="incloud-ssh-"))
    log = open(folder / "log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("incloud")), "hub", "ssh"],
                            env={**stack.env, "INCLOUD_HUB_SSH_PORT": str(port)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"incloud hub ssh exited: {(folder / 'log').read_text()[-1000:]}")
            return subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True,
                                  timeout=5).returncode == 0
        wait_for(listening, 20, "sshd")
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(10)
        pam.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_ssh_with_the_hub_token_lands_in_the_workstation_job(stack, alice, sshd) -> None:  # type: ignore[no-untyped-def]
    """`incloud hub ssh`; a real OpenSSH client whose password is the user's hub token lands, as that user, in a
    step of the user's running workstation job (never on the login host); a wrong token is refused."""
    port, folder = sshd
    _logged_in_with_workstation(stack, alice)
    job = _workstation_job(stack, alice)
    ok = _ssh(port, alice.name, alice.token, 'echo "job=$SLURM_JOB_ID step=$SLURM_STEP_ID"; id -un; '
              'tr "\\0" " " < /proc/$PPID/cmdline; echo; /opt/incloud/venv/bin/python -c "import incloud_kernel"',
              folder)
    assert ok.returncode == 0, ok.stderr[-800:]
    lines = ok.stdout.strip().splitlines()
    assert lines[0].startswith(f"job={job} step=") and lines[0] != f"job={job} step=", ok.stdout
    assert lines[1] == alice.name
    assert f"slurmstepd: [{job}." in lines[2], f"the session is not a step of job {job}: {lines[2]!r}"
    # An interactive login (terminal, no command) gets a shell on a pseudo-terminal inside the same job.
    out = _ssh_dialogue(port, alice.name, alice.token, "", folder,
                        [("$ ", 'echo "tty=$(tty) job=$SLURM_JOB_ID"; exit')], timeout=120)
    assert f"job={job}" in out and "tty=/dev/pts/" in out, out[-800:]
    bad = _ssh(port, alice.name, "not-a-token", "true", folder)
    assert bad.returncode != 0 and "Permission denied" in bad.stderr


def test_ssh_without_a_workstation_says_so_and_offers_to_start_one(stack, alice, sshd) -> None:  # type: ignore[no-untyped-def]
    port, folder = sshd
    _logged_in_with_workstation(stack, alice)
    stack.stop_server(alice)
    r = _ssh(port, alice.name, alice.token, "id -un", folder)
    assert r.returncode != 0
    assert f"no workstation of {alice.name} is running" in r.stderr, r.stderr
    assert f"/hub/api/users/{alice.name}/server" in r.stderr and alice.token not in r.stderr + r.stdout
    # On a terminal the session offers to start one through the hub API (the token is asked again), then lands in it.
    out = _ssh_dialogue(port, alice.name, alice.token, 'echo "job=$SLURM_JOB_ID"; id -un', folder,
                        [("[y/N]", "y"), ("Hub token", alice.token)])
    job = _workstation_job(stack, alice)
    assert f"job={job}" in out and out.strip().splitlines()[-1].strip() == alice.name, out[-800:]


def _ssh_dialogue(port: int, user: str, password: str, command: str, folder: Path,
                  answers: list[tuple[str, str]], timeout: float = 180) -> str:
    """ssh -tt: answer each prompt once it is shown (getpass flushes what was typed before it asked)."""
    import select

    argv, env = _ssh_command(port, user, password, command, folder, tty=True)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    out, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
            if pending and pending[0][0].encode() in out.rsplit(b"\n", 1)[-1]:
                proc.stdin.write(pending.pop(0)[1].encode() + b"\n")
                proc.stdin.flush()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.decode(errors="replace").replace("\r", "")
    assert proc.returncode == 0, text[-800:]
    assert not pending, f"never asked {pending[0][0]!r}: {text[-800:]}"
    return text


def _concrete(path: str) -> str:
    """The route's path with each capture group filled by a value it matches (a project code, an id, a registry
    person id, a ticket or workshop code), so every route of every module is reached, not a 404."""
    import re

    def fill(group: re.Match[str]) -> str:
        for value in ("P1", "1", "P" + "A" * 16, "ABCD2345", "T1-x"):
            if re.fullmatch(group.group(0), value):
                return value
        raise AssertionError(f"no sample value matches {group.group(0)}")

    return re.sub(r"\((?:[^()]|\([^()]*\))*\)", fill, path)


def test_every_api_route_refuses_without_a_valid_token(stack) -> None:  # type: ignore[no-untyped-def]
    from hub.services.api.app import all_routes

    assert len(all_routes()) >= 14  # the pipeline routes included
    for route in all_routes():
        url = stack.api_url + _concrete(route.path)
        for headers in ({}, {"Authorization": "token not-a-real-token"}):
            r = requests.get(url, headers=headers, timeout=15, allow_redirects=False)
            assert r.status_code in (401, 403), f"GET /{route.path} answered {r.status_code} with {headers}"
            if route.path != "oauth_callback":
                assert r.headers["Content-Type"].startswith("application/json")
                assert "items" not in r.json()
    # A browser without a session is sent to the hub's login, with no data in the answer.
    r = requests.get(stack.api_url, headers={"Accept": "text/html"}, timeout=15, allow_redirects=False)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"]


def test_openapi_and_health_with_a_token(stack, alice) -> None:  # type: ignore[no-untyped-def]
    alice.token = alice.token or alice.new_token(expires_in=3600)
    h = {"Authorization": f"token {alice.token}"}
    spec = requests.get(stack.api_url + "openapi.json", headers=h, timeout=15).json()
    assert spec["openapi"].startswith("3.") and "/api/series" in spec["paths"]
    assert requests.get(stack.api_url + "health", headers=h, timeout=15).json()["status"] == "ok"


def test_expired_and_revoked_tokens_get_one_clear_line(stack, alice) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.client import TokenError, connect

    if not alice.logged_in:
        alice.log_in()
    short = alice.new_token(expires_in=1)
    time.sleep(2.5)
    with pytest.raises(TokenError, match="expired, revoked or unknown"):
        connect(stack.api_url, short)
    model = alice.new_token_model(expires_in=600)
    revoked = model["token"]
    assert connect(stack.api_url, revoked).user["name"] == alice.name
    assert alice.hub_api("DELETE", f"/users/{alice.name}/tokens/{model['id']}").status_code == 204
    with pytest.raises(TokenError) as info:
        connect(stack.api_url, revoked)
    assert "\n" not in str(info.value)


def test_missing_scopes_are_named(stack, alice) -> None:  # type: ignore[no-untyped-def]
    from incloud_kernel.client import ScopeError, connect

    if not alice.logged_in:
        alice.log_in()
    narrow = alice.new_token(expires_in=600, scopes=["access:services!service=incloud-api"])
    client = connect(stack.api_url, narrow)
    with pytest.raises(ScopeError, match="lacks scope custom:incloud:read"):
        client.series()
    dave = stack.add_user("dave", system=False, groups=())  # a hub user with no INCloud role
    dave.log_in()
    with pytest.raises(ScopeError, match="may not use the INCloud API"):
        connect(stack.api_url, dave.new_token(expires_in=600))


def test_job_dying_before_its_server_starts_fails_the_spawn_clearly(stack, alice, bob) -> None:  # type: ignore[no-untyped-def]
    if not alice.logged_in:
        alice.log_in()
    stack.stop_server(bob)  # free a core: the node has two
    result = stack.spawn(alice, "broken", server="dies", timeout=90)
    assert not result["ready"]
    assert re.search(r"workstation job \d+ ended before its server started", result["message"]), result


def test_user_without_system_account_gets_a_clear_message(stack) -> None:  # type: ignore[no-untyped-def]
    carol = stack.add_user("carol", system=False)
    carol.log_in()
    result = stack.spawn(carol, "small", timeout=60)
    assert not result["ready"]
    assert f"user {carol.name} has no system account on the cluster" in result["message"]


def test_slurm_controller_down_fails_the_spawn_without_hanging(stack, alice) -> None:  # type: ignore[no-untyped-def]
    from services.hubstack import slurm

    if not alice.logged_in:
        alice.log_in()
    stack.stop_server(alice)  # cancel the running job while the controller is still up
    from services.hubstack import wait_for

    pid = int((stack.slurm_dir / "slurmctld.pid").read_text())
    os.kill(pid, 15)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(gone, 30, "slurmctld to stop")
        t0 = time.monotonic()
        result = stack.spawn(alice, "small", timeout=90)
        assert not result["ready"]
        assert "Slurm refused the workstation job" in result["message"], result
        assert time.monotonic() - t0 < 90
    finally:
        slurm("start", stack.slurm_dir)


def test_admin_name_cannot_be_claimed_by_sign_up(stack) -> None:  # type: ignore[no-untyped-def]
    """No first-come admin: the admin's password was set by `incloud hub admin-password`; the sign-up form refuses
    the admin name, so nobody can take it over (upstream pre-approves an admin name's sign-up)."""
    from services.hubstack import PASSWORD, HubUser

    squatter = HubUser(stack, stack.admin.name)
    with pytest.raises(AssertionError, match="sign-up refused"):
        squatter.sign_up("an0ther-Strong-passw0rd")
    try:
        squatter.log_in("an0ther-Strong-passw0rd")
    except requests.HTTPError:
        pass
    assert not squatter.logged_in
    admin = HubUser(stack, stack.admin.name)
    admin.log_in(PASSWORD)
    assert admin.logged_in
