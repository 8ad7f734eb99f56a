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
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from conftest import missing
from isolated_hub import DASHBOARD, EXPECTED, SITE_NAME, chromium, log_in, portal_stack, running_workstation

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack(on_missing=missing) as stack:
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("INCLOUD_PORTAL_SHOTS") or tmp_path_factory.mktemp("portal-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("who", list(EXPECTED))
def test_each_demo_user_sees_exactly_the_modules_their_roles_allow(portal, browser, shots, who) -> None:
    page = log_in(browser, portal, who)
    page.wait_for_selector(".ic-home[data-status='ready']", timeout=60_000)
    shown = page.eval_on_selector_all("[data-module]", "els => els.map(e => e.dataset.module)")
    assert shown == EXPECTED[who]
    assert SITE_NAME in page.inner_text("#incloud-brand") and "INCloud" in page.inner_text("#incloud-brand")
    built = page.eval_on_selector_all(".ic-card:not(.ic-planned)", "els => els.map(e => e.dataset.module)")
    assert set(built) == {"archive", "qc", "workstation", "reservation", "processing", "features", "reports",
                          "workshops", "health", "upload"} & set(EXPECTED[who])
    if "archive" in shown:  # live status from the API, as this user: DEMO's 6 series (admin: OTHER's too)
        stats = page.inner_text("[data-live='archive'] .ic-stats")
        assert ("7" if who == "admin" else "6") + "\nseries" in stats, stats
    if "qc" in shown:
        assert page.inner_text("[data-live='qc'] .ic-stat b") == ("5" if who == "admin" else "4")
    if "processing" in shown:  # no run yet in the demo site
        assert "runs going" in page.inner_text("[data-live='processing']")
    if "reservation" in shown:  # nothing booked in this stack
        assert page.inner_text("[data-live='reservation'] .ic-stat b") == "0"
    if "health" in shown:
        assert "database" in page.inner_text("[data-live='health']")
    if "upload" in shown:  # how to install and run the uploader, with this site's API address; the uploads
        howto = page.inner_text("[data-module='upload'] .ic-upload-howto")
        assert f"incloud-uploader --server {portal.url.rstrip('/')}/services/incloud-api/ --token" in howto, howto
        assert page.inner_text("[data-live='upload'] .ic-stat b") == "0"  # none yet in the demo site
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
