"""incloud_kernel: INCloud's domain logic and client library.

It runs the same in a workstation, a Dask worker or behind a hub service, and never imports ``hub/``,
``voila_apps/`` or ``extensions/``.
"""
from __future__ import annotations

__version__ = "0.1.0"
