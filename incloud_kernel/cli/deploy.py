"""``incloud deploy INVENTORY``: install or update a whole site (hub, database, DICOM edge, Slurm, storage) with
the Ansible playbook in ``ansible/site.yml`` (docs/deploy.md).

It checks the inventory first (it parses, and each group the roles need has a host), packs INCloud's own source
into a reproducible tarball (same tree, same bytes, so the nodes reinstall the code only when it changed), and
runs ``ansible-playbook`` from this environment with its output on the terminal. It must never print a secret
(the roles mark those tasks ``no_log``) nor a traceback for a bad inventory: one line and a non-zero exit.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import click

from incloud_kernel.errors import ConfigError, IncloudError

#: Inventory groups the playbook needs, each with at least one host.
GROUPS = ("hub", "db", "dicom", "slurmctld", "compute", "storage")
#: What of the source tree the nodes need to install INCloud (pyproject's packages and their data).
SOURCE_PARTS = ("pyproject.toml", "constraints.txt", "README.md", "incloud_kernel", "hub", "voila_apps")


class DeployError(IncloudError):
    """The playbook ran and failed on a node; its own output above says where."""

    exit_code = 4


def source_root() -> Path:
    """The INCloud checkout holding ``ansible/`` and ``pyproject.toml`` (deploy runs from a source tree)."""
    import incloud_kernel

    root = Path(os.environ.get("INCLOUD_SOURCE") or Path(incloud_kernel.__file__).resolve().parents[1])
    if not (root / "ansible" / "site.yml").is_file() or not (root / "pyproject.toml").is_file():
        raise ConfigError(f"no INCloud source tree with ansible/site.yml at {root}: run deploy from a checkout "
                          "or set INCLOUD_SOURCE")
    return root


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        raise ConfigError(f"{name} is not installed in this environment (pip install -c constraints.txt "
                          "'incloud[deploy]')")
    return str(exe)


def check_inventory(inventory: Path) -> dict[str, list[str]]:
    """Hosts of each needed group, from ``ansible-inventory --list``; ConfigError (one line) if unusable."""
    if not inventory.is_file():
        raise ConfigError(f"inventory {inventory} does not exist")
    env = dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="True", ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="True",
               ANSIBLE_NOCOLOR="1")
    r = subprocess.run([_tool("ansible-inventory"), "-i", str(inventory), "--list"], capture_output=True,
                       text=True, env=env, timeout=120)
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "unreadable")
        why = re.sub(r"\s+", " ", why)[:300]
        raise ConfigError(f"inventory {inventory} is not usable: {why}")
    data = json.loads(r.stdout)

    def hosts(group: str) -> list[str]:
        found = list(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            found += hosts(child)
        return found

    groups = {g: hosts(g) for g in GROUPS}
    empty = [g for g, h in groups.items() if not h]
    if empty:
        raise ConfigError(f"inventory {inventory} has no host in group(s) {', '.join(empty)} "
                          f"(needed: {', '.join(GROUPS)}; see ansible/inventory.example.yml)")
    return groups


def source_archive(root: Path, out: Path) -> Path:
    """A gzip tarball of the source parts with fixed times and owners: the same tree gives the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for part in SOURCE_PARTS:
            base = root / part
            paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
            for path in paths:
                if "__pycache__" in path.parts or path.suffix == ".pyc" or not (path.is_file() or path.is_dir()):
                    continue
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
                if path.is_file():
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    data = gzip.compress(buf.getvalue(), mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_bytes() != data:
        out.write_bytes(data)
    return out


@click.command()
@click.argument("inventory", type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Dry run: show what would change (ansible --check --diff).")
@click.option("--limit", default="", help="Only these hosts or groups (ansible --limit).")
@click.option("--extra-vars", "-e", "extra", multiple=True, help="KEY=VALUE or @file, passed to ansible-playbook.")
def deploy(inventory: Path, check: bool, limit: str, extra: tuple[str, ...]) -> None:
    """Deploy INCloud onto the machines of INVENTORY (groups: hub, db, dicom, slurmctld, compute, storage)."""
    root = source_root()
    check_inventory(inventory)
    from platformdirs import user_cache_dir

    cache = Path(os.environ.get("INCLOUD_DEPLOY_CACHE") or user_cache_dir("incloud")) / "deploy"
    archive = source_archive(root, cache / "incloud-source.tar.gz")
    vars_file = cache / "deploy-vars.json"
    vars_file.write_text(json.dumps({"incloud_source_archive": str(archive),
                                     "incloud_constraints": str(root / "constraints.txt")}))
    args = [_tool("ansible-playbook"), "-i", str(inventory), str(root / "ansible" / "site.yml"),
            "-e", f"@{vars_file}"]
    for item in extra:
        args += ["-e", item]
    if check:
        args += ["--check", "--diff"]
    if limit:
        args += ["--limit", limit]
    env = dict(os.environ, ANSIBLE_GATHERING="smart", ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=str(root / "ansible" / "roles"), ANSIBLE_PIPELINING="True",
               ANSIBLE_LOCAL_TEMP=str(cache / "tmp"), ANSIBLE_DEPRECATION_WARNINGS="False")
    code = subprocess.run(args, env=env).returncode
    if code != 0:
        raise DeployError(f"the playbook failed (ansible-playbook exit {code}): see the failed task above")
