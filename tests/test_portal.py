"""The INCloud portal in a real browser (issue 13 items 1 to 3): README command A's isolated hub (service user, root
launcher, each workstation as the user's own account) with a DEMO project, driven by headless Chromium.

- each demo user logs in and sees exactly the modules their roles allow, filled with live status (screenshots in
  the test's output folder, ``portal-shots``);
- the archive dashboard (Voila in the user's own workstation) lists DEMO's series for a member, nothing for a
  researcher who is not a member;
- a new workstation holds the example notebooks, and the getting-started one runs top to bottom in it
  (``jupyter nbconvert --execute`` in the user's JupyterLab terminal, as the user, with the user's token);
- ``client.load`` / ``client.load_dicom`` stream images with the user's token and refuse a non-member.

Workstations run this worktree's code: a small venv whose only content is a ``.pth`` that puts the worktree before
the platform venv (the launcher gives workstations no PYTHONPATH).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import requests

from conftest import missing

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
CHROMIUM = "/usr/bin/chromium"
SHARED = "demo-" + secrets.token_hex(6)
ADMIN_PASSWORD = secrets.token_urlsafe(33)
SITE_NAME = "Portal test site"

#: What each demo user must see on the home page, from the issue's text (not computed from hub.roles): built
#: modules first, then the planned ones.
EXPECTED = {
    "admin": ["archive", "qc", "workstation", "health", "reservation", "processing", "features", "reports",
              "upload", "workshops"],
    "researcher": ["archive", "workstation", "reservation", "processing", "features"],
    "reviewer": ["archive", "qc", "workstation"],
    "clinician": ["workstation", "reports", "upload"],
}
DASHBOARD = "voila/render/INCloud/dashboards/archive.ipynb"


def workstation_venv(folder: Path) -> Path:
    """A venv (Debian's python, readable by all) that sees this worktree first, then the platform venv."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = next((folder / "lib").glob("python3*/site-packages"))
    platform = next((VENV / "lib").glob("python3*/site-packages"))
    (site / "00-incloud-worktree.pth").write_text(f"{REPO}\nimport site; site.addsitedir({str(platform)!r})\n")
    (folder / "share").symlink_to(VENV / "share")  # Jupyter's data (lab assets, Voila templates) by sys.prefix
    for script in (VENV / "bin").iterdir():  # console scripts, run by this venv's python
        target = folder / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        head = script.read_bytes()[:200]
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            text = script.read_text().split("\n", 1)[1]
            target.write_text(f"#!{folder / 'bin' / 'python'}\n{text}")
            target.chmod(0o755)
    return folder


def seed_demo(env: dict[str, str]) -> dict[str, list[int]]:
    """DEMO (three participants: a real MNI head, small images, one DICOM instance) and OTHER, as the site
    console (before the hub starts). Returns series ids per project."""
    from archive_data import nifti_bytes
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


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack() as stack:
        yield stack


@contextmanager
def portal_stack(extra_researchers: int = 0) -> Iterator[SimpleNamespace]:
    """The isolated hub with DEMO (also for bench/bench_portal.py: ``extra_researchers`` more DEMO members,
    named ``r000``, ``r001``...); everything of it is removed on exit."""
    from services.hubstack import free_port, wait_for
    from test_hub_embedded import _bash, remove_isolated_hub, require_isolated_hub

    require_isolated_hub("the portal test")
    if not os.path.exists(CHROMIUM):
        missing("Debian chromium not installed (/usr/bin/chromium)")
    prefix = "ip" + secrets.token_hex(3)
    svc, group = f"{prefix}svc", f"{prefix}ws"
    work = Path(tempfile.mkdtemp(prefix="incloud-portal-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    work.chmod(0o755)
    home, homes, wrapper = work / "site", work / "homes", work / "sbin" / "incloud-workstation"
    sudoers = Path(f"/etc/sudoers.d/{prefix}-incloud")
    ports = [free_port() for _ in range(4)]
    url = f"http://127.0.0.1:{ports[0]}"
    names = {k: f"{prefix}{k}" for k in (*EXPECTED, "outsider", *(f"r{i:03d}" for i in range(extra_researchers)))}
    venv = workstation_venv(work / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INCLOUD_", "JUPYTERHUB_"))}
    env.update({
        "INCLOUD_HOME": str(home), "INCLOUD_SITE_NAME": SITE_NAME, "INCLOUD_HUB_BIND_URL": url,
        "INCLOUD_HUB_HUB_BIND_URL": f"http://127.0.0.1:{ports[1]}",
        "INCLOUD_HUB_PROXY_API_PORT": str(ports[2]), "INCLOUD_HUB_API_PORT": str(ports[3]),
        "INCLOUD_HUB_AUTHENTICATOR": "shared", "INCLOUD_HUB_SHARED_PASSWORD": SHARED,
        "INCLOUD_HUB_ADMIN_PASSWORD": ADMIN_PASSWORD, "INCLOUD_HUB_ADMIN_USERS": names["admin"],
        "INCLOUD_HUB_GROUP_MEMBERS": json.dumps({
            "admin": [names["admin"]],
            "researcher": [names["researcher"], names["outsider"], *(names[k] for k in names if k[1:].isdigit())],
            "qc_reviewer": [names["reviewer"]], "clinician": [names["clinician"]]}),
        "INCLOUD_HUB_LAUNCHER": str(wrapper), "INCLOUD_HUB_WORKSTATION_VENV": str(venv),
        "INCLOUD_HUB_START_TIMEOUT": "120",
    })
    incloud = str(VENV / "bin" / "incloud")
    proc = None
    try:
        r = _bash(f'hub_service_user {svc} "{home}" && hub_launcher_install {svc} "{wrapper}" {group} "{homes}" '
                  f'"{venv}" "{sudoers}"', env)
        assert r.returncode == 0, r.stderr
        r = _bash(f'(as_service {svc} "{home}" "{incloud}" init)', env)
        assert r.returncode == 0, r.stderr
        series = seed_demo({**env, "INCLOUD_TEST_PREFIX": prefix,
                            "INCLOUD_TEST_EXTRA": " ".join(k for k in names if k[1:].isdigit())})
        r = _bash(f'hub_service_user {svc} "{home}"', env)  # the seeded files become the service user's
        assert r.returncode == 0, r.stderr
        log = open(work / "hub.log", "wb")
        proc = subprocess.Popen(["bash", "-c", f'source "{REPO}/scripts/lib/hub.sh"; as_service {svc} "{home}" '
                                 f'"{incloud}" hub start'], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError((work / "hub.log").read_text()[-3000:])
            return requests.get(url + "/hub/api/", timeout=5).status_code == 200
        wait_for(up, 90, "embedded hub")
        wait_for(lambda: requests.get(url + "/services/incloud-api/health", timeout=5).status_code == 401, 60,
                 "INCloud API service")
        yield SimpleNamespace(url=url, names=names, work=work, series=series, prefix=prefix, homes=homes,
                              venv=venv)
    finally:
        remove_isolated_hub(work, proc, [*names.values()], svc, group, sudoers)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("INCLOUD_PORTAL_SHOTS") or tmp_path_factory.mktemp("portal-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    from services.hubstack import HubUser

    user = HubUser(SimpleNamespace(url=portal.url), portal.names[who])  # type: ignore[arg-type]
    user.log_in(ADMIN_PASSWORD if who == "admin" else SHARED)
    return user


def running_workstation(portal, who: str):  # type: ignore[no-untyped-def]
    """The user's default workstation, started through the hub's REST API if it is not running."""
    from services.hubstack import spawn

    user = hub_user(portal, who)
    if "" not in user.hub_api("GET", f"/users/{user.name}").json().get("servers", {}):
        result = spawn(user, timeout=180)
        assert result["ready"], result["message"]
    return user


@pytest.mark.parametrize("who", list(EXPECTED))
def test_each_demo_user_sees_exactly_the_modules_their_roles_allow(portal, browser, shots, who) -> None:
    page = log_in(browser, portal, who)
    page.wait_for_selector(".ic-home[data-status='ready']", timeout=60_000)
    shown = page.eval_on_selector_all("[data-module]", "els => els.map(e => e.dataset.module)")
    assert shown == EXPECTED[who]
    assert SITE_NAME in page.inner_text("#incloud-brand") and "INCloud" in page.inner_text("#incloud-brand")
    built = page.eval_on_selector_all(".ic-card:not(.ic-planned)", "els => els.map(e => e.dataset.module)")
    assert set(built) == {"archive", "qc", "workstation", "health"} & set(EXPECTED[who])
    if "archive" in shown:  # live status from the API, as this user: DEMO's 6 series (admin: OTHER's too)
        stats = page.inner_text("[data-live='archive'] .ic-stats")
        assert ("7" if who == "admin" else "6") + "\nseries" in stats, stats
    if "qc" in shown:
        assert page.inner_text("[data-live='qc'] .ic-stat b") == ("5" if who == "admin" else "4")
    if "health" in shown:
        assert "database" in page.inner_text("[data-live='health']")
    assert f"ssh -p 8022 {portal.names[who]}@127.0.0.1" in page.inner_html("[data-module='workstation']")
    page.screenshot(path=str(shots / f"home-{who}.png"), full_page=True)
    page.context.close()


def test_archive_dashboard_lists_demo_for_a_member_and_nothing_for_a_non_member(portal, browser, shots) -> None:
    for who in ("researcher", "outsider"):
        running_workstation(portal, who)
        page = log_in(browser, portal, who)
        assert page.get_attribute("a[data-dashboard='archive']", "href").endswith(DASHBOARD)
        page.click("a[data-dashboard='archive']")
        try:
            if who == "researcher":
                page.wait_for_selector("tr.series-row", timeout=120_000)
                page.wait_for_function("() => [...document.querySelectorAll('img.widget-image')]"
                                       ".some(i => i.naturalWidth > 0)", timeout=60_000)  # the viewer's slice
                rows = page.eval_on_selector_all("tr.series-row", "els => els.map(e => Number(e.dataset.series))")
                assert sorted(rows) == sorted(portal.series["DEMO"])
                assert page.locator("text=You are not a member").count() == 0
            else:
                page.wait_for_selector("#no-projects", timeout=120_000)
                assert page.locator("tr.series-row").count() == 0
        except Exception:
            log = portal.homes / portal.names[who] / ".incloud-workstation.log"
            print(f"--- {who}'s workstation log ---\n" + log.read_text(errors="replace")[-5000:])
            print(f"--- {who}'s page ---\n" + page.content()[-5000:])
            raise
        assert f"/user/{portal.names[who]}/{DASHBOARD}" in page.url
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / f"dashboard-{who}.png"), full_page=True)
        page.context.close()


def test_new_workstation_holds_the_examples_and_getting_started_runs(portal) -> None:
    from services.kernels import run_in_terminal

    user = running_workstation(portal, "researcher")
    token = user.new_token(expires_in=600)
    out = run_in_terminal(
        portal.url, f"/user/{user.name}/", token,
        "cd ~ && command -v jupyter && ls INCloud/examples INCloud/dashboards && jupyter nbconvert --to notebook --execute "
        "INCloud/examples/01-getting-started.ipynb --output-dir ran --ExecutePreprocessor.timeout=180 "
        ">ran.log 2>&1; echo RC=$?; grep -c '\"output_type\": \"error\"' ran/01-getting-started.ipynb; "
        "grep -o 'Hello [a-z0-9]*' ran/01-getting-started.ipynb | head -1; tail -3 ran.log", timeout=300)
    assert f"{portal.venv}/bin/jupyter" in out, out  # the terminal (a login shell) finds the workstation's venv
    assert "01-getting-started.ipynb" in out and "02-archive-and-images.ipynb" in out and "archive.ipynb" in out
    assert "RC=0" in out, out
    lines = out.splitlines()
    assert lines[lines.index("RC=0") + 1] == "0", out  # no error output in the executed notebook
    assert f"Hello {user.name}" in out


LOAD = """
import incloud_kernel, json
from incloud_kernel.errors import NotFound
c = incloud_kernel.connect()
out = {}
for sid in %r:
    try:
        img = c.load(sid)
        out[sid] = [type(img).__name__, list(img.shape)]
    except NotFound as exc:
        out[sid] = ["NotFound", str(exc)]
try:
    out["dicom"] = [type(d).__name__ for d in c.load_dicom(%d)]
except NotFound as exc:
    out["dicom"] = ["NotFound"]
print(json.dumps(out))
"""


def test_client_load_streams_images_with_the_users_token(portal) -> None:
    from services.kernels import run_code

    first, other = portal.series["DEMO"][0], portal.series["OTHER"][0]
    for who in ("researcher", "outsider"):
        user = running_workstation(portal, who)
        token = user.new_token(expires_in=600)
        run = run_code(portal.url, f"/user/{user.name}/", token, LOAD % ([first, other], first))
        assert not run.error, run.error + run.stderr
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out[str(other)][0] == "NotFound"  # nobody here is a member of OTHER
        if who == "researcher":
            assert out[str(first)][0] == "Nifti1Image" and len(out[str(first)][1]) == 3
            assert out["dicom"] == ["FileDataset"]
        else:
            assert out[str(first)][0] == "NotFound" and out["dicom"] == ["NotFound"]
