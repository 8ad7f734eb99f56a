"""Benchmark of the portal (issue 13): home page and archive dashboard in headless Chromium, one user and N at once.

Runs README command A's isolated hub (bench/isolatedhub.py ``portal_stack``: service user, root launcher, DEMO with
six series) on loopback and measures, per page view, from navigation start:

- home page: first contentful paint (the browser's ``paint`` entry) and "status shown" (every tile filled with the
  INCloud API's live status, ``.ic-home[data-status=ready]``);
- archive dashboard (Voila in the user's running workstation): first contentful paint and "series listed" (the
  series table on screen; Voila executes the notebook with a fresh kernel per view).

One user: ``--repeat`` views each (median). N users: N browser contexts log in as N different DEMO members and open
the page at the same moment (median and max over the N); each user's first login (which creates the user's system
account through the root launcher) is done once beforehand, one user at a time; for the dashboard each user's workstation is started
first (not timed here: docs/benchmarks.md, issue 7). Bounded: every wait has a timeout, and every process, account
and file is removed at the end. Needs root, Debian chromium and configurable-http-proxy.

    PYTHONPATH=. /opt/incloud/venv/bin/python -u bench/bench_portal.py [--users 50 --repeat 5]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from isolatedhub import ADMIN_PASSWORD, CHROMIUM, DASHBOARD, SHARED, hub_user, portal_stack, running_workstation

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
FCP = "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"


#: Browser contexts logging in at once before a measurement (the browser shares the 2 cores with the hub).
LOGIN_GATE = 4


async def view(browser, stack, who: str, what: str, start: asyncio.Event | None = None,
               ready: list[str] | None = None, gate: asyncio.Semaphore | None = None) -> dict[str, float]:
    """Log ``who`` in (not timed), then open ``what`` (home or dashboard) and time it from navigation start."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(300_000)
    try:
        page = await context.new_page()
        async with gate or asyncio.Semaphore(1):
            await page.goto(stack.url + "/hub/login")
            await page.fill("#username_input", stack.names[who])
            await page.fill("#password_input", ADMIN_PASSWORD if who == "admin" else SHARED)
            await page.click("#login_submit")
            await page.wait_for_url("**/hub/home")
            await page.wait_for_selector(".ic-home[data-status='ready']")  # the API's session exists
        if start is not None and ready is not None:
            ready.append(who)
            await asyncio.wait_for(start.wait(), 900)
        if what == "home":
            await page.goto(stack.url + "/hub/home")
            await page.wait_for_selector(".ic-home[data-status='ready']")
        else:
            await page.goto(f"{stack.url}/user/{stack.names[who]}/{DASHBOARD}")
            await page.wait_for_selector("tr.series-row")
        done = await page.evaluate("() => performance.now()")
        return {"fcp": (await page.evaluate(FCP) or float("nan")) / 1000, "content": done / 1000}
    finally:
        await context.close()


async def measure(stack, users: list[str], what: str, repeat: int) -> dict[str, list[dict[str, float]]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            one = [await view(browser, stack, users[0], what) for _ in range(repeat)]
            start, ready = asyncio.Event(), []
            gate = asyncio.Semaphore(LOGIN_GATE)
            tasks = [asyncio.create_task(view(browser, stack, who, what, start, ready, gate)) for who in users]
            deadline = time.monotonic() + 900
            while len(ready) + sum(t.done() for t in tasks) < len(users) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # every user logged in (or failed) before the pages open together
            t0 = time.perf_counter()
            start.set()
            many = await asyncio.gather(*tasks, return_exceptions=True)
            wall = time.perf_counter() - t0
        finally:
            await browser.close()
    errors = [m for m in many if isinstance(m, BaseException)]
    return {"one": one, "many": [m for m in many if not isinstance(m, BaseException)], "errors": errors,
            "wall": wall}


def summary(label: str, rows: list[dict[str, float]]) -> str:
    fcp = [r["fcp"] for r in rows]
    content = [r["content"] for r in rows]
    return (f"{label}: first paint median {statistics.median(fcp):.2f} s (max {max(fcp):.2f}), "
            f"content median {statistics.median(content):.2f} s (max {max(content):.2f}), n={len(rows)}")


def server_times(stack, pattern: str, last: int) -> str:
    """Median and max of the server's own time for the ``last`` requests matching ``pattern`` (from the hub log,
    where JupyterHub and the INCloud API log each request's duration): the share of the page time spent serving."""
    import re

    times = [float(m.group(1)) for m in re.finditer(pattern + r"[^\n]*? ([0-9.]+)ms", (stack.work / "hub.log")
                                                      .read_text(errors="replace"))][-last:]
    if not times:
        return "no server times logged"
    return f"server time median {statistics.median(times):.0f} ms, max {max(times):.0f} ms (n={len(times)})"


def start_workstations(stack, users: list[str]) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda who: running_workstation(stack, who), users))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-dashboard", action="store_true")
    args = parser.parse_args()
    with portal_stack(extra_researchers=args.users) as stack:
        users = [f"r{i:03d}" for i in range(args.users)]
        t0 = time.perf_counter()
        for who in users:  # first logins create the system accounts (hub/launcher.py): one at a time, not timed
            hub_user(stack, who)
        print(f"first logins (accounts created) of {args.users} users one after the other: "
              f"{time.perf_counter() - t0:.1f} s")
        result = asyncio.run(measure(stack, users, "home", args.repeat))
        print(summary("home, 1 user", result["one"]))
        print(summary(f"home, {args.users} users at once", result["many"])
              + f"; errors {len(result['errors'])}; wall {result['wall']:.1f} s")
        errors(result)
        print("  hub GET /hub/home: " + server_times(stack, r"200 GET /hub/home ", args.users))
        print("  API GET portal: " + server_times(stack, r"200 GET /services/incloud-api/portal ", args.users))
        if args.skip_dashboard:
            return
        print(f"started {args.users} workstations in {start_workstations(stack, users):.1f} s")
        result = asyncio.run(measure(stack, users, "dashboard", args.repeat))
        print(summary("archive dashboard, 1 user", result["one"]))
        print(summary(f"archive dashboard, {args.users} users at once", result["many"])
              + f"; errors {len(result['errors'])}; wall {result['wall']:.1f} s")
        errors(result)


def errors(result: dict) -> None:
    """The first lines of up to three different failures."""
    seen = {f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" for e in result["errors"]}
    for line in sorted(seen)[:3]:
        print(f"  error: {line}")


if __name__ == "__main__":
    main()
