"""``incloud hub start|config|path``: run INCloud's JupyterHub from the site config and show its settings.

The hub's code lives in the ``hub`` package beside ``incloud_kernel``; this module only locates its config file
(it never imports ``hub``, so the one-way dependency holds) and runs ``jupyterhub`` on it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import click

from incloud_kernel.config import get_config
from incloud_kernel.errors import ConfigError


def config_file() -> Path:
    """Path of hub/jupyterhub_config.py (found without importing the hub package)."""
    spec = importlib.util.find_spec("hub")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the hub package is not installed beside incloud_kernel (pip install -e '.[hub]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "jupyterhub_config.py"
    if not path.is_file():
        raise ConfigError(f"hub configuration not found at {path}")
    return path


@click.group()
def hub() -> None:
    """The workstation hub (JupyterHub, the INCloud API service, Slurm workstations)."""


@hub.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(as_json: bool) -> None:
    """Print the hub settings of the site config (mode, URLs, authenticator, profiles)."""
    cfg = get_config()
    data = {f"hub.{k}": v for k, v in vars(cfg.hub).items() if k not in ("shared_password", "admin_password")}
    data["config file"] = str(config_file())
    data["API URL for workstations"] = cfg.hub.bind_url.rstrip("/") + "/services/incloud-api/"
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key:<28} {json.dumps(value) if not isinstance(value, str) else value}")


@hub.command("path")
def path() -> None:
    """Print the path of jupyterhub_config.py (for `jupyterhub -f`)."""
    click.echo(str(config_file()))


@hub.command("start")
@click.option("--debug", is_flag=True, help="JupyterHub debug logging.")
def start(debug: bool) -> None:
    """Run the hub in the foreground (Ctrl-C stops it, its proxy, services and local workstations)."""
    cfg = get_config()
    if cfg.hub.mode not in ("embedded", "cluster", "docker"):
        raise ConfigError(f"hub.mode must be embedded, cluster or docker, got {cfg.hub.mode!r}")
    exe = Path(sys.executable).with_name("jupyterhub")
    if not exe.exists():
        raise ConfigError("jupyterhub is not installed in this environment (pip install -e '.[hub]')")
    state = Path(cfg.hub.state_dir).expanduser() if cfg.hub.state_dir else cfg.home / "hub"
    state.mkdir(parents=True, exist_ok=True)
    click.echo(f"INCloud hub ({cfg.hub.mode} mode) at {cfg.hub.bind_url}")
    if cfg.hub.authenticator == "native":
        click.echo(f"  sign up at {cfg.hub.bind_url.rstrip('/')}/hub/signup; admins "
                   f"({', '.join(cfg.hub.admin_users)}) approve users at /hub/authorize; admin names cannot sign "
                   "up: set their passwords with `incloud hub admin-password NAME`")
    args = [str(exe), "-f", str(config_file())] + (["--debug"] if debug else [])
    os.chdir(state)
    # A hub started in the background by a script inherits SIGINT ignored; its services would inherit that too,
    # and JupyterHub stops services with SIGINT first, so shutdown would wait on them. Restore the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(args[0], args)


@hub.command("admin-password")
@click.argument("name", required=False)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input.")
def admin_password(name: str | None, from_stdin: bool) -> None:
    """Set an admin's hub password (NativeAuthenticator; sign-up never accepts an admin name).

    Without --stdin a strong password is generated and printed once. Run it after the hub started once.
    """
    import secrets
    import subprocess

    cfg = get_config()
    if cfg.hub.authenticator != "native":
        raise ConfigError(f"hub.authenticator is {cfg.hub.authenticator!r}: admin passwords are set in the site "
                          "config (hub.admin_password) or by the directory, not here")
    name = name or (cfg.hub.admin_users[0] if cfg.hub.admin_users else "")
    if name not in cfg.hub.admin_users:
        raise ConfigError(f"{name or 'nobody'} is not in hub.admin_users")
    password = sys.stdin.readline().rstrip("\n") if from_stdin else secrets.token_urlsafe(18)
    r = subprocess.run([sys.executable, "-m", "hub.native", "set-password", name], input=password + "\n",
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise ConfigError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "could not set the password")
    click.echo(r.stdout.strip())
    if not from_stdin:
        click.echo(f"password of {name} (shown once): {password}")


@hub.command("ssh")
def ssh() -> None:
    """Run the SSH entry point (OpenSSH, hub token as password) on hub.ssh_port, in the foreground (root)."""
    if os.geteuid() != 0:
        raise ConfigError("incloud hub ssh needs root (sshd host key, PAM service file)")
    os.execv(sys.executable, [sys.executable, "-m", "hub.ssh_token", "--serve"])
