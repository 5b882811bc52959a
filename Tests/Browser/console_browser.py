#!/usr/bin/env python3
"""Drives the fulfillment node's web console in a real browser (Debian's Chromium, headless, through
Playwright) the way an operator would, and writes what it saw as JSON for the Swift test that runs it
(Tests/BookstoreTests/ConsoleBrowserTests.swift) to check against the store.

It finds a completed order by its id with the filter form, reads its timeline; reads a compensated order's
timeline and the steps its diagram highlights; opens an order whose address holds a <script>; tries to abort an
open order with a wrong token (refused), then with the right one, and watches the page turn it failed without a
reload; asks for an unknown instance and a malformed filter. Every JavaScript error and failed load is recorded.
"""

import argparse
import json
import sys
import time

from playwright.sync_api import sync_playwright


def timeline(page):
    """The timeline table as rows: version, trigger, lifecycle after, what was issued."""
    rows = []
    for row in page.locator("table.timeline tbody tr").all():
        rows.append({
            "version": int(row.get_attribute("data-version")),
            "trigger": row.locator(".trigger-type").get_attribute("data-trigger"),
            "lifecycle": row.locator("td:nth-child(4) .lifecycle").inner_text(),
            "issued": [item.get_attribute("data-issued") for item in row.locator("[data-issued]").all()],
        })
    return rows


def diagram(page):
    """The diagram's highlighted steps (id → versions) and its current lifecycle."""
    visited = {}
    for step in page.locator("svg.process-diagram g[data-visited]").all():
        visited[step.get_attribute("data-step")] = [int(v) for v in step.get_attribute("data-visited").split(",")]
    current = page.locator("svg.process-diagram [data-current='true']")
    return {"visited": visited, "current": current.first.get_attribute("data-state") if current.count() else None}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the console, e.g. http://127.0.0.1:9464/console")
    parser.add_argument("--token", required=True)
    parser.add_argument("--completed", required=True, help="a completed order's id")
    parser.add_argument("--compensated", required=True, help="a compensated order's id")
    parser.add_argument("--scripted", required=True, help="an order whose address holds a <script>")
    parser.add_argument("--open", required=True, help="an open order, to abort")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshot", help="where to save a screenshot of the compensated order")
    parser.add_argument("--out", required=True)
    arguments = parser.parse_args()
    seen = {"errors": [], "dialogs": []}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=arguments.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: seen["errors"].append(str(error)))
        # A load the browser itself cancelled (net::ERR_ABORTED: the test navigated on while the favicon or another
        # resource of the page it left was still loading) is not a failure of the console; it is kept apart. A
        # load the server failed still reports its status as a console error, checked below.
        seen["cancelled"] = []
        page.on(
            "requestfailed",
            lambda request: seen["cancelled" if request.failure == "net::ERR_ABORTED" else "errors"].append(
                f"failed: {request.url} ({request.failure})"
            ),
        )
        page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))

        # The counts per lifecycle (the node samples them every 5 s: wait for the open order to be counted).
        deadline = time.monotonic() + 30
        while True:
            page.goto(arguments.url + "/instances")
            seen["counts"] = {
                link.get_attribute("data-lifecycle"): int(link.locator("b").inner_text())
                for link in page.locator("#counts a[data-lifecycle]").all()
            }
            if seen["counts"].get("running") == 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        # Find the completed order with the filter form, then open its timeline from the list.
        page.fill("#key", arguments.completed)
        page.click("form.filter button[type=submit]")
        page.wait_for_load_state()
        seen["found"] = [row.get_attribute("data-instance") for row in page.locator("tr[data-instance]").all()]
        page.click(f"tr[data-instance='{arguments.completed}'] a")
        page.wait_for_selector("table.timeline")
        seen["completed"] = {"timeline": timeline(page), "lifecycle": page.inner_text("#lifecycle")}

        # The compensated order: its timeline and its path on the diagram.
        page.goto(f"{arguments.url}/instances/{arguments.compensated}")
        seen["compensated"] = {
            "timeline": timeline(page), "diagram": diagram(page), "lifecycle": page.inner_text("#lifecycle")
        }
        if arguments.screenshot:
            page.screenshot(path=arguments.screenshot, full_page=False)

        # An address with a <script> in it is text on the page, and runs nothing.
        page.goto(f"{arguments.url}/instances/{arguments.scripted}")
        seen["scripted"] = {
            "shown": page.inner_text("#state pre"),
            "scripts": page.locator("main script").count(),
        }

        # Abort the open order: a wrong token is refused and changes nothing; the right one aborts it, and the
        # page shows it failed without a reload.
        page.goto(f"{arguments.url}/instances/{arguments.open}")
        seen["open_before"] = {"lifecycle": page.inner_text("#lifecycle"), "version": page.inner_text("#version")}
        page.fill("#abort-form input[name=reason]", "aborted in the browser test")
        page.fill("#abort-form input[name=token]", "not-the-console-token")
        with page.expect_navigation() as refused:
            page.click("#abort-form button[type=submit]")
        seen["refused"] = {"status": refused.value.status, "problem": page.inner_text("#problem")}
        page.goto(f"{arguments.url}/instances/{arguments.open}")
        seen["open_after_refusal"] = {
            "lifecycle": page.inner_text("#lifecycle"), "version": page.inner_text("#version")
        }
        page.fill("#abort-form input[name=reason]", "aborted in the browser test")
        page.fill("#abort-form input[name=token]", arguments.token)
        page.click("#abort-form button[type=submit]")
        page.wait_for_selector("#notice")
        seen["notice"] = page.inner_text("#notice")
        page.evaluate("window.batonTestMarker = 'same page'")
        page.wait_for_selector("#lifecycle.failed", timeout=30_000)  # the live refresh, no reload
        seen["aborted"] = {
            "lifecycle": page.inner_text("#lifecycle"),
            "reason": page.inner_text("#reason"),
            "same_page": page.evaluate("window.batonTestMarker") == "same page",
        }

        # Bad input: an unknown instance and a malformed filter.
        response = page.goto(f"{arguments.url}/instances/no-such-order")
        seen["unknown"] = {"status": response.status, "problem": page.inner_text("#problem")}
        response = page.goto(f"{arguments.url}/instances?lifecycle=sideways")
        seen["malformed"] = {"status": response.status, "problem": page.inner_text("#problem")}
        browser.close()

    # The two refusals the test provokes are failed loads the browser reports as errors; nothing else may be.
    expected = ("status of 403", "status of 404", "status of 400")
    seen["errors"] = [error for error in seen["errors"] if not any(code in error for code in expected)]
    with open(arguments.out, "w") as output:
        json.dump(seen, output, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
