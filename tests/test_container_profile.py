"""The container profile's settings without services: hub profiles with ``container``, the worker command of a
pipeline's Slurm jobs in the image, and the digest in provenance (tests/test_container_slurm.py runs them for
real on Slurm with podman)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from incloud_kernel.config import load_config
from incloud_kernel.errors import ConfigError


def _published(folder: Path) -> Path:
    """A folder shaped like images/publish.sh's output (launcher and ``current``)."""
    (folder / "sha256-abc" / "rootfs").mkdir(parents=True)
    (folder / "incloud-run").write_text("#!/bin/sh\n")
    (folder / "current").symlink_to("sha256-abc")
    return folder


def test_profile_with_container_takes_the_published_folder(tmp_path: Path) -> None:
    from hub.spawners import profile_list

    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_CONTAINER_IMAGES": "/shared/images",
                           "INCLOUD_CONTAINER_BINDS": '["/shared/data"]',
                           "INCLOUD_HUB_PROFILES": '[{"name": "image", "container": "podman"}, {"name": "plain"}]'})
    (_, _, _, image), (_, _, _, plain) = profile_list(cfg.hub, object, cfg.container)
    assert image["container"] == "podman" and image["container_images"] == "/shared/images"
    assert image["container_binds"] == ["/shared/data"]
    assert "container" not in plain
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path),
                           "INCLOUD_HUB_PROFILES": '[{"name": "image", "container": "docker"}]'})
    with pytest.raises(ConfigError, match=r"hub.profiles\[image\]: container must be 'podman'"):
        profile_list(cfg.hub, object, cfg.container)


def test_pipeline_workers_start_through_the_launcher(tmp_path: Path) -> None:
    from incloud_kernel.pipeline.executor import worker_python

    images = _published(tmp_path / "images")
    own = tmp_path / "own-pipelines"
    own.mkdir()
    env = {"INCLOUD_HOME": str(tmp_path / "home"), "INCLOUD_COMPUTE_CONTAINER": "podman",
           "INCLOUD_CONTAINER_IMAGES": str(images), "INCLOUD_CONTAINER_PYTHONPATH": str(own)}
    (tmp_path / "home" / "archive").mkdir(parents=True)
    cfg = load_config(env=env)
    argv = shlex.split(worker_python(cfg.compute, cfg, str(tmp_path / "home" / "logs")))
    # The archive and the (absent) log folder are inside the home: one mount holds them.
    assert argv == [str(images / "incloud-run"), "--bind", str(tmp_path / "home"), "--pythonpath", str(own),
                    "--", "/opt/incloud/venv/bin/python"]
    with pytest.raises(ConfigError, match="no published workstation image"):
        worker_python(cfg.compute, load_config(env={**env, "INCLOUD_CONTAINER_IMAGES": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match="compute.container must be one of"):
        load_config(env={**env, "INCLOUD_COMPUTE_CONTAINER": "docker"})
    plain = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_COMPUTE_SLURM_PYTHON": "/venv/bin/python"})
    assert worker_python(plain.compute, plain) == "/venv/bin/python"


def test_provenance_names_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    import incloud_kernel
    from incloud_kernel.pipeline import provenance

    monkeypatch.delenv("INCLOUD_IMAGE_DIGEST", raising=False)
    assert provenance.library_versions()["image"] == provenance.NO_IMAGE
    assert incloud_kernel.environment()["image_digest"] is None
    monkeypatch.setenv("INCLOUD_IMAGE_DIGEST", "sha256:" + "a" * 64)
    assert provenance.library_versions()["image"] == "sha256:" + "a" * 64
    assert incloud_kernel.environment()["in_image"] is True
