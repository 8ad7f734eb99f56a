"""Issue 19 item 1: the clinic uploader installs on Windows, macOS (arm64, x86_64) and Linux from wheels, and
keeps POSIX-only calls off its path.

Which distributions: every third-party distribution the uploader's own modules import (found by importing them
and the refacing and QC modules they load lazily, in a fresh interpreter, and mapping ``sys.modules`` to
distributions), plus the declared dependencies of ``uploader/pyproject.toml`` and of ``incloud`` (the
distribution of this repository that ``pip install incloud-uploader`` brings, with all of its own dependencies),
each at the version installed here (pinned in constraints.txt). Each must have a wheel (``--only-binary=:all:``)
for every platform: asked of PyPI with pip's own resolver and ``--dry-run`` (the same question ``pip download
--only-binary=:all: --platform ... --no-deps`` asks, answered from the wheels' metadata without fetching some
1.5 GB of wheels on every run).
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import missing

REPO = Path(__file__).resolve().parents[1]
UPLOADER = REPO / "uploader"
PLATFORMS = {
    "windows": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64"],
    "macos-x86_64": ["macosx_14_0_x86_64"],
    "linux": ["manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
              "manylinux2014_x86_64"],
}
#: Distributions that ``incloud`` declares but the uploader's path never imports, with no wheel for a platform at
#: the pinned version: none. (Found by this test on 2026-12-03: cryptography 50.0.2 ships macOS wheels for arm64
#: only; constraints.txt pins 48.0.1, the newest with a universal2 wheel, which Intel Macs install.)
KNOWN_GAPS: dict[str, list[str]] = {}
PATH_MODULES = ["incloud_uploader.cli", "incloud_uploader.server", "incloud_uploader.jobs",
                "incloud_uploader.prepare", "incloud_uploader.scan", "incloud_uploader.send",
                "incloud_kernel.deface.reface", "incloud_kernel.deface.qc", "matplotlib.pyplot"]
OWN = {"incloud", "incloud-uploader"}


def _imported() -> tuple[set[str], list[str]]:
    """(third-party distributions, files of our own modules) loaded by the uploader's path, in a fresh process."""
    code = (
        "import importlib, importlib.metadata as md, json, sys\n"
        f"for m in {PATH_MODULES!r}: importlib.import_module(m)\n"
        "pd = md.packages_distributions()\n"
        "tops = {n.split('.')[0] for n in sys.modules}\n"
        "dists = sorted({d for t in tops if t not in sys.stdlib_module_names for d in pd.get(t, [])})\n"
        "own = sorted(m.__file__ for n, m in list(sys.modules.items()) if n.split('.')[0] in "
        "('incloud_kernel', 'incloud_uploader') and getattr(m, '__file__', None))\n"
        "print(json.dumps([dists, own]))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(UPLOADER), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    dists, own = json.loads(out.stdout.strip().splitlines()[-1])
    return set(dists), own


def _declared(pyproject: Path) -> set[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0] for d in deps}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(names: set[str]) -> list[str]:
    canonical = {_key(n): n for n in names}
    pins = []
    for key, name in sorted(canonical.items()):
        if key in OWN:
            continue
        try:
            pins.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            pins.append(name)
    return pins


def _no_wheel(platform: str, pins: list[str], tmp_path: Path) -> list[str]:
    """The pins of ``pins`` with no wheel for ``platform`` (one resolver run; one per pin only on a failure)."""
    flags = [f"--platform={p}" for p in PLATFORMS[platform]]
    tmp_path.mkdir(parents=True, exist_ok=True)
    missing_wheels: list[str] = []
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
           "--only-binary=:all:", *flags, "--python-version", "3.11", "--implementation", "cp",
           "--target", str(tmp_path / "target"), "--report", str(report), "--quiet",
           "--index-url", "https://pypi.org/simple", "--no-cache-dir"]
    left = list(pins)
    while True:  # pip names the first pin it cannot satisfy: set it aside and ask again for the rest
        out = subprocess.run(cmd + left, capture_output=True, text=True, timeout=900)
        if "Could not fetch URL" in out.stderr or "NewConnectionError" in out.stderr:
            missing("PyPI is not reachable")
        if out.returncode == 0:
            break
        found = re.search(r"No matching distribution found for (\S+)", out.stderr)
        assert found and found.group(1) in left, out.stderr[-2000:]
        missing_wheels.append(found.group(1))
        left.remove(found.group(1))
        if not left:
            return missing_wheels
    if missing_wheels:
        return missing_wheels
    got = {_key(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]}
    assert got == {_key(p.split("==")[0]) for p in pins}
    return []


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_every_dependency_has_a_wheel_for_the_platform(platform: str, tmp_path: Path) -> None:
    dists, _ = _imported()
    path = _pins(dists | _declared(UPLOADER / "pyproject.toml"))
    assert any(_key(p).startswith("simpleitk") for p in path)  # the refacing path was followed
    assert _no_wheel(platform, path, tmp_path / "path") == [], f"the uploader's path lacks {platform} wheels"
    imported = {_key(d) for d in dists}
    rest = _pins({n for n in _declared(REPO / "pyproject.toml") if _key(n) not in imported})
    gaps = [_key(p.split("==")[0]) for p in _no_wheel(platform, rest, tmp_path / "rest")]
    assert gaps == KNOWN_GAPS.get(platform, []), f"incloud's own dependencies without {platform} wheels: {gaps}"


#: Calls and modules that exist on POSIX only (or behave differently on Windows).
POSIX_ONLY_MODULES = {"fcntl", "pwd", "grp", "termios", "resource", "posix", "tty", "pty"}
POSIX_ONLY_CALLS = {"fork", "forkpty", "setsid", "killpg", "getuid", "geteuid", "setuid", "chown", "lchown",
                    "sendfile", "copy_file_range", "sync", "mkfifo", "getpgid"}


def _posix_uses(path: Path) -> list[str]:
    """POSIX-only imports (not guarded by ``except ImportError``) and POSIX-only ``os.*``/``signal`` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id in
                                             ("ImportError", "ModuleNotFoundError", "AttributeError", "OSError")
                                             for h in node.handlers):
            guarded |= {id(n) for b in node.body for n in ast.walk(b)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in guarded:
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in POSIX_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and id(node) not in guarded and \
                (node.module or "").split(".")[0] in POSIX_ONLY_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and id(node) not in guarded:
            if node.value.id == "os" and node.attr in POSIX_ONLY_CALLS:
                found.append(f"os.{node.attr}")
            if node.value.id == "signal" and node.attr not in ("SIGINT", "default_int_handler"):
                found.append(f"signal.{node.attr}")
    return [f"{path.relative_to(REPO)}:{f}" for f in found]


def test_no_posix_only_call_on_the_uploaders_path() -> None:
    """The uploader's own modules hold none. Of the incloud_kernel modules it loads, ``deid.writer`` (the batch
    runner's kernel copy, ``copy_file_range``/``sendfile``, which the uploader never calls: it writes with pydicom)
    is the one known user, and it is guarded (``OSError``/``AttributeError`` fallbacks)."""
    _, own = _imported()
    uses = [u for f in own for u in _posix_uses(Path(f))]
    assert [u for u in uses if "incloud_uploader" in u] == []
    assert all("deid/writer.py" in u or "deid/runner.py" in u for u in uses), uses
