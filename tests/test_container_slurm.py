"""One environment on every node (issue 20): the workstation image inside Slurm jobs, as the user.

The image is built by images/build.sh (cached by its inputs: test_image_build.py shares the build) and published
by images/publish.sh (a read-only tree, copied once per image ID). A hub profile with ``container = "podman"``
runs the user's server in it through rootless podman with the user's own uid (``--userns=keep-id``), and a
pipeline run with ``compute.container`` runs its SLURMCluster workers in it: the kernel shows the image's digest
and every derivative's provenance records the same digest. Real munge, Slurm, JupyterHub and podman.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from incloud_kernel.archive.models import Provenance
from incloud_kernel.db import transaction
from test_image_build import build_image
from test_pipeline_engine import engine_site, run, tasks_of  # noqa: F401 - fixtures used by name
from test_pipeline_slurm import slurm_conf  # noqa: F401 - a fixture used by name

pytestmark = [pytest.mark.services, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/incloud-workstation:test"
TESTS = Path(__file__).resolve().parent

#: Runs in the workstation's kernel: who, where and in which image.
INSIDE = """
import json, os, subprocess, incloud_kernel
print(json.dumps({"id": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
                  "digest": os.environ.get("INCLOUD_IMAGE_DIGEST"), "environment": incloud_kernel.environment(),
                  "module": incloud_kernel.__file__, "init": open("/proc/1/cmdline").read().replace("\\0", " "),
                  "uid_map": open("/proc/self/uid_map").read().split(),
                  "hub_user": incloud_kernel.connect().user["name"]}))
"""


def _user_processes(name: str) -> list[int]:
    """Pids of processes owned by system user ``name`` (rootless podman leaves its pause process)."""
    import pwd

    uid = pwd.getpwnam(name).pw_uid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "status").read_text().split("\nUid:\t", 1)[1].split()[0] == str(uid):
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


@pytest.fixture(scope="module")
def published() -> tuple[str, str]:
    """(folder, digest) of the workstation image published for jobs; built and copied only when it changed."""
    r = build_image(TAG, extra_tools=("newuidmap", "newgidmap"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(REPO / "images" / "publish.sh"), TAG], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    digest = r.stdout.strip().splitlines()[-1]
    assert digest.startswith("sha256:") and len(digest) == 71
    return str(Path(os.environ.get("INCLOUD_IMAGE_WORK", "/var/tmp/incloud-image")) / "published"), digest


def test_container_workstation_runs_in_the_image_as_the_user(published) -> None:  # type: ignore[no-untyped-def]
    from services.hubstack import HubStack, require_hub_stack
    from services.kernels import run_code

    images, digest = published
    base = require_hub_stack()
    work = Path(tempfile.mkdtemp(prefix="incloud-container-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    profiles = [{"name": "image", "display_name": "Workstation image", "cores": 1, "memory": "1G",
                 "walltime": "00:30:00", "container": "podman"}]
    stack = HubStack(work, base, extra_env={"INCLOUD_HUB_PROFILES": json.dumps(profiles),
                                            "INCLOUD_CONTAINER_IMAGES": images,
                                            "INCLOUD_HUB_START_TIMEOUT": "240"})
    user = None
    try:
        stack.start()
        user = stack.add_user("carol")
        user.log_in()
        user.token = user.new_token(expires_in=3600)
        result = stack.spawn(user, "image", timeout=300)
        assert result["ready"], f"workstation did not start: {result['message']}"
        jobs = subprocess.run(["squeue", "-h", "-o", "%u %T"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "SLURM_CONF": stack.env["SLURM_CONF"]}).stdout.split("\n")
        assert f"{user.name} RUNNING" in jobs, "the workstation is not a running Slurm job of the user"
        out = run_code(stack.url, f"/user/{user.name}/", user.token, INSIDE, timeout=180)
        assert not out.error, out.error + out.stderr
        inside = json.loads(out.stdout.strip().splitlines()[-1])
        assert inside["id"] == user.name and inside["hub_user"] == user.name
        assert inside["digest"] == digest and inside["environment"]["image_digest"] == digest
        assert inside["environment"]["in_image"] is True
        # The image's own install of incloud_kernel, not the host's (an editable install / PYTHONPATH here) ...
        assert inside["module"].startswith("/opt/incloud/venv/lib/python3"), inside["module"]
        assert "/site-packages/incloud_kernel/" in inside["module"]
        # ... in a container: its own process namespace, whose first process is the server, and a user namespace
        # in which the user's own uid is the host's uid (keep-id).
        import pwd

        uid = str(pwd.getpwnam(user.name).pw_uid)
        assert "hub.workstation" in inside["init"], inside["init"]
        assert inside["uid_map"] != ["0", "0", "4294967295"]
        assert inside["uid_map"][3:6] == [uid, "0", "1"], inside["uid_map"]  # keep-id: the user is itself
    finally:
        try:
            if user is not None and stack.hub_proc is not None:
                stack.stop_server(user)
        finally:
            state = None
            if user is not None:  # rootless podman's pause process and state of the user, made by this test
                import pwd

                state = Path(f"/var/tmp/incloud-podman-{pwd.getpwnam(user.name).pw_uid}")
                for pid in _user_processes(user.name):
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            stack.close()
            if state is not None:
                shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def container_site(engine_site, slurm_conf, published, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """The pipeline site of test_pipeline_slurm with ``compute.container``; the toy pipelines' module is put
    where the site keeps its own pipelines (``container.pythonpath``), not on the host's PYTHONPATH."""
    from incloud_kernel import config

    images, _digest = published
    own = tmp_path / "site-pipelines"
    own.mkdir()
    shutil.copy(TESTS / "pipeline_toy.py", own / "pipeline_toy.py")
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("INCLOUD_COMPUTE_BACKEND", "slurm")
    monkeypatch.setenv("INCLOUD_COMPUTE_SCHEDULER_HOST", "127.0.0.1")
    monkeypatch.setenv("INCLOUD_COMPUTE_SLURM_MEMORY", "500MB")
    monkeypatch.setenv("INCLOUD_COMPUTE_CONTAINER", "podman")
    monkeypatch.setenv("INCLOUD_CONTAINER_IMAGES", images)
    monkeypatch.setenv("INCLOUD_CONTAINER_PYTHONPATH", str(own))
    engine_site.config = config.get_config(reload=True)
    import dask_jobqueue  # noqa: F401 - installs a SIGINT handler when imported: only the main thread may
    return engine_site


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_pipeline_workers_in_the_image_record_its_digest(container_site, published):  # type: ignore[no-untyped-def]
    _images, digest = published
    run_id, state = run(container_site, "toy")
    assert state == "done", [(t.stage, t.state, t.error) for t in tasks_of(container_site, run_id)]
    with transaction(container_site.engine) as db:
        rows = list(db.scalars(select(Provenance).where(Provenance.run_id == run_id)))
    assert rows and {r.stage for r in rows} == {"brainvol", "summary"}
    assert {r.libraries["image"] for r in rows} == {digest}
    description = json.loads((container_site.archive_root / "derivatives/toy-1/dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"] == {"Type": "podman", "Tag": digest}
