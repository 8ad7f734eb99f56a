"""The workstation image (images/Containerfile) builds with podman from a debootstrap base and imports
incloud_kernel.

Part of the normal suite: images/build.sh copies the platform's own venv into the image (nothing downloaded or
compiled) on podman's overlay storage, 97 s measured on 2 loaded cores once the debootstrap base is cached
(the first build on a machine adds about 3 minutes of debootstrap with network to Debian). The script skips the
build when the tag already holds the same inputs (tests/test_container_slurm.py shares this tag).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import missing, require_tool

REPO = Path(__file__).resolve().parents[1]


def build_image(tag: str, extra_tools: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """images/build.sh TAG (skipped by the script when the tag already holds the same inputs), after checking
    root, the tools and that podman can run here (``missing`` otherwise: a failure under CI=true)."""
    for tool in ("podman", "runc", "debootstrap", *extra_tools):
        require_tool(tool)
    if os.geteuid() != 0:
        missing("building the workstation image needs root (debootstrap, podman storage)")
    info = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                          text=True, timeout=120)
    if info.returncode != 0:
        missing(f"podman cannot run here: {(info.stderr.strip().splitlines() or ['no output'])[-1][:200]}")
    return subprocess.run([str(REPO / "images" / "build.sh"), tag], capture_output=True, text=True, timeout=1150)


@pytest.mark.timeout(1200)
def test_workstation_image_builds_and_imports_incloud_kernel() -> None:
    r = build_image("localhost/incloud-workstation:test")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "incloud_kernel 0.1.0"
