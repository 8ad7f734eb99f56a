"""``incloud deploy`` without a cluster: a bad inventory is one line of error and a non-zero exit (no traceback),
the source tarball the nodes install is byte-for-byte reproducible, and the playbook passes Ansible's syntax
check with every role it names."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing

INCLOUD = str(Path(sys.executable).with_name("incloud"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def ansible_installed() -> None:
    if not Path(sys.executable).with_name("ansible-playbook").exists():
        missing("ansible is not installed in this environment (pip install -c constraints.txt 'incloud[deploy]')")


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, "deploy", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, INCLOUD_SOURCE=str(REPO)))


@pytest.mark.parametrize("text, reason", [
    ("all:\n  children:\n    hub:\n      hosts: {h1: }\n",
     "has no host in group(s) db, dicom, slurmctld, compute, storage"),
    ("all: [unclosed\n", "is not usable"),
    (None, "does not exist"),
])
def test_bad_inventory_is_one_line(tmp_path: Path, text: str | None, reason: str) -> None:
    inventory = tmp_path / "inventory.yml"
    if text is not None:
        inventory.write_text(text)
    r = deploy(str(inventory))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: inventory") and reason in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_source_archive_is_reproducible(tmp_path: Path) -> None:
    from incloud_kernel.cli.deploy import source_archive

    a = source_archive(REPO, tmp_path / "a.tar.gz").read_bytes()
    b = source_archive(REPO, tmp_path / "b.tar.gz").read_bytes()
    assert a == b
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(a)).getnames()
    assert "pyproject.toml" in names and "incloud_kernel/cli/deploy.py" in names
    assert "hub/jupyterhub_config.py" in names and not any("__pycache__" in n for n in names)


def test_playbook_syntax_and_roles() -> None:
    exe = str(Path(sys.executable).with_name("ansible-playbook"))
    r = subprocess.run([exe, "--syntax-check", "-i", str(REPO / "ansible" / "inventory.example.yml"),
                        str(REPO / "ansible" / "site.yml")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles")))
    assert r.returncode == 0, r.stdout + r.stderr
    # Every collection the roles use is listed in requirements.yml and bundled in the pinned ansible package.
    import yaml

    listed = {c["name"] for c in yaml.safe_load((REPO / "ansible" / "requirements.yml").read_text())["collections"]}
    used = set()
    for path in (REPO / "ansible").rglob("*.yml"):
        for word in path.read_text().split():
            parts = word.rstrip(":").split(".")
            if len(parts) == 3 and parts[0] in ("containers", "community", "ansible") and parts[1] != "builtin":
                used.add(".".join(parts[:2]))
    assert used <= listed, used - listed
    import ansible_collections.ansible.posix  # noqa: F401  (bundled, no Galaxy)


def test_venv_role_makes_its_folder_before_writing_into_it() -> None:
    """The pip mode's first write is /opt/incloud/constraints.txt: on a fresh node (no /opt/incloud yet) it failed
    with "Destination directory /opt/incloud does not exist" until a folder task came first (found in the one-off
    pip-mode run, docs/deploy.md; the deploy test's image has /opt/incloud already, so it cannot see this)."""
    import yaml

    def flat(tasks: list[dict]) -> list[dict]:  # type: ignore[type-arg]
        return [t for task in tasks for t in (flat(task["block"]) if "block" in task else [task])]

    tasks = flat(yaml.safe_load((REPO / "ansible/roles/venv/tasks/main.yml").read_text()))
    made: set[str] = set()
    for task in tasks:
        args = task.get("ansible.builtin.file") or {}
        if args.get("state") == "directory":
            path = Path(args["path"])
            made |= {str(path), *map(str, path.parents)}
        dest = (task.get("ansible.builtin.copy") or task.get("ansible.builtin.template") or {}).get("dest")
        if dest:
            assert str(Path(dest).parent) in made, f"task {task['name']!r} writes {dest} before its folder exists"
