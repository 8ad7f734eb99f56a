"""The QC review dashboard in a real browser (issue 14 item 7 and "a reviewer's decision in the dashboard changes
what the next processing run takes"): README command A's isolated hub with DEMO, QC indices and motion TSVs
(``qc_data.seed_qc``), the reviewer's own workstation running the dashboard in Voila, headless Chromium.

A QC reviewer opens the dashboard from the home page and rates the three series waiting for review with the
keyboard only (P; a typed comment and Alt+C; F), each next series opening by itself. Then the database holds
exactly those three decisions by that reviewer (the comment in ``qc_review``, never in the audit log), and the
series that enter processing (``client.usable_series``, what the pipeline engine takes) changed accordingly.
Screenshots (``qc-*.png``) go to the portal tests' folder (``portal-shots``, or ``$INCLOUD_PORTAL_SHOTS``).
"""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Iterator

import pytest
from sqlalchemy import select

from conftest import missing
from isolated_hub import hub_user, log_in, portal_stack, running_workstation
from qc_data import seed_qc
from test_portal import browser, shots  # noqa: F401 - the portal tests' Chromium and screenshot folder fixtures

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

QC_DASHBOARD = "voila/render/INCloud/dashboards/qc_review.ipynb"


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack(on_missing=missing, seed=seed_qc) as stack:
        yield stack


def api_client(portal, who: str):  # type: ignore[no-untyped-def]
    """``incloud_kernel``'s client with a fresh token of demo user ``who`` (as a notebook of theirs would hold)."""
    from incloud_kernel.client import Client

    token = hub_user(portal, who).new_token(expires_in=3600)
    client = Client(portal.url + "/services/incloud-api/", token)
    client.whoami()
    return client


def current(page) -> int | None:  # type: ignore[no-untyped-def]
    node = page.query_selector("#qc-current")
    return int(node.get_attribute("data-series")) if node else None


def wait_moved_on(page, sid: int) -> None:  # type: ignore[no-untyped-def]
    """Until the dashboard shows another series than ``sid`` (or none: nothing left to review)."""
    page.wait_for_function(f"() => {{ const c = document.querySelector('#qc-current'); "
                           f"return !c || c.dataset.series !== '{sid}'; }}", timeout=60_000)


def viewer_draws(page) -> None:  # type: ignore[no-untyped-def]
    """Until the viewer (ipyniivue's canvas, headless Chromium's SwiftShader WebGL2) shows an image: more than a
    tenth of its pixels neither black nor one flat grey."""
    import io

    import numpy as np
    from PIL import Image

    page.wait_for_selector(".qc-img canvas", timeout=60_000)
    for _ in range(60):
        page.wait_for_timeout(500)
        pixels = np.asarray(Image.open(io.BytesIO(page.locator(".qc-img canvas").screenshot())).convert("L"))
        if (pixels > 40).mean() > 0.1 and pixels.std() > 20:
            return
    raise AssertionError("the viewer's canvas stayed empty")


def test_reviewer_rates_three_series_by_keyboard_and_the_usable_selection_follows(portal, browser, shots) -> None:
    from incloud_kernel.archive.models import AuditEvent, QCReview
    from incloud_kernel.config import load_config
    from incloud_kernel.db import session_factory
    from incloud_kernel.errors import PermissionDenied
    from incloud_kernel.site import Site

    demo = portal.series["DEMO"]  # T1w and BOLD of 001, 002, 003 in that order
    t1 = {label: demo[2 * n] for n, label in enumerate(("001", "002", "003"))}
    bold = {label: demo[2 * n + 1] for n, label in enumerate(("001", "002", "003"))}
    waiting = {t1["002"], bold["001"], bold["002"]}  # the band between the thresholds (qc_data.INDICES)

    researcher = api_client(portal, "researcher")
    before = researcher.usable_series("DEMO")
    assert sorted(before) == sorted([t1["001"], bold["003"]])  # passed by hand, passed by the thresholds
    with pytest.raises(PermissionDenied, match="qc_reviewer role or ownership"):
        researcher.review(bold["001"], "pass")  # a member writes data but does not rate it
    with pytest.raises(PermissionDenied):
        researcher.set_qc_policy("DEMO", ["pass", "caveat", "pending"])  # owners choose what enters processing
    assert researcher.qc_policy("DEMO") == ["pass", "caveat"]

    running_workstation(portal, "reviewer")
    page = log_in(browser, portal, "reviewer")
    page.set_viewport_size({"width": 1360, "height": 1000})
    assert page.get_attribute("a[data-dashboard='qc']", "href").endswith(QC_DASHBOARD)
    page.click("a[data-dashboard='qc']")
    try:
        page.wait_for_selector("#qc-current", timeout=120_000)
        viewer_draws(page)  # NiiVue's WebGL2 canvas shows the first series' mid-slices
        rows = page.eval_on_selector_all("tr.qc-row", "els => els.map(e => Number(e.dataset.series))")
        assert set(rows) == waiting  # the default view: what waits for a reviewer
        page.screenshot(path=str(shots / "qc-first.png"), full_page=True)

        decided: dict[int, str] = {}
        first = current(page)
        page.keyboard.press("p")
        wait_moved_on(page, first)
        decided[first] = "pass"

        second = current(page)
        page.keyboard.press("/")
        page.keyboard.type("mild ghosting")
        page.keyboard.press("Alt+c")
        wait_moved_on(page, second)
        decided[second] = "caveat"

        third = current(page)
        if third in bold.values():  # a BOLD run shows its motion plot from the per-volume TSV
            page.wait_for_function("() => [...document.querySelectorAll('img.qc-motion')]"
                                   ".some(i => i.naturalWidth > 0)", timeout=60_000)
        page.screenshot(path=str(shots / "qc-third.png"), full_page=True)
        page.keyboard.press("f")
        page.wait_for_selector("#qc-none", timeout=60_000)
        decided[third] = "fail"
        assert set(decided) == waiting
        assert "<b>0</b>to review" in page.inner_html(".qcd.counts")
        page.screenshot(path=str(shots / "qc-done.png"), full_page=True)

        page.click("button.widget-toggle-button:has-text('All')")  # every series again; open the real head (001's T1w)
        page.click(f"tr.qc-row[data-series='{t1['001']}']")
        page.wait_for_function(f"() => (document.querySelector('#qc-current') || {{}}).dataset?.series === "
                               f"'{t1['001']}'", timeout=60_000)
        viewer_draws(page)
        page.screenshot(path=str(shots / "qc-all.png"), full_page=True)
    except Exception:
        log = portal.homes / portal.names["reviewer"] / ".incloud-workstation.log"
        print("--- reviewer's workstation log ---\n" + log.read_text(errors="replace")[-5000:])
        print("--- page ---\n" + page.content()[-5000:])
        raise
    finally:
        page.context.close()

    site = Site.open(load_config(env=portal.env))
    try:
        with session_factory(site.engine)() as db:
            reviews = db.scalars(select(QCReview).where(QCReview.source == "reviewer").order_by(QCReview.id)).all()
            assert [(r.series_id, r.decision, r.reviewer) for r in reviews] == \
                [(sid, decision, portal.names["reviewer"]) for sid, decision in decided.items()]
            assert [r.comment for r in reviews] == ["", "mild ghosting", ""]
            events = db.scalars(select(AuditEvent).where(AuditEvent.action == "qc.review")).all()
            assert sorted(int(e.object_id) for e in events) == sorted(decided)
            assert "ghosting" not in json.dumps([e.detail for e in events])
    finally:
        site.engine.dispose()

    after = researcher.usable_series("DEMO")  # what the next processing run takes
    usable = [sid for sid, decision in decided.items() if decision in ("pass", "caveat")]
    assert sorted(after) == sorted(before + usable)
    assert third not in after
