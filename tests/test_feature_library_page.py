"""The feature library query page in a real browser (issue 16 item 5): README command A's isolated hub, the users'
own workstations running ``voila_apps/feature_library.ipynb`` in Voila, headless Chromium.

The library holds ``library_data``'s three projects (20 scans published through ``library.store``, as the feature
pipeline would). Two researchers with different rights ask the same questions: *researcher* is a member of SCZA;
*outsider* is a member of nothing here but holds a feature grant to SCZB and one to HCC that has expired. Both see
the same count and different rows (SCZA's, SCZB's); the expired grant lists nothing; a small cell shows "< 5"; the
CSV and Parquet downloads hold exactly the permitted rows; the region plot and the effect-size brain map render.
Screenshots (``features-*.png``) go to the portal tests' folder (``portal-shots``, or ``$INCLOUD_PORTAL_SHOTS``).
"""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Iterator

import pandas as pd
import pytest

import library_data
from conftest import missing
from isolated_hub import log_in, portal_stack, running_workstation
from test_portal import browser, shots  # noqa: F401 - the portal tests' Chromium and screenshot folder fixtures
from test_reservation_dashboard import debug

pytestmark = [pytest.mark.services, pytest.mark.timeout(1200)]

DASHBOARD = "voila/render/INCloud/dashboards/feature_library.ipynb"
SCZ = {p.label for p in library_data.expected(diagnosis="SCZ")}
MINE = {"researcher": {p.label for p in library_data.expected(diagnosis="SCZ", project="SCZA")},
        "outsider": {p.label for p in library_data.expected(diagnosis="SCZ", project="SCZB")}}


def seed_library(env: dict[str, str]) -> None:
    """``library_data``'s library; the researcher joins SCZA; SCZB shares its features with the outsider until
    next year, HCC shared them with the outsider until yesterday (an expired grant)."""
    from incloud_kernel.archive import records
    from incloud_kernel.archive.projects import grant
    from incloud_kernel.config import load_config
    from incloud_kernel.library import sharing
    from incloud_kernel.site import Site

    site = Site.open(load_config(env=env), migrate=True)
    library_data.build(site)
    prefix, now = env["INCLOUD_TEST_PREFIX"], datetime.now(timezone.utc)
    with records.transaction(site) as db:
        grant(db, library_data.ADMIN, "SCZA", prefix + "researcher", "member")
        sharing.grant(db, library_data.ADMIN, "SCZB", user=prefix + "outsider", expires=now + timedelta(days=365))
        sharing.grant(db, library_data.ADMIN, "HCC", user=prefix + "outsider", expires=now - timedelta(days=1),
                      now=now - timedelta(days=30))  # granted a month ago, for four weeks
    site.engine.dispose()


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack(on_missing=missing, seed=seed_library) as stack:
        yield stack


def open_page(browser, portal, who: str):  # type: ignore[no-untyped-def]
    """``who``'s browser on the page, opened from the home page's Feature library tile; waits for the first answer
    (the whole library's count)."""
    running_workstation(portal, who)
    page = log_in(browser, portal, who)
    page.set_viewport_size({"width": 1280, "height": 1000})
    assert page.get_attribute("a[data-dashboard='features']", "href").endswith(DASHBOARD)
    page.wait_for_selector("[data-live='features'] .ic-stats", timeout=60_000)  # the tile's live status
    page.click("a[data-dashboard='features']")
    page.wait_for_selector("#fl-status[data-state='ready'][data-n='1']", timeout=180_000)
    return page


def act(page, click: str) -> str:  # type: ignore[no-untyped-def]
    """Click ``click`` and wait for the next finished action; returns its status line (ready or error)."""
    n = int(page.get_attribute("#fl-status", "data-n"))
    page.click(click)
    node = page.wait_for_selector(f"#fl-status[data-n='{n + 1}']", timeout=180_000)
    return node.get_attribute("data-state") + ": " + node.inner_text()


def search(page, **fields: str) -> str:  # type: ignore[no-untyped-def]
    for name in ("participant", "diagnosis", "medication", "project", "scanner", "pipeline", "version", "atlas",
                 "feature", "region"):
        page.fill(f".fl-{name} input", fields.get(name, ""))
    return act(page, "button.fl-search")


def listed(page) -> tuple[str, set[str], set[str]]:  # type: ignore[no-untyped-def]
    """(the count as shown, the projects of the listed rows, their participant labels)."""
    rows = page.eval_on_selector_all("tr.fl-row", "els => els.map(e => [e.dataset.project, "
                                                  "e.querySelector('td:nth-child(2)').innerText])")
    return (page.inner_text("#fl-count"), {p for p, _ in rows}, {label.removeprefix("sub-") for _, label in rows})


def download(page, fmt: str) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    with page.expect_download(timeout=120_000) as saving:
        assert act(page, f"button.fl-{fmt}").startswith("ready: Saved features-")
    data = open(saving.value.path(), "rb").read()
    assert saving.value.suggested_filename.endswith("." + fmt)
    return pd.read_csv(io.BytesIO(data)) if fmt == "csv" else pd.read_parquet(io.BytesIO(data))


def image_width(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    page.wait_for_function(f"() => {{ const i = document.querySelector({selector!r}); "
                           "return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
    return int(page.eval_on_selector(selector, "i => i.naturalWidth"))


@pytest.mark.parametrize("who", ["researcher", "outsider"])
def test_same_count_different_rows_downloads_and_plots(portal, browser, shots, who: str) -> None:
    project = {"researcher": "SCZA", "outsider": "SCZB"}[who]
    page = open_page(browser, portal, who)
    try:
        assert page.inner_text("#fl-count") == str(len(library_data.PEOPLE))  # everything, for everybody
        assert page.eval_on_selector(".fl-sex select", "s => s.options[s.selectedIndex].text") == "any"
        assert search(page, diagnosis="SCZ", atlas="aal", feature="gmv").startswith("ready:")
        count, projects, labels = listed(page)
        assert count == str(len(SCZ)) == "12"  # the same for both users
        assert (projects, labels) == ({project}, MINE[who])  # their own rows only
        assert page.get_attribute("#fl-listed", "data-listed") == str(len(MINE[who]))
        page.screenshot(path=str(shots / f"features-{who}-search.png"), full_page=True)

        frame = download(page, "csv")  # every permitted row of this search, long format
        assert set(frame["project"]) == {project} and set(frame["participant"].astype(str)) == MINE[who]
        assert set(frame["atlas"]) == {"aal"} and len(frame) == len(MINE[who]) * len(library_data.AAL)
        parquet = download(page, "parquet")
        assert sorted(parquet["value"]) == pytest.approx(sorted(frame["value"]))

        page.select_option(".fl-plotregion select", label="Hippocampus_L")
        assert act(page, "button.fl-plot-region") == "ready: Region plotted."
        assert image_width(page, ".fl-region-img img") > 300
        groups = page.eval_on_selector_all("#fl-groups td:first-child", "els => els.map(e => e.innerText)")
        assert set(groups) == ({"HC", "SCZ"} if who == "researcher" else {"BD", "SCZ"})  # all but the diagnosis
        page.select_option(".fl-group select", label="SCZ")
        control = "HC" if who == "researcher" else "BD"  # the outsider lists no controls: SCZ vs BD
        page.select_option(".fl-control select", label=control)
        page.select_option(".fl-group select", label="SCZ")
        assert act(page, "button.fl-plot-brain") == "ready: Effect sizes mapped."
        assert image_width(page, ".fl-brain img") > 600
        regions = page.eval_on_selector_all("#fl-effects tr td:first-child", "els => els.map(e => e.innerText)")
        assert set(regions) == set(library_data.AAL)
        page.locator(".fl-brain").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / f"features-{who}-plots.png"), full_page=True)

        # A small cell: two SCZ scans in HCC show as "< 5"; nobody here lists HCC (the outsider's grant expired).
        assert search(page, diagnosis="SCZ", project="HCC").startswith("ready:")
        assert listed(page) == ("< 5", set(), set())
        assert page.is_visible("#fl-norows") and page.is_disabled("button.fl-csv")
        page.screenshot(path=str(shots / f"features-{who}-small-cell.png"), full_page=True)
        assert search(page, project="HCC").startswith("ready:")
        assert listed(page) == ("6", set(), set())
        page.screenshot(path=str(shots / f"features-{who}-hcc.png"), full_page=True)

        error = search(page, participant="A00", medication="x" * 300)  # a bad criterion: one line from the server
        assert error == "error: medication must be text of one line (at most 256 characters)"
        page.screenshot(path=str(shots / f"features-{who}-error.png"), full_page=True)
    except Exception:
        debug(portal, page, who)
        raise
    finally:
        page.context.close()
