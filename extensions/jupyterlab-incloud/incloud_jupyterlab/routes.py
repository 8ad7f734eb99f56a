"""The sidebar's server routes, inside the user's own Jupyter server: the archive tree level by level and the bytes
of a series' NIfTI image, read through ``incloud_kernel.connect()`` (the INCloud API, the workstation's token).

Why here and not the browser calling the API service itself: the service authenticates browsers with its own OAuth
cookie (``/services/incloud-api/``), which a JupyterLab page does not hold, and the alternative, the user's token in
page JavaScript, would hand it to every script on the page. Here the browser's requests are authenticated by the
Jupyter server exactly like JupyterLab's own (the hub's OAuth and the xsrf header), and the token stays in the
server process, which already holds it for the user's kernels. Permissions stay in one place: the API service asks
``incloud_kernel.archive.permissions`` for every row and every file byte.

Must never read the archive from disk or a database, never return the token, and never put a value that is not
already in the API's answer into an error (the API's messages are free of identifying values).
"""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Callable

import tornado
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

#: Route namespace (the template's convention: the Python package name with dashes).
NAMESPACE = "incloud-jupyterlab"

#: What the tree needs of each level (the API returns more columns; the browser gets only these).
FIELDS: dict[str, tuple[str, ...]] = {
    "projects": ("code", "name"),
    "participants": ("id", "label"),
    "sessions": ("id", "label", "participant_id"),
    "series": ("id", "session_id", "modality", "datatype", "suffix", "entities", "qc_status"),
}

#: Query arguments passed on to the API: the parent of each level (no other filter reaches the API).
PARENTS = ("project", "participant", "session")

_local = threading.local()


def client() -> Any:
    """This thread's API client (one ``connect()``, i.e. one ``api/me`` round trip, per worker thread)."""
    if getattr(_local, "client", None) is None:
        import incloud_kernel

        _local.client = incloud_kernel.connect()
    return _local.client


def _forget_client() -> None:
    _local.client = None


def list_level(kind: str, parents: dict[str, str]) -> list[dict[str, Any]]:
    """Every row of one tree level the user may read (all pages), cut down to ``FIELDS[kind]``."""
    keep = FIELDS[kind]
    return [{k: row.get(k) for k in keep} for row in client().pages(kind, **parents)]


def image_bytes(series_id: int) -> tuple[str, bytes]:
    """(file name, bytes) of the series' NIfTI image: the file ``client.load`` reads, checked by SHA-256."""
    c = client()
    image = c.nifti_file(series_id)
    name = f"series-{series_id}" + (".nii.gz" if image["relpath"].endswith(".gz") else ".nii")
    return name, c.read_file(image["id"])


def _status(exc: Exception) -> int:
    from incloud_kernel.client import ApiError, TokenError
    from incloud_kernel.errors import IncloudError, NotFound, PermissionDenied, ValidationError

    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (PermissionDenied, TokenError)):
        return 403
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, (ApiError, IncloudError)):
        return 502
    return 500


class IncloudHandler(APIHandler):
    """Runs blocking API calls in a worker thread and turns INCloud errors into one JSON line."""

    async def run(self, work: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the sidebar
            from incloud_kernel.client import TokenError

            if isinstance(exc, TokenError):
                _forget_client()  # a restarted server gets a new token: connect again next time
            status = _status(exc)
            if status == 500:
                self.log.error("incloud_jupyterlab: %s", type(exc).__name__)
                message = f"internal error ({type(exc).__name__}); see the workstation log"
            else:
                message = " ".join(str(exc).split())
            self.set_status(status)
            self.finish(json.dumps({"message": message}))
            return None


class LevelHandler(IncloudHandler):
    """``GET .../archive/<kind>?project=&participant=&session=``: one level of the tree as JSON."""

    @tornado.web.authenticated
    async def get(self, kind: str) -> None:
        # Other arguments are ignored (JupyterLab appends a cache-busting number to every GET it sends).
        parents = {name: self.get_query_argument(name) for name in PARENTS
                   if self.get_query_argument(name, None) is not None}
        items = await self.run(lambda: list_level(kind, parents))
        if items is not None:
            self.finish(json.dumps({"items": items}))


class ImageHandler(IncloudHandler):
    """``GET .../series/<id>/image``: the series' NIfTI bytes for the viewer."""

    @tornado.web.authenticated
    async def get(self, series_id: str) -> None:
        found = await self.run(lambda: image_bytes(int(series_id)))
        if found is None:
            return
        name, data = found
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'inline; filename="{name}"')
        self.set_header("X-Incloud-Name", name)
        self.set_header("Cache-Control", "no-store")
        self.finish(data)


def setup_route_handlers(web_app: Any) -> None:
    base_url = web_app.settings["base_url"]
    kinds = "|".join(FIELDS)
    web_app.add_handlers(".*$", [
        (url_path_join(base_url, NAMESPACE, "archive", f"({kinds})"), LevelHandler),
        (url_path_join(base_url, NAMESPACE, "series", r"([0-9]+)", "image"), ImageHandler),
    ])
