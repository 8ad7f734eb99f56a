"""Issue 19, "Done when": the clinic uploader end to end in headless Chromium.

The uploader (``python -m incloud_uploader``, the console script's module) runs as its own process on
127.0.0.1; Chromium opens its one-time URL, picks a folder holding a small synthetic head study with identities
planted everywhere (``ingest_data.plant_identities``) plus a burned-in screen save, and uploads it to the real
INCloud API through a recording proxy (``recording_proxy``). After the third upload request the API is stopped,
the page shows the retries, the API is started again and the upload resumes; a few requests later the uploader
program itself is killed (a request in flight) and started again on the same work folder: the same choice resumes
without preparing again, re-sending only the unacknowledged batch. The study is archived refaced and
de-identified, its processing starts by itself and the page shows each step (archived, QC, features, report) and
the result link; nothing the uploader sent (paths, headers, bodies) holds a planted identity or an original UID.
Bad input (a DICOMDIR disc with nested folders, non-DICOM files, a corrupt instance, a folder of JPEGs, an
expired token) gets a clear message on the page. Screenshots go to ``INCLOUD_UPLOAD_SHOTS`` or a temp folder.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
from api_thread import serving
from sqlalchemy import select

from incloud_kernel.archive import projects
from incloud_kernel.archive.models import Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from isolated_hub import CHROMIUM, chromium
from leakscan import identity_needles, scan_tree, summary
from recording_proxy import recording_proxy
from upload_data import ACCESS, PLANTED_VALUES, TOKENS, UPLOADER, TableHubAuth, model, planted_study

from conftest import require_tool


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the route's database work is the API's own, run on both backends by test_upload_api."""
    yield f"sqlite:///{tmp_path / 'incloud.sqlite'}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("INCLOUD_UPLOAD_SHOTS") or tmp_path_factory.mktemp("upload-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    require_tool(CHROMIUM)
    with chromium() as b:
        yield b


class RestartableApi:
    """The real API app on a local port; ``stop()`` and ``start()`` (a new port) in the middle of a test."""

    def __init__(self, site) -> None:  # type: ignore[no-untyped-def]
        self.site = site
        self.stack: ExitStack | None = None
        self.url = ""

    def start(self) -> str:
        from hub.services.api.app import make_app

        auth = TableHubAuth(api_token="unused", access_scopes={ACCESS}, cache_max_age=0)
        self.stack = ExitStack()
        self.url = self.stack.enter_context(serving(make_app(self.site.config, hub_auth=auth)))
        return self.url

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.close()
            self.stack = None


@pytest.fixture
def api(site, monkeypatch) -> Iterator[RestartableApi]:  # type: ignore[no-untyped-def]
    from hub.services.api import upload
    from incloud_kernel import config

    # processing after the archive: the real QC pipeline on a LocalCluster, a one-stage toy as "features"
    monkeypatch.setenv("INCLOUD_COMPUTE_PIPELINES", json.dumps({"features": "pipeline_toy:TOY_QC"}))
    monkeypatch.setenv("INCLOUD_COMPUTE_WORKERS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("INCLOUD_COMPUTE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).resolve().parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(upload, "FOLLOW_INTERVAL", 1.0)
    monkeypatch.setitem(TOKENS, "t-cleo-qc", model("cleo", ["clinician", "qc_reviewer"]))
    site.config = config.get_config(reload=True)
    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "CLIN", owner="olivia")
        projects.grant(db, console, "CLIN", "cleo", "member")
    server = RestartableApi(site)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_uploader(server_url: str, workdir: Path, token: str = "t-cleo") -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(UPLOADER), os.environ.get("PYTHONPATH", "")]),
               INCLOUD_TOKEN=token)
    proc = subprocess.Popen([sys.executable, "-m", "incloud_uploader", "--server", server_url, "--no-browser",
                             "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"open (http://127\.0\.0\.1:\d+/\?t=\S+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    return proc, match.group(1)


def stop_uploader(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _page(browser, url: str):  # type: ignore[no-untyped-def]
    page = browser.new_context(viewport={"width": 1200, "height": 1000}, bypass_csp=True).new_page()  # waits eval
    page.goto(url)
    return page


def test_upload_from_the_page_resumes_after_the_server_stops_and_sends_no_identity(
        api, site, browser, shots, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, uids = planted_study(tmp_path / "src", screen_save=True)
    originals = sorted(src.rglob("*.dcm"))
    with recording_proxy(api.url) as proxy:
        stopped, killed = threading.Event(), threading.Event()
        programs: list[subprocess.Popen] = []

        def cut(n: int, path: str) -> None:
            if not path.endswith("/studies"):
                return
            if not stopped.is_set() and sum(r.path.endswith("/studies") for r in proxy.records) == 2:
                api.stop()  # the network goes at the third upload request
                stopped.set()
            elif stopped.is_set() and not killed.is_set() and \
                    sum(r.path.endswith("/studies") and r.status == 200 for r in proxy.records) >= 4:
                programs[0].kill()  # then the uploader program itself dies, this request in flight
                killed.set()

        proxy.before = cut
        proc, url = start_uploader(proxy.url, tmp_path / "work")
        programs.append(proc)
        errors = []
        try:
            page = _page(browser, url)
            page.wait_for_selector("#project option[value='CLIN']", state="attached", timeout=60_000)
            page.fill("#path", str(tmp_path / "src"))
            page.click("#scan")
            page.wait_for_selector(".series-row", timeout=120_000)
            rows = page.locator(".series-row")
            assert rows.count() == 2
            assert "Quenzelmark" in page.inner_text("#series")  # identities shown, on this local page only
            assert "burned" in page.inner_text("#series")  # the screen save is blocked and says why
            page.screenshot(path=str(shots / "upload-1-series.png"), full_page=True)
            page.click("#start")
            page.wait_for_selector("#confirm:not([hidden])", timeout=600_000)
            page.wait_for_selector("img.qc", timeout=60_000)
            page.wait_for_function("document.querySelector('img.qc').naturalWidth > 0", timeout=60_000)
            page.screenshot(path=str(shots / "upload-2-confirm.png"), full_page=True)
            page.click("#confirm")
            assert stopped.wait(300), "the upload never reached its third request"
            page.wait_for_function("document.querySelector('.progress-text') && "
                                   "/retries/.test(document.querySelector('.progress-text').textContent)",
                                   timeout=120_000)
            page.screenshot(path=str(shots / "upload-3-server-down.png"), full_page=True)
            proxy.target = api.start().split("/services/")[0]  # the server is back (on another port)
            assert killed.wait(300), "the upload never went on after the server came back"
            page.context.close()
            errors.append(stop_uploader(programs.pop()))
            # the program started again on the same work folder: the same choice resumes without re-preparing
            proc, url = start_uploader(proxy.url, tmp_path / "work", token="t-cleo-qc")
            programs.append(proc)
            page = _page(browser, url)
            page.wait_for_selector("#project option[value='CLIN']", state="attached", timeout=60_000)
            page.fill("#path", str(tmp_path / "src"))
            page.click("#scan")
            page.wait_for_selector(".series-row", timeout=120_000)
            page.click("#start")
            page.wait_for_function("document.querySelector(\".job[data-phase='archived']\") || "
                                   "document.getElementById('error').textContent", timeout=900_000)
            assert page.inner_text("#error") == "" and page.locator("img.qc").count() == 1  # its renders again
            resumed = page.inner_text(".series-state")  # the series' state survives the restart too
            assert resumed.startswith("t1_mprage_sag_p2_iso: ready, face removed, "), resumed
            page.screenshot(path=str(shots / "upload-4-archived.png"), full_page=True)
            # processing started by itself: the page shows each step, then the result link
            page.wait_for_selector("li.step[data-step='qc']:not([data-state='running'])", timeout=600_000)
            page.wait_for_selector("a.result", timeout=60_000)
            page.screenshot(path=str(shots / "upload-5-processing.png"), full_page=True)
            steps = page.eval_on_selector_all("li.step", "els => els.map(e => [e.dataset.step, e.dataset.state])")
            assert [s for s, _ in steps] == ["archived", "qc", "features", "report"] and steps[0][1] == "done"
            assert dict(steps)["qc"] in ("done", "failed", "review")
            assert page.get_attribute("a.result", "href").endswith("/hub/user-redirect/voila/render/INCloud/"
                                                                   "dashboards/qc_review.ipynb")
            if dict(steps)["qc"] == "done":  # the toy features and then the report step settle too
                page.wait_for_selector("li.step[data-step='report'][data-state='unavailable']", timeout=600_000)
        finally:
            errors += [stop_uploader(p) for p in programs]
    err = "".join(errors)
    assert "Traceback" not in err, err
    # the restarted program prepared nothing again and sent only what the server had not acknowledged: no
    # instance was acknowledged twice, except those of the request in flight when the program died
    from hub.services.api.upload import parts

    acked = [pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID
             for r in proxy.records if r.path.endswith("/studies") and r.status == 200
             for b in parts(dict(h.split(": ", 1) for h in r.headers.split("\n"))["Content-Type"], r.body)]
    assert 0 < len(acked) - len(set(acked)) <= 8, (len(acked), len(set(acked)))
    # what the uploader sent: no planted identity, no original UID, anywhere (paths, headers, bodies)
    sent = proxy.everything_sent().lower()
    needles = identity_needles(PLANTED_VALUES, extra=uids)
    assert [n for n in needles if n.encode() in sent] == []
    assert sum(r.path.endswith("/studies") and r.status == 502 for r in proxy.records) >= 1  # it was cut
    # nothing sent twice: every instance the server holds was acknowledged once
    stowed = [r for r in proxy.records if r.path.endswith("/studies") and r.status == 200]
    sops = re.findall(rb"2\.25\.\d+", b"".join(r.body for r in stowed))
    ticket = next(p for p in (site.config.spool / "upload").iterdir())
    received = sorted((ticket / "instances").glob("*.dcm"))
    t1 = [p for p in originals if "series001" in str(p)]
    assert len(received) == len(t1)
    # refaced at the clinic: every received instance carries a valid marker, and the face changed
    from incloud_kernel.deface.dicom import refacing_record

    changed = 0
    for path in received:
        ds = pydicom.dcmread(path)
        assert refacing_record(ds) is not None
        assert str(ds.PatientName).startswith("UPL")
        changed += 1
    before = np.stack([pydicom.dcmread(p).pixel_array for p in t1]).astype(float)
    after_sum = sum(float(pydicom.dcmread(p).pixel_array.astype(float).sum()) for p in received)
    assert changed and abs(after_sum - before.sum()) > 0
    # archived, de-identified, in the project
    with transaction(site.engine) as db:
        rows = list(db.scalars(select(Series)))
    assert [r.suffix for r in rows] == ["T1w"]
    leaks = scan_tree(site.config.archive_root, needles)
    assert not leaks, summary(leaks)
    assert not any(n.encode() in err.lower().encode() for n in needles)  # nor in the uploader's own output
    assert len(set(sops)) >= len(received)


def test_bad_input_gets_clear_messages_on_the_page(api, site, browser, shots, tmp_path: Path) -> None:  # type: ignore
    import shutil

    from pydicom.fileset import FileSet

    src, _ = planted_study(tmp_path / "gen")
    series = sorted(src.rglob("*.dcm"))
    # a disc: DICOMDIR at the top, instances in nested folders, plus a readme and a damaged (truncated) copy
    disc = tmp_path / "disc"
    fs = FileSet()
    for p in series[:6]:
        fs.add(pydicom.dcmread(p))
    fs.write(disc)
    (disc / "README.TXT").write_text("Viewer for Windows: run setup.exe\n")
    (disc / "autorun.inf").write_text("[autorun]\n")
    # a folder of JPEGs
    jpegs = tmp_path / "photos"
    jpegs.mkdir()
    for i in range(3):
        (jpegs / f"IMG_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100))
    # a corrupt instance in a folder of good ones
    damaged = tmp_path / "damaged"
    shutil.copytree(src, damaged)
    victim = sorted(damaged.rglob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc, url = start_uploader(api.url, tmp_path / "work")
    try:
        page = _page(browser, url)
        page.wait_for_selector("#project option[value='CLIN']", state="attached", timeout=60_000)

        def read(path: Path) -> str:
            page.fill("#path", str(path))
            page.click("#scan")
            page.wait_for_function("document.querySelector('#messages').textContent && "
                                   "!/Reading/.test(document.querySelector('#messages').textContent) || "
                                   "document.querySelectorAll('.series-row').length > 0", timeout=120_000)
            return page.inner_text("#messages") + "\n" + page.inner_text("#series")

        shown = read(disc)
        assert page.locator(".series-row").count() == 1 and "\t6\t" in shown  # the 6 instances the disc holds
        assert "2 file(s) are not DICOM" in shown, shown
        page.screenshot(path=str(shots / "upload-bad-dicomdir.png"), full_page=True)
        shown = read(jpegs)
        assert "No DICOM series found" in shown and "3 picture files such as JPEG" in shown, shown
        page.screenshot(path=str(shots / "upload-bad-jpegs.png"), full_page=True)
        shown = read(damaged)
        assert "damaged" in shown and page.locator(".series-row input:disabled").count() == 1, shown
        page.screenshot(path=str(shots / "upload-bad-corrupt.png"), full_page=True)
        shown = read(tmp_path / "nowhere")
        assert "does not exist" in shown
        # an expired token: the page says so when it asks the server for the projects
        TOKENS["t-expired"] = dict(TOKENS["t-cleo"])
        proc2, url2 = start_uploader(api.url, tmp_path / "work2", token="t-expired")
        try:
            TOKENS.pop("t-expired")
            page2 = _page(browser, url2)
            page2.wait_for_function("document.querySelector('#project-error').textContent", timeout=60_000)
            assert "expired or revoked" in page2.inner_text("#project-error")
            page2.screenshot(path=str(shots / "upload-bad-token.png"), full_page=True)
            # the one-time URL cannot be used a second time (another browser, no cookie)
            other = browser.new_context().new_page()
            assert other.goto(url2).status == 403
        finally:
            stop_uploader(proc2)
    finally:
        stop_uploader(proc)
