"""The SSH session into a workstation: sshd's ``ForceCommand`` for ``incloud hub ssh`` (set up by hub.ssh_token).

After the hub token was accepted as the password, sshd runs this program as the user. It finds the user's running
workstation and runs the session *inside* it, never on the login host: in cluster mode as a step of the workstation's
Slurm job (``srun --jobid=JOB --overlap``, with a terminal when the client asked for one), in embedded mode beside
the workstation's server process as the same system user with that server's environment (the hub's variables that
``incloud_kernel.connect()`` reads). With no running workstation it says so in one line; on a terminal it offers to
start one through the hub's REST API (asking for the token again, which it never stores or prints).

Standard library only (it runs with ``python -I`` for every login); never prints or logs a token.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: batchspawner's ``#SBATCH --job-name`` for workstation jobs.
JOB_NAME = "spawner-jupyterhub"


def slurm_job(user: str, env: dict[str, str]) -> str | None:
    """The user's most recent running workstation job, or None."""
    r = subprocess.run(["squeue", "-h", "-u", user, "-t", "RUNNING", "-n", JOB_NAME, "-o", "%i"], env=env,
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"cannot ask Slurm for your workstation: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    jobs = [int(j) for j in r.stdout.split() if j.strip().isdigit()]
    return str(max(jobs)) if jobs else None


def local_workstation(uid: int) -> int | None:
    """Pid of the user's most recent local workstation server (``python -m hub.workstation``), or None."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hub.workstation" in argv and any(a.endswith(b"jupyterhub-singleuser") for a in argv):
            found.append(int(entry.name))
    return max(found) if found else None


def workstation_env(pid: int) -> dict[str, str]:
    """The hub's variables of the workstation server ``pid`` (same user), so the session talks to the hub as it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
    return {k: v for k, v in pairs if k.startswith(("JUPYTERHUB_", "INCLOUD_API_"))}


def session_command(shell: str, command: str | None) -> list[str]:
    return [shell, "-c", command] if command else [shell, "-l"]


def no_workstation(user: str, public_url: str, hub_api: str, start_timeout: float) -> bool:
    """Say that no workstation runs; on a terminal offer to start one (token asked again). True if started."""
    hub = public_url.rstrip("/")
    print(f"incloud ssh: no workstation of {user} is running. Start one at {hub}/hub/spawn, or with\n"
          f"  curl -X POST -H \"Authorization: token $TOKEN\" {hub}/hub/api/users/{user}/server\n"
          "and connect again.", file=sys.stderr)
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    try:
        if input("Start your workstation now through the hub? [y/N] ").strip().lower() not in ("y", "yes"):
            return False
        token = getpass.getpass("Hub token (the SSH password): ").strip()
    except EOFError:
        return False
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    base = hub_api.rstrip("/") + f"/users/{user}"
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/server", data=b"{}", headers=headers, method="POST"),
                               timeout=30)
    except urllib.error.HTTPError as exc:
        if exc.code != 400:  # 400: already starting or running
            print(f"incloud ssh: the hub refused to start a workstation (HTTP {exc.code})", file=sys.stderr)
            return False
    except OSError as exc:
        print(f"incloud ssh: hub unreachable: {type(exc).__name__}", file=sys.stderr)
        return False
    print("starting...", file=sys.stderr)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=30) as r:
                server = json.load(r).get("servers", {}).get("", {})
        except OSError:
            continue
        if server.get("ready"):
            return True
        if not server:  # the spawn failed; the hub page says why
            break
    print(f"incloud ssh: the workstation did not start; see {hub}/hub/home", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="incloud-ssh-session")
    parser.add_argument("--mode", choices=("cluster", "embedded"), required=True)
    parser.add_argument("--hub-api", required=True, help="the hub's REST API, e.g. http://127.0.0.1:8081/hub/api")
    parser.add_argument("--public-url", required=True, help="the hub as users reach it")
    parser.add_argument("--slurm-conf", default="")
    parser.add_argument("--start-timeout", type=float, default=120)
    args = parser.parse_args(argv)
    user = getpass.getuser()
    shell = os.environ.get("SHELL") or "/bin/bash"
    command = os.environ.get("SSH_ORIGINAL_COMMAND") or None
    env = dict(os.environ)
    if args.slurm_conf:
        env["SLURM_CONF"] = args.slurm_conf
    for attempt in (1, 2):
        try:
            if args.mode == "cluster":
                job = slurm_job(user, env)
                if job:
                    tty = ["--pty"] if command is None and sys.stdin.isatty() else []
                    cmd = ["srun", f"--jobid={job}", "--overlap", "--ntasks=1", "--quiet", *tty, "--",
                           *session_command(shell, command)]
                    os.execvpe(cmd[0], cmd, env)
            else:
                pid = local_workstation(os.getuid())
                if pid:
                    env.update(workstation_env(pid))
                    os.chdir(os.path.expanduser("~"))
                    cmd = session_command(shell, command)
                    os.execvpe(cmd[0], cmd, env)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"incloud ssh: {exc}", file=sys.stderr)
            return 1
        if attempt == 2 or not no_workstation(user, args.public_url, args.hub_api, args.start_timeout):
            return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
