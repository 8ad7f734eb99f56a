"""README command A's isolated hub (service user, root launcher, each workstation as the user's own account) with
a DEMO project, for the portal and embedded-hub tests and bench/bench_portal.py.

Lives in bench/ because the benchmarks may not import tests/ (and the product may import neither); tests reach it
through tests/isolated_hub.py. It never calls pytest: a missing service or tool goes to an ``on_missing`` callable
(default: RuntimeError), to which tests pass conftest's ``missing``. Every account, group, sudoers rule, process and
folder it makes carries a random prefix and is removed on exit; it never prints a password or token.
"""
from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import nibabel as nib
import numpy as np
import requests

from hubstack import HubUser, free_port, spawn, wait_for

REPO = Path(__file__).resolve().parents[1]
HUB_SH = REPO / "scripts" / "lib" / "hub.sh"
VENV = Path(sys.executable).parent.parent
CHROMIUM = "/usr/bin/chromium"
SHARED = "demo-" + secrets.token_hex(6)
ADMIN_PASSWORD = secrets.token_urlsafe(33)
SITE_NAME = "Portal test site"

#: What each demo user must see on the home page, from the issue's text (not computed from hub.roles): built
#: modules first, then the planned ones.
EXPECTED = {
    "admin": ["archive", "qc", "workstation", "reservation", "processing", "features", "reports", "upload",
              "workshops", "health"],
    "researcher": ["archive", "workstation", "reservation", "processing", "features"],
    "reviewer": ["archive", "qc", "workstation", "features"],  # the query API needs read only (hub.roles)
    "clinician": ["workstation", "reports", "upload"],
}
DASHBOARD = "voila/render/INCloud/dashboards/archive.ipynb"
#: INCloud's JupyterLab extension in this worktree and where its build (scripts/lib/install.sh) puts the lab part.
LABEXTENSION = REPO / "extensions" / "jupyterlab-incloud"
LABEXTENSION_BUILD = LABEXTENSION / "incloud_jupyterlab" / "labextension"


def nifti_bytes(shape: tuple[int, ...] = (16, 16, 16), tr: float | None = None, seed: int = 0) -> bytes:
    """A gzipped NIfTI-1 image in scanner space (1 mm voxels, identity affine); 4D images carry ``tr`` (s)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, size=shape, dtype=np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header["pixdim"][4] = tr
    return gzip.compress(img.to_bytes(), mtime=0)


def _refuse(reason: str) -> None:
    """The default ``on_missing`` outside pytest: stop with the reason."""
    raise RuntimeError(reason)


def hub_bash(script: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``script`` run by bash after sourcing scripts/lib/hub.sh (README command A's account and launcher helpers)."""
    return subprocess.run(["bash", "-c", f'source "{HUB_SH}"; {script}'], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _kill_processes_of(uids: set[int]) -> None:
    """SIGKILL every process still running as one of the accounts the isolated hub created (by pid)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


def require_isolated_hub(what: str, on_missing: Callable[[str], object] = _refuse) -> None:
    """What an isolated hub needs (root, sudo, useradd, the proxy): ``on_missing`` with one line otherwise."""
    from hub.spawners import proxy_command

    if os.geteuid() != 0:
        on_missing(f"{what} needs root (useradd, sudoers), as scripts/start.sh")
    for tool in ("sudo", "visudo", "useradd", "setpriv"):
        if shutil.which(tool) is None:
            on_missing(f"command {tool!r} not found (scripts/test.sh installs it)")
    if not os.path.exists(proxy_command()):
        on_missing("configurable-http-proxy not installed (scripts/lib/install.sh ensure_node_tools)")


def isolated_layout(letters: str, name: str) -> SimpleNamespace:
    """Names and places of one isolated hub: a random account prefix (``letters`` and six hex digits), its service
    user, workstation group and sudoers rule, a work folder other accounts can traverse (not under pytest's private
    0700 tmp) holding the site, the homes and the launcher, and four free loopback ports."""
    prefix = letters + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix=f"incloud-{name}-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    work.chmod(0o755)
    ports = [free_port() for _ in range(4)]
    return SimpleNamespace(prefix=prefix, svc=f"{prefix}svc", group=f"{prefix}ws", work=work, home=work / "site",
                           homes=work / "homes", wrapper=work / "sbin" / "incloud-workstation",
                           sudoers=Path(f"/etc/sudoers.d/{prefix}-incloud"), ports=ports,
                           url=f"http://127.0.0.1:{ports[0]}")


def hub_env(at: SimpleNamespace, admin: str, groups: dict[str, list[str]], extra: dict[str, str]) -> dict[str, str]:
    """The hub's environment: this process's without INCLOUD_/JUPYTERHUB_ variables, then the layout's places and
    ports, the shared-password authenticator (SHARED, ADMIN_PASSWORD for ``admin``), the hub groups, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INCLOUD_", "JUPYTERHUB_"))}
    env.update({
        "INCLOUD_HOME": str(at.home), "INCLOUD_HUB_BIND_URL": at.url,
        "INCLOUD_HUB_HUB_BIND_URL": f"http://127.0.0.1:{at.ports[1]}",
        "INCLOUD_HUB_PROXY_API_PORT": str(at.ports[2]), "INCLOUD_HUB_API_PORT": str(at.ports[3]),
        "INCLOUD_HUB_AUTHENTICATOR": "shared", "INCLOUD_HUB_SHARED_PASSWORD": SHARED,
        "INCLOUD_HUB_ADMIN_PASSWORD": ADMIN_PASSWORD, "INCLOUD_HUB_ADMIN_USERS": admin,
        "INCLOUD_HUB_GROUP_MEMBERS": json.dumps(groups), "INCLOUD_HUB_LAUNCHER": str(at.wrapper), **extra,
    })
    return env


def install_hub(at: SimpleNamespace, venv: Path, env: dict[str, str]) -> None:
    """As scripts/start.sh (scripts/lib/hub.sh): the service user owning the site, the root launcher with its one
    sudoers rule (workstations run ``venv``), and ``incloud init`` as the service user."""
    r = hub_bash(f'hub_service_user {at.svc} "{at.home}" && hub_launcher_install {at.svc} "{at.wrapper}" {at.group} '
                 f'"{at.homes}" "{venv}" "{at.sudoers}"', env)
    assert r.returncode == 0, r.stderr
    r = hub_bash(f'(as_service {at.svc} "{at.home}" "{VENV / "bin" / "incloud"}" init)', env)
    assert r.returncode == 0, r.stderr


def start_hub(at: SimpleNamespace, env: dict[str, str]) -> subprocess.Popen:
    """``incloud hub start`` as the service user, in its own session (so ``remove_isolated_hub`` stops all of it),
    its output in the work folder's hub.log."""
    incloud = str(VENV / "bin" / "incloud")
    with open(at.work / "hub.log", "wb") as log:
        return subprocess.Popen(["bash", "-c", f'source "{HUB_SH}"; as_service {at.svc} "{at.home}" "{incloud}" '
                                 "hub start"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_hub(proc: subprocess.Popen, at: SimpleNamespace) -> None:
    """Until the hub's API and the INCloud API service answer (the hub log's tail if the hub exits first)."""
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((at.work / "hub.log").read_text()[-3000:])
        return requests.get(at.url + "/hub/api/", timeout=5).status_code == 200
    wait_for(up, 90, "embedded hub")
    wait_for(lambda: requests.get(at.url + "/services/incloud-api/health", timeout=5).status_code == 401, 60,
             "INCloud API service")


def remove_isolated_hub(work: Path, proc: subprocess.Popen | None, users: list[str], svc: str, group: str,
                        sudoers: Path) -> None:
    """Stop an isolated hub started by a test and remove everything of it: processes of its accounts, the
    accounts, the group, the sudoers rule and the work folder (the hub log's tail is printed first)."""
    import pwd

    if (work / "hub.log").exists():  # shown by pytest when a test failed
        print("--- hub.log (tail) ---\n" + (work / "hub.log").read_text(errors="replace")[-6000:])
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
    uids = set()
    for name in [*users, svc]:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    _kill_processes_of(uids)
    for name in users:
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True, timeout=30)
    subprocess.run(["userdel", "-f", svc], capture_output=True, timeout=30)
    subprocess.run(["groupdel", group], capture_output=True, timeout=30)
    sudoers.unlink(missing_ok=True)
    Path(f"/etc/profile.d/{group}.sh").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)


def _share_with_worktree_labextension(folder: Path) -> None:
    """``folder/share``: the platform venv's (Jupyter's data by sys.prefix: lab assets, Voila templates, kernels),
    with this worktree's built lab extension (``LABEXTENSION_BUILD``, when built) in place of the venv's copy."""
    if not (LABEXTENSION_BUILD / "package.json").is_file():
        (folder / "share").symlink_to(VENV / "share")
        return
    jupyter = folder / "share" / "jupyter"
    jupyter.mkdir(parents=True)
    for entry in (VENV / "share").iterdir():
        if entry.name != "jupyter":
            (folder / "share" / entry.name).symlink_to(entry)
    for entry in (VENV / "share" / "jupyter").iterdir():
        if entry.name != "labextensions":
            (jupyter / entry.name).symlink_to(entry)
    # Copies, not links (a few MB): Voila serves lab extensions only from below their folder's real path.
    labextensions = jupyter / "labextensions"
    shutil.copytree(VENV / "share" / "jupyter" / "labextensions", labextensions,
                    ignore=lambda folder, names: ["@incloud"] if Path(folder).name == "labextensions" else [])
    shutil.copytree(LABEXTENSION_BUILD, labextensions / "@incloud" / "jupyterlab")


def workstation_venv(folder: Path) -> Path:
    """A venv (Debian's python, readable by all) that sees this worktree first (INCloud's code and its JupyterLab
    extension, server and built lab parts), then the platform venv."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = next((folder / "lib").glob("python3*/site-packages"))
    platform = next((VENV / "lib").glob("python3*/site-packages"))
    (site / "00-incloud-worktree.pth").write_text(
        f"{REPO}\n{LABEXTENSION}\nimport site; site.addsitedir({str(platform)!r})\n")
    _share_with_worktree_labextension(folder)
    for script in (VENV / "bin").iterdir():  # console scripts, run by this venv's python
        target = folder / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        head = script.read_bytes()[:200]
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            text = script.read_text().split("\n", 1)[1]
            target.write_text(f"#!{folder / 'bin' / 'python'}\n{text}")
            target.chmod(0o755)
    # Readable by the workstation accounts whatever the creating process's umask (the CLI's in-process tests
    # leave 077 behind): without this, their python and Jupyter data are out of reach.
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True, timeout=120)
    return folder


def seed_demo(env: dict[str, str]) -> dict[str, list[int]]:
    """DEMO (three participants: a real MNI head, small images, one DICOM instance) and OTHER, as the site
    console (before the hub starts). Returns series ids per project."""
    from pydicom.data import get_testdata_file

    from incloud_kernel.archive import projects, records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.config import load_config
    from incloud_kernel.site import Site

    site = Site.open(load_config(env=env), migrate=True)
    console = Actor.console("portal-test")
    head = next((VENV / "lib").glob("python3*/site-packages/nilearn/datasets/data/"
                                    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), None)
    ids: dict[str, list[int]] = {"DEMO": [], "OTHER": []}
    with records.transaction(site) as db:
        projects.create_project(db, console, "DEMO", "Demo cohort (synthetic)")
        projects.create_project(db, console, "OTHER", "Somebody else's study")
        members = [(who, "member") for who in ("researcher", *env.get("INCLOUD_TEST_EXTRA", "").split())]
        for who, role in (*members, ("reviewer", "collaborator"), ("clinician", "collaborator")):
            projects.grant(db, console, "DEMO", env["INCLOUD_TEST_PREFIX"] + who, role)
        projects.add_site_admin(db, console, env["INCLOUD_TEST_PREFIX"] + "admin")
        plan = []
        for n, label in enumerate(("001", "002", "003")):
            records.add_participant(db, console, "DEMO", label, sex="F" if n % 2 else "M", birth_year=1970 + 7 * n)
            ses = records.add_session(db, console, label, "01", scan_date=f"2026-0{n + 1}-15")
            t1 = records.add_series(db, console, ses, "anat", "T1w", qc_status=("pass", "pending", "fail")[n])
            bold = records.add_series(db, console, ses, "func", "bold", {"task": "rest"})
            plan += [(t1, "T1w", n), (bold, "bold", n)]
        records.add_participant(db, console, "OTHER", "x01")
        other = records.add_series(db, console, records.add_session(db, console, "x01", "01"), "anat", "T1w")
        db.flush()
        ids["OTHER"].append(other.id)
        ids["DEMO"] = [s.id for s, _, _ in plan]
        plan_ids = [(s.id, kind, n) for s, kind, n in plan]
        other_id = other.id
    for sid, kind, n in plan_ids:
        if kind == "T1w" and n == 0 and head is not None:
            files = {"nii.gz": head.read_bytes(), "dcm": Path(get_testdata_file("MR_small.dcm")).read_bytes()}
        elif kind == "T1w":
            files = {"nii.gz": nifti_bytes((32, 40, 36), seed=n)}
        else:
            files = {"nii.gz": nifti_bytes((16, 16, 12, 4), tr=2.0, seed=n)}
        records.add_files(site, console, sid, files)
    records.add_files(site, console, other_id, {"nii.gz": nifti_bytes(seed=9)})
    site.engine.dispose()
    return ids


@contextmanager
def portal_stack(extra_researchers: int = 0, on_missing: Callable[[str], object] = _refuse,
                 seed: Callable[[dict[str, str]], object] | None = None,
                 groups: dict[str, list[str]] | None = None,
                 settings: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """The isolated hub with DEMO (also for bench/bench_portal.py: ``extra_researchers`` more DEMO members,
    named ``r000``, ``r001``...); everything of it is removed on exit. A missing service or tool is reported
    through ``on_missing`` (tests pass conftest's ``missing``: fail under CI, skip elsewhere). ``seed(env)`` adds
    more to the site after DEMO, before the hub starts (the site's environment is ``env`` of the result).
    ``groups`` puts demo users into more role groups (role -> demo user keys, e.g. ``{"scanner_manager":
    ["clinician"]}``); ``settings`` adds site settings (``INCLOUD_*`` variables) to the hub's environment."""
    require_isolated_hub("the portal test", on_missing)
    if not os.path.exists(CHROMIUM):
        on_missing("Debian chromium not installed (/usr/bin/chromium)")
    at = isolated_layout("ip", "portal")
    names = {k: f"{at.prefix}{k}" for k in (*EXPECTED, "outsider", *(f"r{i:03d}" for i in range(extra_researchers)))}
    venv = workstation_venv(at.work / "venv")
    env = hub_env(at, names["admin"], {
        "admin": [names["admin"]],
        "researcher": [names["researcher"], names["outsider"], *(names[k] for k in names if k[1:].isdigit())],
        "qc_reviewer": [names["reviewer"]], "clinician": [names["clinician"]],
        **{role: [names[k] for k in keys] for role, keys in (groups or {}).items()}}, {
        "INCLOUD_SITE_NAME": SITE_NAME, "INCLOUD_HUB_WORKSTATION_VENV": str(venv), "INCLOUD_HUB_START_TIMEOUT": "120",
        **(settings or {})})
    proc: subprocess.Popen | None = None
    try:
        install_hub(at, venv, env)
        series = seed_demo({**env, "INCLOUD_TEST_PREFIX": at.prefix,
                            "INCLOUD_TEST_EXTRA": " ".join(k for k in names if k[1:].isdigit())})
        if seed is not None:
            seed({**env, "INCLOUD_TEST_PREFIX": at.prefix})  # demo user names are the prefix + their key
        r = hub_bash(f'hub_service_user {at.svc} "{at.home}"', env)  # the seeded files become the service user's
        assert r.returncode == 0, r.stderr
        proc = start_hub(at, env)
        wait_for_hub(proc, at)
        yield SimpleNamespace(url=at.url, names=names, work=at.work, series=series, prefix=at.prefix, homes=at.homes,
                              venv=venv, env=env)
    finally:
        remove_isolated_hub(at.work, proc, [*names.values()], at.svc, at.group, at.sudoers)


#: How the tests and benchmarks start Debian's Chromium (docs: /work/shared/recipes.md, "Browser tests").
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium() -> Iterator[object]:
    """Headless Chromium through Playwright (a ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser, portal, who: str):  # type: ignore[no-untyped-def]
    """A new browser context logged in through the hub's login form as demo user ``who``; returns its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(portal.url + "/hub/login")
    page.fill("#username_input", portal.names[who])
    page.fill("#password_input", ADMIN_PASSWORD if who == "admin" else SHARED)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home", timeout=60_000)
    return page


def hub_user(portal, who: str):  # type: ignore[no-untyped-def]
    user = HubUser(SimpleNamespace(url=portal.url), portal.names[who])  # type: ignore[arg-type]
    user.log_in(ADMIN_PASSWORD if who == "admin" else SHARED)
    return user


def running_workstation(portal, who: str):  # type: ignore[no-untyped-def]
    """The user's default workstation, started through the hub's REST API if it is not running."""
    user = hub_user(portal, who)
    if "" not in user.hub_api("GET", f"/users/{user.name}").json().get("servers", {}):
        result = spawn(user, timeout=180)
        assert result["ready"], result["message"]
    return user
