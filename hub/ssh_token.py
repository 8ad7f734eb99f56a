"""SSH into workstations with the hub token as password: the PAM check OpenSSH's sshd runs (via pam_exec).

``python -m hub.ssh_token HUB_API_URL`` reads the password (a JupyterHub token) on stdin, asks the hub whose
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


def serve() -> None:
    """Run the token-checking sshd for this site (``incloud hub ssh``): port ``hub.ssh_port``, folder in the
    hub's state folder, hub API at ``hub.hub_bind_url``. Replaces this process with sshd (foreground)."""
    from incloud_kernel.config import get_config

    from hub.spawners import state_dir

    cfg = get_config()
    cmd = write_sshd_setup(str(state_dir(cfg) / "sshd"), cfg.hub.ssh_port,
                           cfg.hub.hub_bind_url.rstrip("/") + "/hub/api")
    os.execv(cmd[0], cmd)


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
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


def write_sshd_setup(folder: str, port: int, hub_api: str, service: str = "incloud-sshd",
                     pam_dir: str = "/etc/pam.d") -> list[str]:
    """Files for an OpenSSH sshd that takes hub tokens as passwords; returns the command that runs it.

    OpenSSH names its PAM service after the program, so ``folder/<service>`` (a link to /usr/sbin/sshd) reads
    ``/etc/pam.d/<service>``: pam_exec runs this module with the typed password on stdin. Only
    keyboard-interactive authentication is on; root may not log in. Needs root (host key, PAM file).
    """
    import subprocess
    from pathlib import Path

    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    key = base / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    checker = base / "check-token"
    checker.write_text(f"#!/bin/sh\nexec {sys.executable} -m hub.ssh_token {hub_api}\n")
    checker.chmod(0o755)
    (Path(pam_dir) / service).write_text(
        f"auth requisite pam_exec.so expose_authtok quiet {checker}\n"
        "auth required pam_permit.so\n"
        "account include common-account\n"
        "session include common-session\n")
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {key}", f"PidFile {base / 'sshd.pid'}",
        "UsePAM yes", "KbdInteractiveAuthentication yes", "PasswordAuthentication no",
        "PubkeyAuthentication no", "AuthenticationMethods keyboard-interactive", "PermitRootLogin no",
        "X11Forwarding no", "AllowTcpForwarding no", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)
    program = base / service
    if not program.exists():
        program.symlink_to("/usr/sbin/sshd")
    return [str(program), "-D", "-e", "-f", str(config)]
