"""INCloud's JupyterHub: configuration (``jupyterhub_config.py``), roles and scopes, spawner and authenticator
set-ups, and the hub-managed services (``hub.services``) that wrap ``incloud_kernel``.

This package imports ``incloud_kernel``; ``incloud_kernel`` must never import it.
"""
