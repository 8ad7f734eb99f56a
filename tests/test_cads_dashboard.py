"""The CADS report dashboard in a real browser (issue 17 item 4): README command A's isolated hub, the clinician's
own workstation running ``voila_apps/cads_report.ipynb`` in Voila, headless Chromium.

The site holds a synthetic cohort in project CLINIC (the demo clinician is a collaborator) and in CADSX (not hers),
published to the feature library, and a trained model v1. The clinician opens the dashboard from the home page's
"CADS reports" tile and sees a report: the pseudonym, the scan's QC, the brain map, the table of flagged regions
with the chance expectation, the probabilities with their ranges, model v1 and its validated performance, and the
statement; only CLINIC's scans are offered; the PDF link appears. Screenshots ``cads-*.png`` go to the portal
tests' folder.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import pytest

from conftest import missing
from isolated_hub import log_in, portal_stack, running_workstation
from test_portal import browser, shots  # noqa: F401 - the portal tests' Chromium and screenshot folder fixtures

pytestmark = [pytest.mark.services, pytest.mark.timeout(1200)]


def seed_cads(env: dict[str, str]) -> None:
    """CLINIC (the clinician's) and CADSX (not hers) in the library, and model v1, as the site console."""
    from cads_data import ADMIN, build
    from incloud_kernel.cads import registry
    from incloud_kernel.config import load_config
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    site = Site.open(load_config(env=env), migrate=True)
    build(site, n=100, n_other=3, projects=("CLINIC", "CADSX"), clinician=env["INCLOUD_TEST_PREFIX"] + "clinician")
    with transaction(site.engine) as db:
        assert registry.retrain(site, db, ADMIN, kind="linear", validate=False).promoted
    site.engine.dispose()


@pytest.fixture(scope="module")
def portal() -> Iterator[SimpleNamespace]:
    with portal_stack(on_missing=missing, seed=seed_cads) as stack:
        yield stack


def test_clinician_reads_a_report_in_the_dashboard(portal, browser, shots) -> None:  # type: ignore[no-untyped-def]
    running_workstation(portal, "clinician")
    page = log_in(browser, portal, "clinician")
    page.set_viewport_size({"width": 1360, "height": 1000})
    page.wait_for_selector(".ic-home[data-status='ready']", timeout=60_000)
    assert "scans with a report you may open" in page.inner_text("[data-live='reports']")
    page.click("a[data-dashboard='cads']")
    try:
        page.wait_for_selector("#cads-report", timeout=180_000)
        page.wait_for_function("() => [...document.querySelectorAll('img.cads-map')].some(i => i.naturalWidth > 0)",
                               timeout=60_000)
        assert page.get_attribute("#cads-report", "data-model") == "1"
        text = page.inner_text("body")
        assert "Participant CL" in text and "QC" in text and "pass" in text
        assert "expected by chance in a healthy person: 2.7" in text
        heading = page.inner_text("#cads-map-heading")  # the map paints volumes; connectivity is in the table only
        assert heading.startswith("Brain map of grey-matter volume z-scores") and "not on the map" in heading
        assert "Model and validated performance" in text and "balanced accuracy" in text
        assert "supports and does not replace clinical judgement" in page.inner_text("#cads-statement")
        categories = page.eval_on_selector_all("tr.cads-prob", "els => els.map(e => e.dataset.category)")
        assert sorted(categories) == ["BD", "HC", "SCZ"]
        options = page.eval_on_selector_all("select option", "els => els.map(e => e.textContent)")
        assert len(options) == 100 and all("CLINIC" in o for o in options) and not any("CADSX" in o for o in options)
        page.screenshot(path=str(shots / "cads-report.png"), full_page=True)
        # another scan, then the PDF for the clinical record
        first = page.get_attribute("#cads-report", "data-series")
        page.select_option("select", index=7)
        page.wait_for_function(f"() => (document.querySelector('#cads-report') || {{}}).dataset?.series "
                               f"&& document.querySelector('#cads-report').dataset.series !== '{first}'",
                               timeout=120_000)
        page.click("button:has-text('Prepare PDF')")
        page.wait_for_selector("a.cads-pdf", timeout=120_000)
        assert page.get_attribute("a.cads-pdf", "href").startswith("data:application/pdf;base64,JVBERi")
        page.screenshot(path=str(shots / "cads-second.png"), full_page=True)
    except Exception:
        log = portal.homes / portal.names["clinician"] / ".incloud-workstation.log"
        print("--- clinician's workstation log ---\n" + log.read_text(errors="replace")[-5000:])
        print("--- page ---\n" + page.content()[-5000:])
        raise
    finally:
        page.context.close()
