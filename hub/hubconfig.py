"""Turn the site config into JupyterHub settings (``configure(c)``), so the config file stays one line and tests
can build the same settings without starting a hub.

Never writes a secret into a setting that is logged; the cookie secret is a 0600 file in the state folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from incloud_kernel.config import Config, get_config
from incloud_kernel.errors import ConfigError

from hub import authenticators, roles, spawners, workshops
from hub.services import services


def api_public_url(cfg: Config) -> str:
    """Where workstations reach the INCloud API: through the proxy, under /services/incloud-api/."""
    return cfg.hub.bind_url.rstrip("/") + f"/services/{roles.API_SERVICE}/"


def configure(c: Any, cfg: Config | None = None) -> Config:
    """Fill the traitlets config ``c`` from the site config; raises ConfigError for unknown modes."""
    cfg = cfg or get_config(reload=True)
    hub = cfg.hub
    if hub.mode not in spawners.SETUPS:
        raise ConfigError(f"hub.mode must be one of {', '.join(spawners.SETUPS)}, got {hub.mode!r}")
    if hub.authenticator not in authenticators.SETUPS:
        raise ConfigError(f"hub.authenticator must be one of {', '.join(authenticators.SETUPS)}, "
                          f"got {hub.authenticator!r}")
    state = spawners.state_dir(cfg)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)

    c.JupyterHub.bind_url = hub.bind_url
    c.JupyterHub.hub_bind_url = hub.hub_bind_url
    c.JupyterHub.db_url = hub.db_url or f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    # Upgrades restart the hub without touching running workstations (docs/backup.md "Upgrades"): Slurm jobs and
    # containers outlive it and are found again from its database; the proxy it restarts gets its routes back.
    # Embedded workstations are the hub's own child processes on the head node: those are stopped with it.
    c.JupyterHub.cleanup_servers = hub.mode == "embedded"
    # Answer a spawn request at once; progress (and a clear failure message) follows on the progress stream.
    c.JupyterHub.slow_spawn_timeout = 0
    c.JupyterHub.allow_named_servers = hub.allow_named_servers
    c.JupyterHub.named_server_limit_per_user = 3
    c.ConfigurableHTTPProxy.command = [spawners.proxy_command()]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    if urlparse(hub.bind_url).hostname not in ("127.0.0.1", "localhost"):
        c.JupyterHub.cookie_host_prefix_enabled = False

    authenticators.SETUPS[hub.authenticator](c, cfg)
    c.Authenticator.admin_users = set(hub.admin_users)
    c.JupyterHub.custom_scopes = roles.CUSTOM_SCOPES
    c.JupyterHub.load_groups = roles.load_groups(hub.group_members)
    c.JupyterHub.load_roles = roles.load_roles()
    c.JupyterHub.services = services(cfg)
    spawners.SETUPS[hub.mode](c, cfg, api_public_url(cfg))
    portal(c, cfg)
    workshops.configure(c, cfg)
    return cfg


#: The portal's templates (home.html, page.html) and its assets, which the templates inline.
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def ssh_command(cfg: Config, name: str) -> str:
    """The SSH command a user types to reach their workstation (docs/hub.md, "SSH into the workstation")."""
    host = urlparse(cfg.hub.bind_url).hostname or "localhost"
    return f"ssh -p {cfg.hub.ssh_port} {name}@{host}"


def portal(c: Any, cfg: Config) -> None:
    """The home page after login: INCloud's templates first, the modules a user's groups open (hub.roles), live
    status from the INCloud API in the page (never computed in the hub, which would block its event loop)."""
    from voila_apps import DASHBOARDS

    c.JupyterHub.template_paths = [str(TEMPLATES), str(STATIC), *list(c.JupyterHub.get("template_paths", []))]
    c.JupyterHub.default_url = "/hub/home"
    base = urlparse(cfg.hub.bind_url).path.rstrip("/")

    def groups(user: Any) -> list[str]:
        return sorted(g.name for g in user.groups) if user is not None else []

    def modules(user: Any) -> list[roles.Module]:
        return roles.modules_for(groups(user), bool(user and user.admin)) if user is not None else []

    def dashboards(user: Any) -> list[Any]:
        keys = {m.key for m in modules(user)}
        return [d for d in DASHBOARDS if d.module in keys]

    c.JupyterHub.template_vars = {
        "incloud_site_name": cfg.site.name,
        "incloud_api_prefix": f"{base}/services/{roles.API_SERVICE}/",
        "incloud_roles": groups,
        "incloud_modules": modules,
        "incloud_dashboards": dashboards,
        "incloud_ssh_command": lambda user: ssh_command(cfg, user.name) if user is not None else "",
    }
