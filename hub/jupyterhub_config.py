"""INCloud's JupyterHub configuration, driven entirely by the site config (``incloud_kernel.config.HubSection``).

Run with ``incloud hub start`` (or ``jupyterhub -f hub/jupyterhub_config.py``). Every choice below reads the
site config; change ``incloud.toml`` or ``INCLOUD_HUB_*`` variables, not this file. It must never hold a
secret: the cookie secret and proxy token live in the hub's state folder, mode 0600.
"""
# ``c`` is injected by JupyterHub when it loads this file.
from hub.hubconfig import configure

configure(c)  # type: ignore[name-defined]  # noqa: F821
