"""incloud_kernel: INCloud's domain logic and client library.

It runs the same in a workstation, a Dask worker or behind a hub service, and never imports ``hub/``,
``voila_apps/`` or ``extensions/``.
"""
from __future__ import annotations

__version__ = "0.1.0"


def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
    """``incloud_kernel.connect()``: the INCloud API with your hub token (see ``incloud_kernel.client``)."""
    from incloud_kernel.client import connect as _connect

    return _connect(*args, **kwargs)


def environment():  # type: ignore[no-untyped-def]
    """``incloud_kernel.environment()``: the workstation image's digest this code runs in (None outside it), host,
    Python and INCloud version (see ``incloud_kernel.pipeline.container``)."""
    from incloud_kernel.pipeline.container import environment as _environment

    return _environment()
