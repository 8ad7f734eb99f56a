"""Podman containers with systemd inside, standing in for a cluster's machines in the deploy test.

What it does: builds (once, cached under /var/tmp keyed by a hash of its inputs) a Debian bookworm node image
with systemd and every Debian package the Ansible roles install, so the playbook's apt tasks find them present
and nothing is downloaded during a test; starts a podman network of its own and one container per node
(``--systemd=always`` on runc, the only runtime that works on this machine's hybrid cgroups); tears them all
down. The platform venv is a copy of the host's /opt/incloud/venv in a second cached image layer (a live overlay
mount broke when the shared venv was reinstalled during a run); a thin third layer adds sshd, so Ansible reaches the
nodes over ssh as on a real site. Compute nodes can get writable cgroup controllers for Slurm (``Node.cgroups``).
The shared storage is one host folder bind-mounted at the same path on every node (this machine's kernel has no
NFS client or server at all, docs/deploy.md): the inventory says ``incloud_shared_storage: bind``.

What it must never do: touch podman storage other than its own (``--root`` under WORK), leave a container,
network or ssh connection behind after ``close()``, run a node ``--privileged`` (its systemd would write the host
kernel's sysctls), or run without root.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

WORK = Path(os.environ.get("INCLOUD_DEPLOY_WORK", "/var/tmp/incloud-deploy"))
VENV = Path("/opt/incloud/venv")
NODE_PREFIX = Path("/opt/incloud/node")

#: debootstrap --include: the base system with systemd.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3", "python3-venv", "python3-apt",
                 "ca-certificates", "iproute2", "procps", "acl", "openssl", "sudo"]
#: What the roles install, preinstalled so the test downloads nothing (also given to debootstrap --include).
NODE_PACKAGES = ["postgresql", "python3-psycopg2", "orthanc", "orthanc-postgresql", "orthanc-dicomweb", "munge",
                 "slurm-client", "slurmctld", "slurmd", "nfs-common", "nodejs"]
#: Installed in the thin top layer (ensure_ssh_image): sshd for Ansible's ssh connection, and the NFS server
#: package the storage role's NFS branch installs (its --check run in the deploy test needs it present).
LAYER_PACKAGES = ["openssh-server", "nfs-kernel-server"]
#: Units that cannot work in an unprivileged container; masked so systemd reports "running", not "degraded".
MASKED = ["proc-fs-nfsd.mount", "run-rpc_pipefs.mount", "nfs-server.service", "orthanc.service"]
#: Bump when the recipe below changes in a way the hash of its lists does not see.
RECIPE = 3


def podman_cmd() -> list[str]:
    """podman with this module's own storage and a containers.conf for runc and lowered ulimits (recipes.md)."""
    WORK.mkdir(parents=True, exist_ok=True)
    conf = WORK / "containers.conf"
    text = ('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            '[engine]\nruntime = "runc"\n')
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    os.environ["CONTAINERS_CONF"] = str(conf)
    return ["podman", "--root", str(WORK / "root"), "--runroot", str(WORK / "runroot"),
            "--storage-driver", "overlay"]


def run(*args: str, check: bool = True, timeout: float = 600,
        **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The command's result; on failure (``check``) a RuntimeError with the end of its error output."""
    r = subprocess.run(list(args), timeout=timeout, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... exit {r.returncode}: {(r.stderr or r.stdout)[-800:]}")
    return r


def image_tag() -> str:
    """The cached image's tag: a hash of everything the recipe puts in it."""
    key = json.dumps({"base": BASE_PACKAGES, "node": NODE_PACKAGES, "masked": MASKED, "recipe": RECIPE})
    return "localhost/incloud-deploy-node:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def ensure_image(log=print) -> str:  # type: ignore[no-untyped-def]
    """Build the node image unless this machine has it already; returns its tag.

    ``INCLOUD_DEPLOY_IMAGE`` names an image already in this module's storage to use instead (a site's own).
    """
    podman = podman_cmd()
    tag = os.environ.get("INCLOUD_DEPLOY_IMAGE") or image_tag()
    if run(*podman, "image", "exists", tag, check=False).returncode == 0:
        return tag
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=WORK))
    rootfs.chmod(0o755)  # it becomes the nodes' "/": mkdtemp's 0700 would lock every non-root user out
    try:
        log(f"building {tag}: debootstrap bookworm with systemd and the roles' packages")
        # debootstrap resolves simple dependencies only: it leaves orthanc (an alternative it cannot choose)
        # unconfigured, and apt finishes that below.
        include = "--include=" + ",".join(BASE_PACKAGES + NODE_PACKAGES)
        boot = subprocess.run(["debootstrap", "--variant=minbase", include, "bookworm", str(rootfs),
                               "http://deb.debian.org/debian"], capture_output=True, text=True, timeout=2400)
        code = boot.returncode
        if not (rootfs / "usr/sbin").is_dir():
            raise RuntimeError(f"debootstrap failed: {(boot.stderr or boot.stdout)[-800:]}")
        policy = rootfs / "usr/sbin/policy-rc.d"  # no service starts inside the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        if code != 0:  # packages left unconfigured by debootstrap's resolver (orthanc's boost alternative)
            log("apt-get -f install (debootstrap left packages unconfigured)")
            proc = rootfs / "proc"
            mounted = subprocess.run(["mountpoint", "-q", str(proc)]).returncode == 0
            if not mounted:  # munge's and others' maintainer scripts need /proc
                run("mount", "-t", "proc", "proc", str(proc))
            try:
                with open(WORK / "build-apt.log", "w") as out:
                    subprocess.run(["chroot", str(rootfs), "apt-get", "-f", "install", "-y", "-q",
                                    "--no-install-recommends"], env=env, timeout=1800, stdout=out,
                                   stderr=subprocess.STDOUT, check=True)
            finally:
                run("umount", "-l", str(proc), check=False)
        audit = run("chroot", str(rootfs), "dpkg", "--audit", env=env, check=False).stdout.strip()
        if audit:
            raise RuntimeError(f"node image: packages not configured: {audit[:500]}")
        run("chroot", str(rootfs), "apt-get", "clean", env=env)
        run("chroot", str(rootfs), "systemctl", "mask", *MASKED, env=env)
        policy.unlink()
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        log("podman import")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*podman, "import", "--change", 'CMD ["/sbin/init"]', "-", tag], stdin=tar.stdout,
                       check=True, capture_output=True, timeout=1800)
        tar.wait()
    finally:
        for sub in ("proc", "sys", "dev/pts"):  # debootstrap leaves its mounts behind when it fails
            subprocess.run(["umount", "-l", str(rootfs / sub)], capture_output=True)
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag


def _layer(base: str, tag: str, script: str, *run_args: str, log=print) -> str:  # type: ignore[no-untyped-def]
    """``tag``: ``base`` with ``script`` run in it (as root, systemd not booted) and committed; kept if present."""
    podman = podman_cmd()
    if run(*podman, "image", "exists", tag, check=False).returncode == 0:
        return tag
    log(f"building {tag}")
    name = "icd-layer-" + secrets.token_hex(3)
    try:
        run(*podman, "run", "--name", name, *run_args, base, "sh", "-c", script, timeout=1800)
        run(*podman, "commit", "-q", "--change", 'CMD ["/sbin/init"]', name, tag, timeout=1800)
    finally:
        run(*podman, "rm", "-f", name, check=False)
    return tag


def ensure_venv_image(base: str, log=print) -> str:  # type: ignore[no-untyped-def]
    """``base`` with a copy of the host's venv at /opt/incloud/venv (as images/build.sh does), keyed by the venv's
    installed distributions: a copy, not a live mount, because the host's venv may be reinstalled mid-test."""
    site = next(VENV.glob("lib/python3*/site-packages"))
    dists = sorted(p.name for p in site.glob("*.dist-info") if not p.name.startswith("incloud-"))
    tag = base.split(":")[0] + "-venv:" + hashlib.sha256(json.dumps([base, dists]).encode()).hexdigest()[:16]
    return _layer(base, tag, f"mkdir -p {VENV.parent} && cp -a /host-venv {VENV} && chmod -R a+rX {VENV}",
                  "--network", "none", "-v", f"{VENV}:/host-venv:ro", log=log)


def ensure_ssh_image(base: str, log=print) -> str:  # type: ignore[no-untyped-def]
    """``base`` with sshd (Ansible's ssh connection with pipelining costs a fraction of a second per task, the
    podman connection 2 to 4 s) and ``LAYER_PACKAGES``: a thin top layer (about a minute), so adding them did not
    mean rebuilding the two big layers under it."""
    tag = base.split(":")[0] + "-ssh:" + hashlib.sha256(json.dumps([base, LAYER_PACKAGES]).encode()).hexdigest()[:16]
    script = ("set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -q; "
              # no service starts in the build container (policy-rc.d, as in ensure_image)
              "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; "
              f"apt-get install -y -q --no-install-recommends {' '.join(LAYER_PACKAGES)}; "
              f"systemctl mask {' '.join(MASKED)}; rm /usr/sbin/policy-rc.d; apt-get clean; "
              "rm -rf /var/lib/apt/lists/*; mkdir -p /var/lib/apt/lists/partial")
    return _layer(base, tag, script, log=log)


#: Cgroup v1 controllers Slurm's cgroup plugins write (task/cgroup: cpuset, memory; proctrack/cgroup: freezer).
SLURM_CONTROLLERS = ("cpuset", "memory", "freezer")


@dataclass
class Node:
    name: str
    address: str
    groups: list[str]
    #: Writable cgroup controllers for slurmd's cgroup plugins: its own cgroup namespace (it sees only its own
    #: subtree of the host's hierarchy), CAP_SYS_ADMIN to remount SLURM_CONTROLLERS read-write there and
    #: CAP_SYS_NICE for task/affinity. Not --privileged: that also makes /proc/sys writable, and the node's
    #: systemd-sysctl would then set the host kernel's global sysctls.
    cgroups: bool = False


@dataclass
class Cluster:
    """One podman network and its node containers; ``close()`` removes them all (idempotent)."""

    nodes: list[Node]
    shared: Path
    podman: list[str] = field(default_factory=podman_cmd)
    prefix: str = field(default_factory=lambda: "icd" + secrets.token_hex(3))
    started: list[str] = field(default_factory=list)
    network: str = ""
    ssh_key: Path | None = None

    def container(self, node: Node) -> str:
        return f"{self.prefix}-{node.name}"

    def start(self, tag: str, subnet: str, ssh_key: Path) -> None:
        """Network and nodes; root logs in to each over ssh with ``ssh_key`` (its ``.pub`` is authorized)."""
        self.network = self.prefix + "-net"
        self.ssh_key = ssh_key
        run(*self.podman, "network", "create", "--subnet", subnet, self.network)
        hosts = [f"--add-host={n.name}:{n.address}" for n in self.nodes]
        for node in self.nodes:
            name = self.container(node)
            confined = ["--cgroupns", "private", "--cap-add", "SYS_ADMIN,SYS_NICE"] if node.cgroups else []
            run(*self.podman, "run", "-d", "--name", name, "--hostname", node.name, "--network", self.network,
                "--ip", node.address, *hosts, "--systemd=always", *confined,
                "-v", f"{NODE_PREFIX}:{NODE_PREFIX}:ro", "-v", f"{ssh_key}.pub:/root/.ssh/authorized_keys:ro",
                "-v", f"{self.shared}:/srv/incloud", tag, "/sbin/init")
            self.started.append(name)
            if node.cgroups:  # runc mounts a container's v1 controllers read-only; a real node's are writable
                self.exec(node.name, "sh", "-ec", " ".join(
                    f"mount -o remount,bind,rw /sys/fs/cgroup/{c};" for c in SLURM_CONTROLLERS))

    def exec(self, node: str, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(*self.podman, "exec", f"{self.prefix}-{node}", *cmd, check=check, timeout=timeout)

    def wait_booted(self, timeout: float = 120) -> None:
        """Until systemd in every node reports running (or degraded: a unit the test does not use failed)."""
        import time

        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                state = self.exec(node.name, "systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"systemd in {node.name} did not finish booting: {state}")
                time.sleep(1)

    def inventory(self, path: Path, extra_vars: dict) -> Path:  # type: ignore[type-arg]
        """An Ansible inventory reaching the nodes over ssh as root, as on a real site (``incloud deploy`` turns
        pipelining on; one persistent connection per node, its socket under ``control_dir``)."""
        groups: dict[str, dict] = {}  # type: ignore[type-arg]
        for node in self.nodes:
            for group in node.groups:
                groups.setdefault(group, {"hosts": {}})["hosts"][node.name] = None
        hostvars = {n.name: {"ansible_host": n.address, "incloud_address": n.address} for n in self.nodes}
        data = {"all": {"hosts": hostvars, "children": groups, "vars": {
            "ansible_connection": "ssh", "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.ssh_key), "ansible_control_path_dir": str(self.control_dir),
            # the nodes' host keys are the image's and the addresses are reused: no known_hosts entries
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                       "-o LogLevel=ERROR",
            **extra_vars}}}
        path.write_text(json.dumps(data, indent=2))
        return path

    @property
    def control_dir(self) -> Path:
        return self.ssh_key.parent / "ssh-cp"

    def close(self) -> list[str]:
        """Remove every container and the network; returns what could not be removed (empty when clean)."""
        left: list[str] = []
        # Ansible's persistent ssh connections (ControlPersist) would outlive the nodes for a minute.
        for sock in (self.control_dir.glob("*") if self.ssh_key else []):
            run("ssh", "-o", f"ControlPath={sock}", "-O", "exit", "node", check=False, timeout=30)

        def remove(*args: str) -> bool:
            try:
                return run(*self.podman, *args, check=False, timeout=600).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        # All nodes at once and without a stop timeout: a graceful systemd shutdown of each node took minutes
        # on a loaded machine, and nothing in a test node needs to be kept.
        # A node whose processes have not all died yet ("given PIDs did not die") is tried once more.
        if self.started and not remove("rm", "-f", "-t", "0", *self.started):
            rest = [n for n in self.started if run(*self.podman, "container", "exists", n, check=False).returncode == 0]
            if rest and not remove("rm", "-f", "-t", "0", *rest):
                left += [n for n in rest if run(*self.podman, "container", "exists", n, check=False).returncode == 0]
        self.started.clear()
        if self.network:
            if not remove("network", "rm", "-f", self.network):
                left.append(self.network)
            self.network = ""
        return left
