"""Hub-managed services: the INCloud API (``hub.services.api``), the idle culler, and how the hub starts them.

Services get only the scopes they need (hub.roles); configuration reaches them through ``INCLOUD_*``
environment variables, never through command-line arguments that ``ps`` would show.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from incloud_kernel.config import Config

from hub.roles import API_SERVICE, CUSTOM_SCOPES


def incloud_env() -> dict[str, str]:
    """The ``INCLOUD_*`` variables of the hub process, passed on to services (the hub does not inherit them)."""
    return {k: v for k, v in os.environ.items() if k.startswith("INCLOUD_") or k in ("SLURM_CONF",)}


def services(cfg: Config) -> list[dict[str, Any]]:
    """``c.JupyterHub.services``: the INCloud API and the idle culler."""
    python = sys.executable
    hub = cfg.hub
    return [
        {
            "name": API_SERVICE,
            "url": f"http://127.0.0.1:{hub.api_port}",
            "command": [python, "-m", "hub.services.api"],
            "environment": incloud_env(),
            "display": True,
            "oauth_no_confirm": True,
            # A browser session through the service's OAuth carries the user's INCloud scopes, nothing else.
            "oauth_client_allowed_scopes": [f"access:services!service={API_SERVICE}", *sorted(CUSTOM_SCOPES)],
        },
        {
            "name": "idle-culler",
            "command": [python, "-m", "jupyterhub_idle_culler", f"--timeout={hub.idle_timeout}",
                        f"--cull-every={hub.cull_every}", "--remove-named-servers=True"],
        },
    ]
