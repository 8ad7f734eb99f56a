"""Upgrades leave running workstations alone (issue 20 item 5), on the real stack: munge, Slurm, JupyterHub with
configurable-http-proxy and batchspawner (tests/services/hubstack.py).

A user's workstation runs as a Slurm job with a kernel in it; the hub process is stopped (SIGTERM, as
``systemctl restart`` does) and started again, as ``ansible/upgrade.yml`` does after the migrations. The same
Slurm job is still running, the same kernel still exists, and the user reaches the server again through the new
proxy, whose routes the restarted hub re-synced from its database. On the old configuration
(``cleanup_servers = True``) the hub stopped every workstation on its way down.
"""
from __future__ import annotations

import os
import subprocess

import requests

from test_hub_slurm import stack  # noqa: F401 - the real hub stack fixture (module scope)


def _jobs(stack, user) -> list[str]:  # type: ignore[no-untyped-def]
    out = subprocess.run(["squeue", "-h", "-u", user.name, "-t", "RUNNING", "-o", "%i"], capture_output=True,
                         text=True, timeout=10, env={**os.environ, "SLURM_CONF": stack.env["SLURM_CONF"]})
    return out.stdout.split()


def test_restarting_the_hub_leaves_a_running_workstation_and_its_kernel_alive(stack) -> None:  # type: ignore  # noqa: F811
    user = stack.add_user("uplift")
    stack.grant(user.name)
    user.log_in()
    token = user.new_token(expires_in=3600)
    result = stack.spawn(user, "small", timeout=120)
    assert result["ready"], result["message"]
    jobs = _jobs(stack, user)
    assert len(jobs) == 1
    api = f"{stack.url}/user/{user.name}/api"
    headers = {"Authorization": f"token {token}"}
    r = requests.post(f"{api}/kernels", headers=headers, json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]

    stack.restart_hub()  # as ansible/upgrade.yml does after the migrations

    assert _jobs(stack, user) == jobs  # the same Slurm job, never cancelled
    state = stack.hub("GET", f"/users/{user.name}").json()
    assert state["servers"][""]["ready"], state
    r = requests.get(f"{api}/kernels/{kernel}", headers=headers, timeout=30)  # through the new proxy
    assert r.status_code == 200 and r.json()["id"] == kernel, r.text
    stack.stop_server(user)
