"""SSH into workstations with the hub token as password: the PAM check OpenSSH's sshd runs (via pam_exec).

``python -I hub/ssh_token.py HUB_API_URL`` reads the password (a JupyterHub token) on stdin, asks the hub whose
token it is, and exits 0 only when it belongs to ``$PAM_USER``. It never prints or logs the token; every
failure is one line on stderr and exit status 1; the hub call times out after 10 s.
"""
from __future__ import annotations

import os
import sys

import requests


def check(hub_api: str, user: str, token: str, timeout: float = 10.0) -> str | None:
    """None when ``token`` is a valid hub token of ``user``, else the reason (one line, no token)."""
    if not token or not user:
        return "no user or token"
    try:
        r = requests.get(hub_api.rstrip("/") + "/user", headers={"Authorization": f"token {token}"},
                         timeout=timeout)
    except requests.RequestException as exc:
        return f"hub unreachable: {type(exc).__name__}"
    if r.status_code != 200:
        return "token refused by the hub (expired, revoked or unknown)"
    if r.json().get("name") != user:
        return "token belongs to another user"
    return None


def session_command(mode: str, hub_api: str, public_url: str, slurm_conf: str = "",
                    start_timeout: float = 120, python: str | None = None) -> list[str]:
    """sshd's ForceCommand: hub.ssh_session, which runs the session inside the user's running workstation."""
    from pathlib import Path

    script = Path(__file__).resolve().with_name("ssh_session.py")
    cmd = [python or sys.executable, "-I", str(script), "--mode", mode, "--hub-api", hub_api,
           "--public-url", public_url, "--start-timeout", str(start_timeout)]
    return cmd + (["--slurm-conf", slurm_conf] if slurm_conf else [])


def write_sshd_setup(folder: str, port: int, hub_api: str, service: str = "incloud-sshd",
                     pam_dir: str = "/etc/pam.d", force_command: list[str] | None = None) -> list[str]:
    """Files for an OpenSSH sshd that takes hub tokens as passwords; returns the command that runs it.

    OpenSSH names its PAM service after the program, so ``folder/<service>`` (a link to /usr/sbin/sshd) reads
    ``/etc/pam.d/<service>``: pam_exec runs this module with the typed password on stdin. Only
    keyboard-interactive authentication is on; root may not log in; ``force_command`` (hub.ssh_session) is what
    every session runs, so nobody gets a shell on the login host. Needs root (host key, PAM file).
    """
    import shlex
    import subprocess
    from pathlib import Path

    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)
    key = base / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    checker = base / "check-token"
    checker.write_text(f"#!/bin/sh\nexec {sys.executable} -I {Path(__file__).resolve()} {hub_api}\n")
    checker.chmod(0o700)
    (Path(pam_dir) / service).write_text(
        f"auth requisite pam_exec.so expose_authtok quiet {checker}\n"
        "auth required pam_permit.so\n"
        "account include common-account\n"
        "session include common-session\n")
    config = base / "sshd_config"
    lines = [f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {key}", f"PidFile {base / 'sshd.pid'}",
             "UsePAM yes", "KbdInteractiveAuthentication yes", "PasswordAuthentication no",
             "PubkeyAuthentication no", "AuthenticationMethods keyboard-interactive", "PermitRootLogin no",
             "X11Forwarding no", "AllowTcpForwarding no", "AllowAgentForwarding no", "PermitTunnel no"]
    if force_command:
        lines.append("ForceCommand " + shlex.join(force_command))
    config.write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    program = base / service
    if not program.exists():
        program.symlink_to("/usr/sbin/sshd")
    return [str(program), "-D", "-e", "-f", str(config)]


def serve() -> None:
    """Run the token-checking sshd for this site (``incloud hub ssh``): port ``hub.ssh_port``, folder in the
    hub's state folder, hub API at ``hub.hub_bind_url``; sessions land in the user's running workstation.
    Replaces this process with sshd (foreground)."""
    from incloud_kernel.config import get_config
    from incloud_kernel.errors import ConfigError

    from hub.spawners import state_dir

    cfg = get_config()
    if cfg.hub.mode not in ("cluster", "embedded"):
        raise ConfigError(f"incloud hub ssh serves cluster and embedded workstations, not hub.mode {cfg.hub.mode!r}")
    hub_api = cfg.hub.hub_bind_url.rstrip("/") + "/hub/api"
    force = session_command(cfg.hub.mode, hub_api, cfg.hub.bind_url, os.environ.get("SLURM_CONF", ""),
                            cfg.hub.start_timeout + 30)
    cmd = write_sshd_setup(str(state_dir(cfg) / "sshd"), cfg.hub.ssh_port, hub_api, force_command=force)
    os.execv(cmd[0], cmd)


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        try:
            serve()
        except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
            sys.exit(f"incloud hub ssh: {exc}")
        return
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hub.ssh_token HUB_API_URL | --serve")
    token = sys.stdin.read().rstrip("\0").strip()
    reason = check(sys.argv[1], os.environ.get("PAM_USER", ""), token)
    if reason:
        print(f"incloud ssh: {reason}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
