"""The status page in a real browser (the system Chromium, driven by Playwright), served by
the app's own HTTP functions over a state directory that holds stored runs."""

from __future__ import annotations

import json

import pytest

from tests.browser import chromium, serve_functions, store_runs
from tests.status_data import HOSTILE_NAMES, SUB, estate, history, report, vault


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app's settings pointing at a local state directory; yields its path."""
    for name, value in {
        "KVF_SUBSCRIPTIONS": SUB,
        "KVF_ADO_GEOGRAPHIES": "Europe",
        "KVF_STATE": str(tmp_path / "state"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FUNCTIONS_WORKER_RUNTIME", raising=False)
    return tmp_path / "state"


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def open_page(browser, url):
    page = browser.new_page()
    page.set_default_timeout(5000)
    problems = []
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(url)
    return page, response, problems


def follow(page, selector):
    """Click a link and wait until the page it leads to has loaded, rows and all: a click
    returns once the navigation starts, and a long table may still be arriving."""
    with page.expect_navigation(wait_until="load"):
        page.click(selector)


def test_summary_filters_and_paging_in_a_browser(app, browser):
    runs = history(days=40)
    stored = report(
        estate(450),
        warnings=["IP source refused (api is down); using the last good snapshot, version 8"],
    )
    store_runs(app, runs, {runs[0].name: stored})
    counts = stored.counts
    with serve_functions() as base:
        page, response, problems = open_page(browser, f"{base}/api/status")
        assert response.status == 200
        assert "default-src 'none'" in response.headers["content-security-policy"]
        shown = {
            k: int(page.text_content(f'[data-count="{k}"]'))
            for k in ("in-scope", "compliant", "drifted", "skipped", "failed")
        }
        assert shown == {
            "in-scope": 450,
            "compliant": counts["updated"] + counts["unchanged"],
            "drifted": counts["planned"],
            "skipped": counts["skipped"],
            "failed": counts["failed"],
        }
        # the nonce'd style applied (a blocked one would leave the header unstyled)
        assert (
            page.eval_on_selector("header", "e => getComputedStyle(e).borderBottomStyle") == "solid"
        )
        assert page.locator("svg rect").count() > 0
        assert "IP source refused" in page.text_content('[data-kind="source"]')

        follow(page, f"text=failed ({counts['failed']})")
        assert "outcome=failed" in page.url
        outcomes = page.eval_on_selector_all(
            "tbody tr[data-outcome]", "rs => rs.map(r => r.dataset.outcome)"
        )
        assert outcomes == ["failed"] * counts["failed"]

        follow(page, "nav >> text=all")
        follow(page, "nav >> text=name")
        assert page.locator("tbody tr[data-outcome]").count() == 200
        follow(page, "a[rel=next]")
        follow(page, "a[rel=next]")
        assert "page 3 of 3" in page.text_content('[data-field="matching"]')
        assert page.locator("tbody tr[data-outcome]").count() == 50
        assert page.text_content("tbody tr:last-child td.vault") == "kv-00449"

        assert problems == []  # no CSP violation, no failed load, no script error

        follow(page, f"a[href^='runs/{runs[0].name}']")
        assert json.loads(page.text_content("body"))["counts"]["failed"] == counts["failed"]
        assert page.goto(f"{base}/api/runs/..%2Fledger").status == 404


def test_hostile_vault_names_show_as_text(app, browser):
    vaults = [vault(name, "failed", reason=name, error=name) for name in HOSTILE_NAMES]
    runs = history(days=2)
    store_runs(app, runs, {runs[0].name: report(vaults, warnings=list(HOSTILE_NAMES))})
    with serve_functions() as base:
        page, response, problems = open_page(browser, f"{base}/api/status?sort=vault")
        assert response.status == 200
        assert page.title() == "kvfirewall status"  # no injected script ran
        assert page.locator("script, img, iframe, form").count() == 0
        cells = page.eval_on_selector_all("td.vault bdi", "bs => bs.map(b => b.textContent)")
        expected = sorted(HOSTILE_NAMES, key=str.lower)
        assert cells == [n if len(n) <= 120 else n[:120] + "…" for n in expected]
        assert page.get_attribute("td.vault bdi[title]", "title") == "x" * 10_000
        assert problems == []
