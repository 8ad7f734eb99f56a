"""``incloud deploy`` onto a small cluster of podman containers with systemd inside (tests/deploy_nodes.py): one
head node (hub, db, dicom, slurmctld, storage) and two compute nodes in a network of their own. A user logs in to
the hub over HTTPS (verified against the test's own CA), spawns a workstation that runs as a Slurm job on a
compute node, a study sent with storescu to the edge is archived on the shared storage, and a second playbook
run changes nothing. Everything is torn down after, on failure too.

Slurm runs with the role's cgroup settings (proctrack/cgroup, task/cgroup, cgroup.conf): a job sees only the
cores and memory it asked for, and one that exceeds its memory is killed. Ansible reaches the nodes over ssh with
pipelining, as on a real site.

Known difference from a real site (docs/deploy.md): the shared storage is a bind-mounted host folder, not NFS:
this machine's kernel has no NFS at all (CONFIG_NETWORK_FILESYSTEMS unset, no modules). The storage role's NFS
branch gets a partial check only: a dry run (``--check --diff``) on the nodes, its exports and mounts read off.
"""
from __future__ import annotations

import json
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
    for tool in ("podman", "runc", "debootstrap", "storescu", "openssl", "ssh", "ssh-keygen"):
        require_tool(tool)
    if not Path(sys.executable).with_name("ansible-playbook").exists():
        missing("ansible is not installed in this environment (pip install -c constraints.txt 'incloud[deploy]')")
    sys.path.insert(0, str(Path(__file__).parent))
    from deploy_nodes import WORK, Cluster, Node, ensure_image, ensure_ssh_image, ensure_venv_image

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    tag = ensure_ssh_image(ensure_venv_image(ensure_image(log=log), log=log), log=log)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    (work / "ssh").mkdir(mode=0o700)
    key = work / "ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    shared = work / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    net = f"10.89.{random.randint(100, 250)}"
    nodes = [Node("head", f"{net}.10", ["hub", "db", "dicom", "slurmctld", "storage"]),
             Node("c1", f"{net}.11", ["compute"], cgroups=True), Node("c2", f"{net}.12", ["compute"], cgroups=True)]
    cluster = Cluster(nodes, shared)
    try:
        cluster.start(tag, f"{net}.0/24", key)
        cluster.wait_booted()
        tls = make_tls(work, nodes[0].address)
        inventory = cluster.inventory(work / "inventory.json", {
            "incloud_site_name": "Deploy test site",
            "incloud_shared_storage": "bind",
            "incloud_venv_mode": "prebuilt",
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
        logs = WORK / "last-run-logs"  # the last run's playbook logs (task durations), kept to read after
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        for log_file in work.glob("*.log"):
            shutil.copy(log_file, logs)
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


def test_slurm_jobs_are_confined_by_cgroups(site: Site) -> None:
    """The role's cgroup.conf on the compute nodes: a job asking for 1 core and 100 MB runs in its own Slurm cgroup
    and sees one CPU and a 100 MB memory limit; a job touching more than its memory is killed (Out Of Memory)."""
    assert site.first.returncode == 0, "first deploy failed"
    conf = site.cluster.exec("c1", "cat", "/etc/slurm/cgroup.conf").stdout
    assert "ConstrainCores=yes" in conf and "ConstrainRAMSpace=yes" in conf, conf
    srun = ("head", "runuser", "-u", USER, "--", "srun", "--chdir=/tmp", "-c1", "--mem=100M")
    probe = ("cat /proc/self/cgroup; grep Cpus_allowed_list /proc/self/status; "
             "p=$(grep :memory: /proc/self/cgroup | cut -d: -f3); "
             "cat /sys/fs/cgroup/memory${p%/step_*}/memory.limit_in_bytes")  # the job's limit, above its steps
    r = site.cluster.exec(*srun, "sh", "-c", probe, check=False)
    assert r.returncode == 0, r.stderr[-800:]
    cgroups = dict(line.split(":", 2)[1:] for line in r.stdout.splitlines() if line[:1].isdigit() and ":" in line)
    for controller in ("cpuset", "memory", "freezer"):  # task/cgroup (cores, memory), proctrack/cgroup (freezer)
        assert re.match(rf"/slurm_c[12]/uid_{UID}/job_\d+/step_0", cgroups.get(controller, "")), r.stdout
    cpus = re.search(r"Cpus_allowed_list:\s*(\S+)", r.stdout)
    assert cpus and cpus.group(1) in ("0", "1"), r.stdout  # one of the node's two CPUs
    assert r.stdout.split()[-1] == str(100 * 2**20), r.stdout
    hog = site.cluster.exec(*srun, "python3", "-c", "b = bytearray(400 << 20)", check=False)
    assert hog.returncode != 0 and "Out Of Memory" in hog.stderr, (hog.returncode, hog.stderr[-800:])


def test_nfs_branch_partial_check(site: Site) -> None:
    """PARTIAL CHECK of the storage role's NFS branch: this kernel has no NFS (docs/deploy.md), so the branch runs
    as a dry run only (--check --diff, the role alone) and its rendered exports and fstab entries are read off.
    It does not prove that the export serves or that the mount mounts."""
    assert site.first.returncode == 0, "first deploy failed"
    playbook = site.work / "nfs-check.yml"
    playbook.write_text("- hosts: all\n  become: true\n  roles: [storage]\n")
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"), ANSIBLE_PIPELINING="True",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOCAL_TEMP=str(site.work / "tmp"))
    r = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(site.inventory),
                        str(playbook), "--check", "--diff", "-e", "incloud_shared_storage=nfs"],
                       capture_output=True, text=True, timeout=600, env=env)
    (site.work / "nfs-check.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    tasks = {t["task"]["name"].split(" : ")[-1]: t["hosts"] for t in json.loads(r.stdout)["plays"][0]["tasks"]}
    assert not [(n, h) for n, hs in tasks.items() for h, res in hs.items() if res.get("failed")]
    exports = tasks["Exports"]
    assert set(exports) == {"head"} or all(exports[h].get("skipped") for h in exports if h != "head"), exports
    rendered = exports["head"]["diff"][0]["after"]
    lines = [ln for ln in rendered.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["/srv/incloud *(rw,sync,no_subtree_check,root_squash)",
                     "/srv/incloud/home *(rw,sync,no_subtree_check,root_squash)"], rendered
    mounts = tasks["Mount the archive and the home folders"]
    assert mounts["head"].get("skipped"), "the storage host mounts nothing"
    for node in ("c1", "c2"):
        fstab = sorted(" ".join(m[k] for k in ("src", "name", "fstype", "opts", "dump", "passno"))
                       for m in mounts[node]["results"])  # the /etc/fstab lines ansible.posix.mount would write
        assert fstab == [f"{site.head}:/srv/incloud /srv/incloud nfs rw,hard,noatime,vers=4.2 0 0",
                         f"{site.head}:/srv/incloud/home /home nfs rw,hard,noatime,vers=4.2 0 0"], fstab
        assert all(m["changed"] for m in mounts[node]["results"])


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
