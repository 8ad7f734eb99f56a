"""``incloud deploy`` onto a small cluster of podman containers with systemd inside (tests/deploy_nodes.py): one
head node (hub, db, dicom, slurmctld, storage) and two compute nodes in a network of their own. A user logs in to
the hub over HTTPS (verified against the test's own CA), spawns a workstation that runs as a Slurm job on a
compute node, a study sent with storescu to the edge is archived on the shared storage, and a second playbook
run changes nothing. Everything is torn down after, on failure too.

Known differences from a real site (docs/deploy.md): the shared storage is a bind-mounted host folder, not NFS
(no in-kernel NFS server in an unprivileged container), and Slurm runs without cgroups (the containers' cgroup
controllers are read-only; the role's default is cgroups on).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import requests

from conftest import missing, require_tool

pytestmark = [pytest.mark.services, pytest.mark.timeout(1800)]

INCLOUD = str(Path(sys.executable).with_name("incloud"))
REPO = Path(__file__).resolve().parents[1]
USER, UID = "alice", 2001
PASSWORD = "deploy-test-Passw0rd!"


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of ansible-playbook's output: host -> {ok, changed, failed, ...}."""
    rows = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        rows[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return rows


def make_tls(folder: Path, address: str) -> dict[str, Path]:
    """A CA and a hub certificate for ``address`` signed by it (openssl, as a site's own CA would)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=120)

    ca_key, ca, key, csr, crt = (folder / n for n in ("ca.key", "ca.crt", "hub.key", "hub.csr", "hub.crt"))
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=INCloud test CA",
        "-keyout", str(ca_key), "-out", str(ca))
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=head", "-keyout", str(key), "-out", str(csr))
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName=IP:{address},DNS:head\n")
    ssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(crt))
    return {"ca": ca, "cert": crt, "key": key}


class Site(SimpleNamespace):
    """What the tests share: the cluster, its inventory, the hub URL, the CA, the outputs of the runs."""


def deploy(site: Site, name: str) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    r = subprocess.run([INCLOUD, "deploy", str(site.inventory)], capture_output=True, text=True, timeout=1200,
                       env=dict(os.environ, INCLOUD_DEPLOY_CACHE=str(site.work / "cache"),
                                # this checkout's roles and sources: the suite's `incloud` is an installed copy
                                # (scripts/test.sh), whose package folder is not a source tree
                                INCLOUD_SOURCE=str(Path(__file__).resolve().parents[1]),
                                # each task's duration in the log (deploy-N.log), to see where the time goes
                                ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks"))
    (site.work / f"{name}.log").write_text(r.stdout + r.stderr)
    print(f"{name}: exit {r.returncode} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return r


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        missing("the deploy test needs root (podman containers with systemd, debootstrap)")
    for tool in ("podman", "runc", "debootstrap", "storescu", "openssl"):
        require_tool(tool)
    if not Path(sys.executable).with_name("ansible-playbook").exists():
        missing("ansible is not installed in this environment (pip install -c constraints.txt 'incloud[deploy]')")
    sys.path.insert(0, str(Path(__file__).parent))
    from deploy_nodes import WORK, Cluster, Node, ensure_image, ensure_venv_image

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    tag = ensure_venv_image(ensure_image(log=log), log=log)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    shared = work / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    net = f"10.89.{random.randint(100, 250)}"
    nodes = [Node("head", f"{net}.10", ["hub", "db", "dicom", "slurmctld", "storage"]),
             Node("c1", f"{net}.11", ["compute"]), Node("c2", f"{net}.12", ["compute"])]
    cluster = Cluster(nodes, shared)
    try:
        cluster.start(tag, f"{net}.0/24")
        cluster.wait_booted()
        tls = make_tls(work, nodes[0].address)
        inventory = cluster.inventory(work / "inventory.json", {
            "incloud_site_name": "Deploy test site",
            "incloud_shared_storage": "bind",
            "incloud_venv_mode": "prebuilt",
            "incloud_slurm_cgroups": False,
            "incloud_slurm_node_cpus": 2,
            "incloud_slurm_node_memory": 2000,
            "incloud_tls_cert": str(tls["cert"]),
            "incloud_tls_key": str(tls["key"]),
            "incloud_hub_public_name": nodes[0].address,
            "incloud_users": [{"name": USER, "uid": UID}],
            "incloud_hub_profiles": [{"name": "small", "display_name": "Small", "cores": 1, "memory": "500M",
                                      "walltime": "00:30:00"}],
            "incloud_dicom_allowed_aets": ["SCANNER1"],
            "incloud_dicom_stable_age": 3,
            "incloud_ingest_reface": False,
        })
        s = Site(cluster=cluster, work=work, shared=shared, inventory=inventory, ca=str(tls["ca"]),
                 head=nodes[0].address, url=f"https://{nodes[0].address}:443")
        s.first = deploy(s, "deploy-1")
        yield s
    finally:
        start = time.monotonic()
        left = cluster.close()
        print(f"teardown: containers and network removed in {time.monotonic() - start:.0f} s", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        assert not left, f"could not remove {left}"


def test_first_run_deploys(site: Site) -> None:
    tail = "\n".join((site.first.stdout + site.first.stderr).splitlines()[-40:])
    assert site.first.returncode == 0, tail
    rows = recap(site.first.stdout)
    assert set(rows) == {"head", "c1", "c2"} and all(r["failed"] == 0 for r in rows.values()), rows
    for unit in ("postgresql", "munge", "slurmctld", "incloud-orthanc", "incloud-ingest", "incloud-hub"):
        state = site.cluster.exec("head", "systemctl", "is-active", unit, check=False).stdout.strip()
        assert state == "active", f"{unit} on head is {state}"
    for node in ("c1", "c2"):
        assert site.cluster.exec(node, "systemctl", "is-active", "slurmd", check=False).stdout.strip() == "active"
    # The nightly backup (role `backup`) is scheduled on the head node only.
    timers = site.cluster.exec("head", "systemctl", "list-timers", "--all", "--no-pager").stdout
    assert "incloud-backup.timer" in timers and "incloud-backup-check.timer" in timers, timers
    assert "incloud-backup.timer" not in site.cluster.exec("c1", "systemctl", "list-timers", "--all",
                                                           "--no-pager").stdout
    # Secrets: generated on the head node, the service user's alone, never in the playbook's output.
    listing = site.cluster.exec("head", "stat", "-c", "%U %a %n", "/etc/incloud/secrets/db_password",
                                "/etc/incloud/secrets/hub_admin_password", "/etc/incloud/secrets").stdout
    assert all(line.split()[0] == "incloud" and line.split()[1] in ("600", "700") for line in listing.splitlines())
    db_password = site.cluster.exec("head", "cat", "/etc/incloud/secrets/db_password").stdout.strip()
    assert len(db_password) == 64 and db_password not in site.first.stdout + site.first.stderr
    # The archive schema was migrated by Alembic (`incloud init`) into the deployed PostgreSQL.
    rev = site.cluster.exec("head", "runuser", "-u", "postgres", "--", "psql", "-tAd", "incloud", "-c",
                            "SELECT version_num FROM alembic_version").stdout.strip()
    assert rev, "no Alembic revision in the archive database"


def test_user_logs_in_over_tls_and_spawns_on_a_compute_node(site: Site) -> None:
    from services.hubstack import HubUser, spawn

    assert site.first.returncode == 0, "first deploy failed"
    stack = SimpleNamespace(url=site.url)
    # The hub answers HTTPS only with a certificate the test's CA signed (no unverified fallback).
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(site.url + "/hub/login", timeout=30)
    admin = HubUser(stack, "admin")
    admin.http.verify, admin.http.trust_env = site.ca, False  # the test's CA, not REQUESTS_CA_BUNDLE or a proxy
    admin.log_in(site.cluster.exec("head", "cat", "/etc/incloud/secrets/hub_admin_password").stdout.strip())
    assert admin.logged_in, "the admin could not log in with the generated password"
    user = HubUser(stack, USER)
    user.http.verify, user.http.trust_env = site.ca, False
    user.sign_up(PASSWORD)
    assert admin.http.get(f"{site.url}/hub/authorize/{USER}", timeout=30).status_code == 200
    r = admin.hub_api("POST", f"/users/{USER}")
    assert r.status_code in (201, 409), r.text
    user.log_in(PASSWORD)
    assert user.logged_in, "the user could not log in over TLS"
    result = spawn(user, "small", timeout=240)
    jobs = site.cluster.exec("head", "squeue", "-h", "-u", USER, "-o", "%N %T").stdout.split()
    assert result["ready"], (result, jobs, site.cluster.exec("head", "journalctl", "-u", "incloud-hub", "-n", "40",
                                                             "--no-pager", check=False).stdout)
    assert jobs and jobs[0] in ("c1", "c2") and jobs[1] == "RUNNING", jobs
    r = user.hub_api("DELETE", f"/users/{USER}/server")
    assert r.status_code in (202, 204), r.text


def test_study_sent_to_the_edge_is_archived_on_shared_storage(site: Site, tmp_path: Path) -> None:
    from dicom_edge import dcmtk
    from ingest_data import make_small_study

    assert site.first.returncode == 0, "first deploy failed"
    files = [f for fs in make_small_study(tmp_path / "study", nz=4, bold_volumes=2).values() for f in fs]
    r = dcmtk("storescu", "-aet", "SCANNER1", "-aec", "INCLOUD", site.head, "11112", *map(str, files))
    assert r.returncode == 0, r.stderr[-500:]
    archive = site.shared / "archive"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = [p for p in archive.rglob("*.nii.gz")] if archive.exists() else []
        if found:
            break
        time.sleep(2)
    log = site.cluster.exec("head", "journalctl", "-u", "incloud-ingest", "-n", "30", "--no-pager", check=False)
    assert found, f"nothing archived under {archive}: {log.stdout[-2000:]}"
    assert all(p.stat().st_uid == site_uid(site) for p in found)


def site_uid(site: Site) -> int:
    return int(site.cluster.exec("head", "id", "-u", "incloud").stdout.strip())


def test_second_run_changes_nothing(site: Site) -> None:
    assert site.first.returncode == 0, "first deploy failed"
    second = deploy(site, "deploy-2")
    assert second.returncode == 0, "\n".join(second.stdout.splitlines()[-40:])
    rows = recap(second.stdout)
    changed = {host: row["changed"] for host, row in rows.items() if row["changed"]}
    tasks = re.findall(r"^TASK \[(.+?)\].*\n(?:.*\n)*?changed: \[(\S+)\]", second.stdout, re.M)
    assert set(rows) == {"head", "c1", "c2"} and not changed, (changed, tasks[:10])
