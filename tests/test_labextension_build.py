"""The install step of INCloud's JupyterLab extension (scripts/lib/install.sh ``ensure_labextension``, issue 13
item 4): it rebuilds when a source changes and does nothing (no jlpm, no npm, files untouched) when nothing did.
The build itself (jlpm, npm packages) runs in scripts/test.sh before the suite; tests never reach npm."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import missing

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "extensions" / "jupyterlab-incloud"
INSTALL_SH = REPO / "scripts" / "lib" / "install.sh"


def bash(script: str, repo: Path = REPO, venv: str = "/nonexistent-venv") -> subprocess.CompletedProcess:
    """``script`` after sourcing install.sh, with ``REPO`` and ``INCLOUD_VENV`` as given (a venv without jlpm:
    anything that tries to build fails)."""
    return subprocess.run(["bash", "-c", f'INCLOUD_VENV={venv}; source "{INSTALL_SH}"; REPO="{repo}"; {script}'],
                          capture_output=True, text=True, timeout=60)


def test_sources_hash_follows_the_sources_not_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo" / "extensions" / "jupyterlab-incloud"
    shutil.copytree(EXTENSION, copy, ignore=shutil.ignore_patterns("node_modules", "lib", ".yarn", "labextension"))
    first = bash("labextension_sources_hash", tmp_path / "repo")
    assert first.returncode == 0 and len(first.stdout.strip()) == 16, first.stderr
    (copy / "incloud_jupyterlab" / "labextension" / "static").mkdir(parents=True)
    (copy / "incloud_jupyterlab" / "labextension" / "static" / "style.js").write_text("built\n")
    assert bash("labextension_sources_hash", tmp_path / "repo").stdout == first.stdout  # the build is no input
    index = copy / "src" / "index.ts"
    index.write_text(index.read_text() + "\n// changed\n")
    assert bash("labextension_sources_hash", tmp_path / "repo").stdout != first.stdout


def test_build_step_does_nothing_when_nothing_changed() -> None:
    stamp = EXTENSION / ".incloud-build-stamp"
    current = bash("labextension_sources_hash").stdout.strip()
    if not stamp.is_file() or stamp.read_text().strip() != current:
        missing("the JupyterLab extension is not built from these sources (scripts/lib/install.sh "
                "ensure_labextension; scripts/test.sh does it)")
    built = sorted((EXTENSION / "incloud_jupyterlab" / "labextension").rglob("*"))
    before = [(p, p.stat().st_mtime_ns) for p in built]
    run = bash("labextension_build")
    assert run.returncode == 0, run.stderr  # with no jlpm in reach: it did not try to build
    assert "building" not in run.stderr
    assert [(p, p.stat().st_mtime_ns) for p in built] == before


def test_build_step_refuses_in_one_line_without_jupyterlab(tmp_path: Path) -> None:
    copy = tmp_path / "repo" / "extensions" / "jupyterlab-incloud"
    shutil.copytree(EXTENSION, copy, ignore=shutil.ignore_patterns("node_modules", "lib", ".yarn", "labextension",
                                                                   ".incloud-build-stamp"))
    run = bash("labextension_build", tmp_path / "repo")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["[incloud] error: jlpm is missing from /nonexistent-venv "
                                               "(JupyterLab is not installed)"]
