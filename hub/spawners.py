"""Spawner set-ups as data: embedded (local processes), cluster (Slurm via batchspawner behind ProfilesSpawner)
and docker (DockerSpawner, documented for single-host container sites).

One mechanism, small variations (as in dask-jobqueue): a profile in the site config is a dict with ``name``,
``display_name``, ``cores``, ``memory`` (Slurm units), ``walltime`` and optional ``options`` (extra ``#SBATCH``
line), ``prologue`` (shell run before the server) and ``container`` (``"podman"``: the server runs inside the
published workstation image as the user, through images/incloud-run; the spawner's ``container`` trait).
Failures must reach the user as one clear sentence (no system account, controller down, job ended before the
server started) and never hang past ``start_timeout``. Never put a token or password into a batch script or a
log line.
"""
from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from incloud_kernel.config import CONTAINER_RUNTIMES, Config, ContainerSection, HubSection
from incloud_kernel.errors import ConfigError
from incloud_kernel.pipeline import container as image

from hub.roles import workstation_token_scopes

# batchspawner and wrapspawner are imported lazily: the hub package must load (for docs, tests and
# `incloud hub config`) on a machine with only the embedded set-up.


class WorkstationError(RuntimeError):
    """A spawn failure with a message meant for the user: JupyterHub shows ``jupyterhub_message`` verbatim on
    the spawn page and in its REST API answers (a plain exception becomes "Internal Server Error")."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message


class NoSystemAccount(WorkstationError):
    """The hub user has no account on the cluster, so no job can run as them."""


def check_system_account(spawner: Any) -> None:
    """pre_spawn_hook: refuse, in one sentence, to spawn for a user without a system account.

    Without this, batchspawner fails with a bare ``KeyError`` from ``pwd.getpwnam`` deep in the spawn.
    """
    name = spawner.user.name
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise NoSystemAccount(
            f"user {name} has no system account on the cluster; an administrator must create it "
            "(useradd) before a workstation can start") from None


def slurm_spawner_class() -> type:
    """``batchspawner.SlurmSpawner`` with bounded commands and clear failure messages."""
    from batchspawner import JobStatus, SlurmSpawner
    from traitlets import List, Unicode, validate

    class IncloudSlurmSpawner(SlurmSpawner):
        """SlurmSpawner that notices a job that ended before its server reported a port, and (``container``)
        runs the server inside the published workstation image.

        Upstream waits for the port forever (until ``start_timeout``) even when the job is already gone.
        """

        container = Unicode("", config=True, help="'podman': the job runs the server inside the published "
                            "workstation image as the user (images/incloud-run); '': on the node's own venv")
        container_images = Unicode(ContainerSection.images, config=True,
                                   help="Folder images/publish.sh published the image into (container.images)")
        container_binds = List(Unicode(), config=True,
                               help="Host folders mounted at the same path besides the home (container.binds)")

        @validate("container")
        def _valid_container(self, proposal):  # type: ignore[no-untyped-def]
            if proposal["value"] not in CONTAINER_RUNTIMES:
                raise ValueError(f"container must be one of {CONTAINER_RUNTIMES}, not {proposal['value']!r}")
            return proposal["value"]

        def cmd_formatted_for_batch(self) -> str:
            """The batch script's command; in the image: the image's own venv, started by images/incloud-run
            (which passes the hub's token by variable name, never on the command line)."""
            if not self.container:
                return super().cmd_formatted_for_batch()
            venv = image.IMAGE_VENV
            server = [f"{venv}/bin/python", "-m", "hub.workstation", "--report-port",
                      f"{venv}/bin/jupyterhub-singleuser", *self.get_args()]
            return shlex.join(image.wrap(self.container_images, server, binds=self.container_binds))

        async def start(self):  # type: ignore[no-untyped-def]
            if self.container:
                try:
                    image.launcher(self.container_images)
                except ConfigError as exc:
                    raise WorkstationError(f"the {self.container} workstation image is not available: {exc}"
                                           ) from None
            self.port = 0
            self.ip = self.traits()["ip"].default_value
            if self.server:
                self.server.port = self.port
            try:
                await self.submit_batch_script()
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no output"
                raise WorkstationError(f"Slurm refused the workstation job: {reason[-300:]}") from None
            if not self.job_id:
                raise WorkstationError("Slurm refused the workstation job (no job id returned)")
            job = self.job_id
            # Give up a little before JupyterHub's start_timeout so the user reads why, not a bare timeout.
            deadline = time.monotonic() + max(self.start_timeout - 3, 1)
            while True:
                if time.monotonic() > deadline:
                    pending = await self.query_job_status() == JobStatus.PENDING
                    await self.cancel_batch_job()
                    self.clear_state()
                    raise WorkstationError(
                        f"workstation job {job} " + ("was still waiting for free cluster resources"
                                                     if pending else "started but its server did not report")
                        + f" after {self.start_timeout} s; it was cancelled, try again or a smaller profile")
                status = await self.query_job_status()
                if status == JobStatus.RUNNING and self.port:
                    break
                if status not in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
                    self.clear_state()
                    raise WorkstationError(
                        f"workstation job {job} ended before its server started "
                        f"(see jupyterhub_slurmspawner_{job}.log in your home folder)")
                if status == JobStatus.RUNNING and not self.ip:
                    self.ip = self.state_gethost()
                await asyncio.sleep(self.startup_poll_interval)
            self.ip = self.state_gethost()
            self.db.commit()
            self.log.info("workstation job %s started at %s:%s", job, self.ip, self.port)
            return self.ip, self.port

    return IncloudSlurmSpawner


def _venv_bin(hub: HubSection, name: str) -> str:
    return str(Path(hub.workstation_venv) / "bin" / name)


def profile_list(hub: HubSection, spawner_class: Any, images: ContainerSection | None = None,
                 ) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """``c.ProfilesSpawner.profiles`` from the site config's ``hub.profiles`` (validated); a container profile
    takes the published image's folder and binds from ``images`` (the ``[container]`` section)."""
    images = images or ContainerSection()
    out = []
    for p in hub.profiles:
        if not isinstance(p, dict) or not p.get("name"):
            raise ConfigError("hub.profiles: every profile needs a name")
        unknown = set(p) - {"name", "display_name", "cores", "memory", "walltime", "options", "prologue",
                            "container"}
        if unknown:
            raise ConfigError(f"hub.profiles[{p['name']}]: unknown key(s) {', '.join(sorted(unknown))}")
        conf = {"req_nprocs": str(p.get("cores", 1)), "req_memory": str(p.get("memory", "2G")),
                "req_runtime": str(p.get("walltime", "08:00:00")), "req_partition": hub.slurm_partition}
        if p.get("options"):
            conf["req_options"] = str(p["options"])
        if p.get("prologue"):
            conf["req_prologue"] = str(p["prologue"])
        if p.get("container"):
            if p["container"] not in CONTAINER_RUNTIMES:
                raise ConfigError(f"hub.profiles[{p['name']}]: container must be 'podman' (got {p['container']!r})")
            conf.update(container=str(p["container"]), container_images=images.images,
                        container_binds=list(images.binds))
        out.append((str(p.get("display_name") or p["name"]), str(p["name"]), spawner_class, conf))
    if not out:
        raise ConfigError("hub.profiles: cluster mode needs at least one profile")
    return out


#: Jupyter server extensions a workstation loads: JupyterLab, its terminals, Voila (the dashboards run in the
#: user's own server: docs/dashboards.md) and INCloud's archive sidebar (incloud_jupyterlab: docs/extension.md).
#: The environment also holds jupyter_lsp and the classic notebook (for other uses of the venv); loading them at
#: every spawn cost seconds (issue 7: spawn-to-ready). Passed as ``--ServerApp.jpserver_extensions=NAME=BOOL``
#: items, which override the venv's ``jupyter_server_config.d`` per extension and need no shell quoting in a batch
#: script.
WORKSTATION_EXTENSIONS: dict[str, bool] = {
    "jupyterlab": True, "jupyter_server_terminals": True,
    "voila.server_extension": True, "incloud_jupyterlab": True,
    "jupyter_lsp": False, "notebook": False, "notebook_shim": False,
}


def workstation_args() -> list[str]:
    """Single-user server arguments: only the extensions above; no PyPI-backed extension manager (a workstation
    cannot reach PyPI and must not install lab extensions; its start-up also imports aiohttp)."""
    return [*(f"--ServerApp.jpserver_extensions={name}={value}" for name, value in WORKSTATION_EXTENSIONS.items()),
            "--LabApp.extension_manager=readonly"]


def common(c: Any, cfg: Config, api_url: str) -> None:
    """Settings every spawner shares: the workstation's command, token scopes, environment and timeouts."""
    hub = cfg.hub
    # hub.workstation starts jupyterhub-singleuser in-process with a lazy rfc3987_syntax (see that module).
    c.Spawner.cmd = [_venv_bin(hub, "python"), "-m", "hub.workstation", _venv_bin(hub, "jupyterhub-singleuser")]
    c.Spawner.args = workstation_args()
    c.Spawner.default_url = "/lab"
    c.Spawner.start_timeout = hub.start_timeout
    c.Spawner.http_timeout = hub.start_timeout
    c.Spawner.server_token_scopes = workstation_token_scopes()
    # The workstation never holds database credentials: only the API URL (the token comes from the hub).
    c.Spawner.environment = {"INCLOUD_API_URL": api_url, "INCLOUD_API_SERVICE": "incloud-api"}
    c.Spawner.pre_spawn_hook = None


def embedded(c: Any, cfg: Config, api_url: str) -> None:
    """Workstations as local processes: isolated (each user's own system account, through ``hub.launcher``) when
    ``hub.launcher`` is set, else processes of the hub's own, non-root user (a laptop: one person, no isolation).

    A hub running as root without a launcher is refused: its workstations would be root shells for every user.
    """
    from hub.isolated import account_hook

    common(c, cfg, api_url)
    hub = cfg.hub
    if hub.launcher:
        launcher = ["sudo", "-n", hub.launcher]
        c.JupyterHub.spawner_class = "hub.isolated.IsolatedSpawner"
        c.IsolatedSpawner.launcher = launcher
        # The account exists from the first login on (useradd through the launcher); spawn checks it again.
        c.Authenticator.post_auth_hook = account_hook(launcher)
        return
    if os.geteuid() == 0:
        raise ConfigError("embedded mode refuses to run workstations as root: run the hub as the incloud user with "
                          "hub.launcher set (scripts/start.sh does both; see docs/hub.md)")
    c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
    c.SimpleLocalProcessSpawner.home_dir_template = str(state_dir(cfg) / "users" / "{username}")
    c.Spawner.notebook_dir = str(state_dir(cfg) / "users" / "{username}")
    c.LocalProcessSpawner.pre_spawn_hook = _make_user_dir(state_dir(cfg) / "users")


def _make_user_dir(root: Path):  # type: ignore[no-untyped-def]
    def hook(spawner: Any) -> None:
        (root / spawner.user.name).mkdir(parents=True, exist_ok=True)
    return hook


def cluster(c: Any, cfg: Config, api_url: str) -> None:
    """Workstations as Slurm jobs running as the user, sized by profile (batchspawner + ProfilesSpawner)."""
    hub = cfg.hub
    common(c, cfg, api_url)
    c.JupyterHub.spawner_class = "wrapspawner.ProfilesSpawner"
    c.ProfilesSpawner.profiles = profile_list(hub, slurm_spawner_class(), cfg.container)
    c.Spawner.pre_spawn_hook = check_system_account
    c.BatchSpawnerBase.exec_prefix = hub.exec_prefix
    # batchspawner runs "{batchspawner_singleuser_cmd} {cmd} {args}": the launcher reports the port itself.
    c.BatchSpawnerBase.batchspawner_singleuser_cmd = f"{_venv_bin(hub, 'python')} -m hub.workstation --report-port"
    c.Spawner.cmd = [_venv_bin(hub, "jupyterhub-singleuser")]
    c.BatchSpawnerBase.startup_poll_interval = 0.25
    # Bounded commands: a controller that is down must fail the spawn, not hang it.
    c.SlurmSpawner.batch_submit_cmd = "timeout 20 sbatch --parsable"
    c.SlurmSpawner.batch_query_cmd = "timeout 10 squeue -h -j {job_id} -o '%T %B'"
    c.SlurmSpawner.batch_cancel_cmd = "timeout 10 scancel {job_id}"
    # No `srun` step: the batch script is the workstation (saves a second scheduling round).
    c.SlurmSpawner.req_srun = ""
    slurm_conf = os.environ.get("SLURM_CONF")
    if slurm_conf:  # a non-default Slurm config (tests, several clusters): sbatch and the job must see it
        c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "SLURM_CONF"]
        c.SlurmSpawner.req_keepvars_extra = "SLURM_CONF"


def docker(c: Any, cfg: Config, api_url: str, image: str = "localhost/incloud-workstation:latest") -> None:
    """Workstations as containers of the workstation image (images/Containerfile) via DockerSpawner.

    Needs ``pip install dockerspawner`` and a Docker-compatible socket (Docker, or ``podman system service``
    with ``DOCKER_HOST``); see docs/hub.md. The hub must be reachable from containers (``hub_connect_ip``).
    """
    common(c, cfg, api_url)
    c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
    c.DockerSpawner.image = image
    c.DockerSpawner.remove = True
    c.DockerSpawner.cmd = ["python", "-m", "hub.workstation", "jupyterhub-singleuser"]
    c.DockerSpawner.notebook_dir = "/home/jovyan/work"
    c.DockerSpawner.volumes = {"incloud-{username}": "/home/jovyan/work"}
    c.JupyterHub.hub_ip = "0.0.0.0"


SETUPS = {"embedded": embedded, "cluster": cluster, "docker": docker}


def state_dir(cfg: Config) -> Path:
    """The hub's runtime folder: ``hub.state_dir`` or ``$INCLOUD_HOME/hub``."""
    return Path(cfg.hub.state_dir).expanduser() if cfg.hub.state_dir else cfg.home / "hub"


def proxy_command() -> str:
    """configurable-http-proxy from npm (scripts/lib/install.sh), else whatever PATH holds."""
    prefix = Path(os.environ.get("INCLOUD_NODE", "/opt/incloud/node")) / "node_modules" / ".bin"
    candidate = prefix / "configurable-http-proxy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("configurable-http-proxy") or "configurable-http-proxy"
