"""README command A's isolated hub with a DEMO project (service user, root launcher, workstations as the users'
own accounts): ``bench/isolatedhub.py``, shared with bench/bench_portal.py, which may not import tests/; tests
reach it through this one module (pytest fixtures stay in the tests).
"""
from __future__ import annotations

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from isolatedhub import (  # noqa: E402  (bench/isolatedhub.py)
    ADMIN_PASSWORD, CHROMIUM, DASHBOARD, EXPECTED, LABEXTENSION_BUILD, SHARED, SITE_NAME, VENV, chromium, hub_bash,
    hub_env, hub_user, install_hub, isolated_layout, log_in, nifti_bytes, portal_stack, remove_isolated_hub,
    require_isolated_hub, running_workstation, start_hub, wait_for_hub)

__all__ = ["ADMIN_PASSWORD", "CHROMIUM", "DASHBOARD", "EXPECTED", "LABEXTENSION_BUILD", "SHARED", "SITE_NAME", "VENV",
           "chromium", "hub_bash", "hub_env", "hub_user", "install_hub", "isolated_layout", "log_in", "nifti_bytes",
           "portal_stack", "remove_isolated_hub", "require_isolated_hub", "running_workstation", "start_hub",
           "wait_for_hub"]
