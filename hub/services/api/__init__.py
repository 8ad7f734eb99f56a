"""The INCloud API: a JupyterHub-managed tornado service over the archive (see ``app``)."""
