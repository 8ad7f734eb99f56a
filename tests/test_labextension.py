"""INCloud's JupyterLab extension in a real workstation (issue 13 item 4), on README command A's isolated hub with a
DEMO project (bench/isolatedhub.py), driven by headless Chromium:

- the workstation lists the extension (``jupyter labextension list`` in the user's own JupyterLab terminal);
- its sidebar shows DEMO's tree (projects, participants, sessions, series with their QC badges) for a member and
  "not a member" for a researcher who is not one, whose requests for DEMO's image are refused by the API;
- a series opens in the niivue viewer (the image drawn, with the archive image's dimensions);
- the viewer's and the tree's "insert" put the code that loads the series into the active notebook (a new one when
  none is open), and that code runs in the notebook's kernel with the user's token.

Screenshots go to the test's output folder (``labext-shots``, or ``$INCLOUD_LABEXT_SHOTS``). The workstations run
this worktree's extension (bench/isolatedhub.py ``workstation_venv``): build it first with scripts/lib/install.sh
``ensure_labextension`` (scripts/test.sh does).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest

from conftest import missing
from isolated_hub import LABEXTENSION_BUILD, VENV, chromium, log_in, portal_stack, running_workstation

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

#: The QC status bench/isolatedhub.py ``seed_demo`` gives DEMO's series, in the order of ``portal.series["DEMO"]``
#: (per participant: T1w with pass / pending / fail, then a BOLD run left pending).
SEEDED_QC = ["pass", "pending", "pending", "pending", "fail", "pending"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The isolated hub with DEMO (``portal``), a headless Chromium (``browser``) and the screenshot folder."""
    if not (LABEXTENSION_BUILD / "package.json").is_file():
        missing("the JupyterLab extension is not built here (scripts/lib/install.sh ensure_labextension)")
    shots = Path(os.environ.get("INCLOUD_LABEXT_SHOTS") or tmp_path_factory.mktemp("labext-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with portal_stack(on_missing=missing) as portal, chromium() as browser:
        yield SimpleNamespace(portal=portal, browser=browser, shots=shots)


def open_lab(browser, portal, who: str):  # type: ignore[no-untyped-def]
    """``who`` logged in, in their running workstation's JupyterLab, with the INCloud sidebar shown."""
    running_workstation(portal, who)
    page = log_in(browser, portal, who)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{portal.url}/user/{portal.names[who]}/lab")
    tab = page.locator(".lm-TabBar-tab[data-id='incloud-archive']")
    tab.wait_for(timeout=120_000)
    tab.click()
    page.wait_for_selector(".jp-incloud-ArchiveTree[data-status='ready']", timeout=60_000)
    return page


def dismiss_news(page) -> None:  # type: ignore[no-untyped-def]
    """Answer JupyterLab's first-start "official Jupyter news?" toast (it would cover the screenshots)."""
    no = page.locator(".jp-toast-button", has_text="No")
    if no.count():
        no.first.click()
        no.first.wait_for(state="detached", timeout=10_000)


def expand(page, kind: str) -> None:  # type: ignore[no-untyped-def]
    """Open every closed node of ``kind`` and wait for its children."""
    nodes = page.locator(f".jp-incloud-node[data-kind='{kind}'][aria-expanded='false']")
    for _ in range(nodes.count()):
        nodes.first.locator(":scope > .jp-incloud-row").click()
    page.wait_for_function(
        "k => [...document.querySelectorAll(`.jp-incloud-node[data-kind='${k}']`)]"
        ".every(n => n.dataset.loaded === 'true')", arg=kind, timeout=30_000)


def cell_sources(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").all_inner_texts()


def run_cell_with(page, text: str) -> str:  # type: ignore[no-untyped-def]
    """Run the visible notebook's cell whose source holds ``text``; return its output once it is there."""
    page.wait_for_selector(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=120_000)  # the kernel is there
    cell = page.locator(".jp-NotebookPanel:visible .jp-Cell", has_text=text).last
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    output.first.wait_for(timeout=180_000)
    return output.first.inner_text()


def drawn(png: Path) -> bool:
    """Whether a screenshot of the viewer's canvas shows an image (not a blank or a single colour)."""
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"))
    return (grey > 20).mean() > 0.05 and len(np.unique(grey)) > 30


def test_workstation_lists_the_extension(lab) -> None:
    from services.kernels import run_in_terminal

    portal = lab.portal
    user = running_workstation(portal, "researcher")
    out = run_in_terminal(portal.url, f"/user/{user.name}/", user.new_token(expires_in=600),
                          "jupyter labextension list 2>&1", timeout=120)
    line = next((l for l in out.splitlines() if "@incloud/jupyterlab" in l), "")
    assert "enabled" in line and "OK" in line, out


def test_sidebar_shows_demo_opens_a_series_and_inserts_its_code(lab) -> None:
    import nibabel as nib

    portal, shots = lab.portal, lab.shots
    page = open_lab(lab.browser, portal, "researcher")
    try:
        projects = page.eval_on_selector_all(".jp-incloud-node[data-kind='project']", "e => e.map(n => n.dataset.project)")
        assert projects == ["DEMO"]  # a member of DEMO only (OTHER is somebody else's)
        expand(page, "participant")
        labels = page.locator(".jp-incloud-node[data-kind='participant'] > .jp-incloud-row .jp-incloud-label")
        assert labels.all_inner_texts() == ["sub-001", "sub-002", "sub-003"]
        expand(page, "session")
        rows = page.eval_on_selector_all(".jp-incloud-node[data-kind='series']",
                                         "e => e.map(n => [Number(n.dataset.series), n.dataset.qc,"
                                         " n.querySelector('.jp-incloud-qc').textContent])")
        assert sorted(r[0] for r in rows) == sorted(portal.series["DEMO"])
        badges = {sid: (qc, shown) for sid, qc, shown in rows}
        for sid, qc in zip(portal.series["DEMO"], SEEDED_QC):
            assert badges[sid] == (qc, qc), (sid, badges[sid])
        dismiss_news(page)
        page.screenshot(path=str(shots / "sidebar-researcher.png"))

        # Open sub-001's T1w (the MNI head) in the viewer: niivue draws it, with the archive image's size.
        t1 = portal.series["DEMO"][0]
        page.locator(f".jp-incloud-node[data-series='{t1}'] > .jp-incloud-row").dblclick()
        viewer = page.locator(f".jp-incloud-Viewer[data-series='{t1}']")
        page.wait_for_selector(f".jp-incloud-Viewer[data-series='{t1}'][data-status='ready']", timeout=60_000)
        head = next((VENV / "lib").glob("python3*/site-packages/nilearn/datasets/data/"
                                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
        assert viewer.get_attribute("data-dims") == "x".join(str(n) for n in nib.load(head).shape)
        page.wait_for_timeout(1000)  # the first frames after loading
        viewer.locator("canvas").screenshot(path=str(shots / "viewer-canvas.png"))
        assert drawn(shots / "viewer-canvas.png")
        page.screenshot(path=str(shots / "viewer-researcher.png"))

        # No notebook is open: the viewer's "Insert code" opens one with the code in its first cell, which runs.
        page.locator(".jp-incloud-ViewerPanel:visible .jp-incloud-insert-code").click()
        page.wait_for_selector(".jp-NotebookPanel:visible .jp-Cell", timeout=60_000)
        page.wait_for_function(f"() => [...document.querySelectorAll('.jp-NotebookPanel .cm-content')]"
                               f".some(c => c.textContent.includes('client.load({t1})'))", timeout=30_000)
        sources = cell_sources(page)
        assert len(sources) == 1 and "client = incloud_kernel.connect()" in sources[0], sources
        shape = run_cell_with(page, f"client.load({t1})")
        assert shape.strip() == str(tuple(nib.load(head).shape)), shape

        # From the tree, a BOLD run into the same (active) notebook: one new cell, without a second connect().
        bold = portal.series["DEMO"][3]
        row = page.locator(f".jp-incloud-node[data-series='{bold}'] > .jp-incloud-row")
        row.hover()
        row.locator(".jp-incloud-insert").click()
        page.wait_for_function("n => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')"
                               ".length >= n", arg=2, timeout=30_000)
        sources = cell_sources(page)
        assert f"client.load({bold})" in sources[-1] and "connect()" not in sources[-1], sources
        assert re.search(r"DEMO sub-002 ses-01 func/task-rest_bold", sources[-1]), sources[-1]
        assert run_cell_with(page, f"client.load({bold})").strip() == "(16, 16, 12, 4)"
        page.screenshot(path=str(shots / "notebook-researcher.png"))
    except Exception:
        log = portal.homes / portal.names["researcher"] / ".incloud-workstation.log"
        if log.exists():
            print("--- researcher's workstation log ---\n" + log.read_text(errors="replace")[-5000:])
        page.screenshot(path=str(shots / "failure-researcher.png"))
        raise
    finally:
        page.context.close()


def test_sidebar_shows_nothing_to_a_non_member(lab) -> None:
    portal = lab.portal
    page = open_lab(lab.browser, portal, "outsider")
    try:
        page.wait_for_selector(".jp-incloud-no-projects", timeout=30_000)
        assert page.locator(".jp-incloud-node").count() == 0
        # Asking the server routes directly for DEMO's image: the API refuses (a non-member's series do not exist).
        status = page.evaluate(
            """async (url) => {
                 const x = document.cookie.match(/_xsrf=([^;]+)/);
                 const r = await fetch(url, {headers: x ? {'X-XSRFToken': decodeURIComponent(x[1])} : {}});
                 return r.status;
               }""", f"/user/{portal.names['outsider']}/incloud-jupyterlab/series/{portal.series['DEMO'][0]}/image")
        assert status == 404
        dismiss_news(page)
        page.screenshot(path=str(lab.shots / "sidebar-outsider.png"))
    finally:
        page.context.close()
