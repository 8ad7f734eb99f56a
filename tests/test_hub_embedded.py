"""README command A's hub: `incloud hub start` on embedded defaults (SQLite, local spawner, native sign-up); a named
workstation spawned there is culled by the idle culler once idle longer than a (tiny) ``hub.idle_timeout``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from conftest import missing

pytestmark = pytest.mark.timeout(300)


def test_incloud_hub_start_serves_hub_and_api(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from services.hubstack import HubUser, free_port, spawn, wait_for

    from hub.spawners import proxy_command

    if not os.path.exists(proxy_command()):
        missing("configurable-http-proxy not installed (scripts/lib/install.sh ensure_node_tools)")
    ports = [free_port() for _ in range(4)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INCLOUD_", "JUPYTERHUB_"))}
    env.update({"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_HUB_BIND_URL": f"http://127.0.0.1:{ports[0]}",
                "INCLOUD_HUB_HUB_BIND_URL": f"http://127.0.0.1:{ports[1]}",
                "INCLOUD_HUB_PROXY_API_PORT": str(ports[2]), "INCLOUD_HUB_API_PORT": str(ports[3]),
                # A tiny idle timeout, so the culler acts within the test (production: an hour).
                "INCLOUD_HUB_IDLE_TIMEOUT": "5", "INCLOUD_HUB_CULL_EVERY": "2"})
    subprocess.run([str(Path(sys.executable).with_name("incloud")), "init"], env=env, check=True, timeout=120,
                   capture_output=True)
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("incloud")), "hub", "start"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "hub.log").read_text()[-2000:])
            return requests.get(url + "/hub/api/", timeout=5).status_code == 200
        wait_for(up, 90, "embedded hub")
        wait_for(lambda: requests.get(url + "/services/incloud-api/health", timeout=5).status_code == 401, 60,
                 "INCloud API service")
        assert "signup" in requests.get(url + "/hub/login", timeout=10).text

        # The default admin signs up (admins need no approval), logs in and starts a *named* workstation.
        admin = HubUser(SimpleNamespace(url=url), "admin")  # type: ignore[arg-type]
        admin.sign_up()
        admin.log_in()
        assert admin.logged_in
        result = spawn(admin, server="ws1", timeout=120)
        assert result["ready"], result["message"]
        assert result["url"].rstrip("/").endswith("/user/admin/ws1")

        def culled() -> bool:
            return "ws1" not in admin.hub_api("GET", "/users/admin").json().get("servers", {})
        wait_for(culled, 90, "the idle culler to remove the idle named workstation", interval=0.5)
        assert "Culling server admin/ws1" in (tmp_path / "hub.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "INCloud hub (embedded mode)" in (tmp_path / "hub.log").read_text()
