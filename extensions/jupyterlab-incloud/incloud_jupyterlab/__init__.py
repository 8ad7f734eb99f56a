"""INCloud's JupyterLab extension: the prebuilt lab extension (``labextension/``, built from ``src/`` by
``jupyter-builder build``) and the small server extension that feeds its archive sidebar (``routes``).

The server extension reads the archive only through ``incloud_kernel.connect()``, i.e. the INCloud API with the
workstation's own hub token, so ``incloud_kernel.archive.permissions`` decides on the server what the sidebar
shows. It must never hold database credentials, never read archive files from disk, and never send the token to
the browser.
"""
try:
    from ._version import __version__
except ImportError:  # a source tree that was never built (jlpm build:prod writes _version.py through hatch)
    __version__ = "dev"

from .routes import setup_route_handlers


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "@incloud/jupyterlab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "incloud_jupyterlab"}]


def _load_jupyter_server_extension(server_app) -> None:  # type: ignore[no-untyped-def]
    """Register the sidebar's routes under ``<base_url>/incloud-jupyterlab/``."""
    setup_route_handlers(server_app.web_app)
    server_app.log.info("Registered incloud_jupyterlab server extension")
