"""The workstation image in Slurm jobs: the command line that runs a program inside it, and what a process can
tell about the image it runs in.

One environment on every node (issue 20): a workstation of a container profile (hub.spawners) and, with
``compute.container``, every Dask worker of a pipeline run start through ``images/incloud-run``, which
``images/publish.sh`` puts beside the published image on shared storage. Inside, ``INCLOUD_IMAGE_DIGEST`` names
the image (podman's image ID, ``sha256:...``): the kernel shows it (``incloud_kernel.environment()``) and every
derivative's provenance records it. Must never put a token or password on a command line (the launcher passes
the hub's and INCloud's variables from the environment by name) and never pass the host's ``PYTHONPATH`` into a
container (host code would run instead of the image's).
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from incloud_kernel.errors import ConfigError

#: Where the image keeps its Python environment (images/Containerfile).
IMAGE_VENV = "/opt/incloud/venv"
#: Set by images/incloud-run inside the container: the image's digest.
DIGEST_VARIABLE = "INCLOUD_IMAGE_DIGEST"
#: The launcher's file name in the published folder.
LAUNCHER = "incloud-run"


def image_digest() -> str | None:
    """The digest of the workstation image this process runs in, or None on a node's own environment."""
    return os.environ.get(DIGEST_VARIABLE) or None


def environment() -> dict[str, Any]:
    """Where this code runs: the image's digest (None outside the image), host, Python and INCloud version.

    ``incloud_kernel.environment()`` in a notebook: results computed with the same digest ran in the same
    files, whichever node or host OS computed them."""
    from incloud_kernel import __version__

    return {"image_digest": image_digest(), "in_image": image_digest() is not None, "host": platform.node(),
            "python": platform.python_version(), "prefix": sys.prefix, "incloud": __version__}


def launcher(images: str | os.PathLike[str]) -> Path:
    """``incloud-run`` in the published folder ``images``; ConfigError (one line) when nothing is published."""
    folder = Path(images)
    path = folder / LAUNCHER
    if not path.is_file() or not (folder / "current").exists():
        raise ConfigError(f"container.images: no published workstation image in {folder} "
                          "(run images/build.sh then images/publish.sh as root)")
    return path


def _outermost(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths in order, without repeats or paths inside an earlier one (mounted with it)."""
    out: list[str] = []
    for p in paths:
        text = os.path.abspath(os.fspath(p))
        if not any(text == o or text.startswith(o.rstrip("/") + "/") for o in out):
            out.append(text)
    return out


def wrap(images: str | os.PathLike[str], command: Sequence[str], binds: Iterable[str | os.PathLike[str]] = (),
         pythonpath: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """``incloud-run --bind B... --pythonpath P... -- COMMAND``: ``command`` run in the published image."""
    argv = [str(launcher(images))]
    paths = [os.path.abspath(os.fspath(p)) for p in pythonpath]
    for b in _outermost(b for b in binds if str(b) and os.path.abspath(os.fspath(b)) not in paths):
        argv += ["--bind", b]
    for p in paths:
        argv += ["--pythonpath", p]
    return [*argv, "--", *command]


__all__ = ["IMAGE_VENV", "DIGEST_VARIABLE", "image_digest", "environment", "launcher", "wrap"]
