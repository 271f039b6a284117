"""The web demo in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

RERANKER_SKIP_BROWSER=1 opts out explicitly; otherwise a missing browser is a failure. The
screenshot is saved to $RERANKER_TEST_ARTIFACTS (default: test-artifacts/).
"""

import os
from pathlib import Path

import pytest

if os.environ.get("RERANKER_SKIP_BROWSER") == "1":
    pytest.skip("RERANKER_SKIP_BROWSER=1: browser test opted out", allow_module_level=True)

CHROMIUM = os.environ.get("RERANKER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RERANKER_TEST_ARTIFACTS", "test-artifacts"))


def test_search_in_a_real_browser_shows_both_columns(serve_process):
    server, _ = serve_process
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package, set "
            "RERANKER_CHROMIUM, or opt out with RERANKER_SKIP_BROWSER=1"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server)
        page.fill("#q", "cordless drill")
        page.click("button[type=submit]")
        page.wait_for_selector("#reranked li")
        bm25 = page.locator("#bm25 li")
        reranked = page.locator("#reranked li")
        assert bm25.count() == reranked.count() > 0
        status = page.inner_text("#status")
        assert "retrieval" in status and "rerank" in status and "tiny-test-model" in status
        moves = page.locator("#reranked li .up, #reranked li .down, #reranked li .same")
        assert moves.count() == reranked.count()
        assert (
            "cordless" in bm25.first.inner_text().lower()
            or "drill" in bm25.first.inner_text().lower()
        )
        assert "q=cordless+drill" in page.url  # the search is in the URL, to link and share
        # scraped titles' character references are decoded for display, markup is not parsed
        shown = page.evaluate("shown('Briggs &amp; Stratton &#39;22&quot; <b>x</b>')")
        assert shown == "Briggs & Stratton '22\" <b>x</b>"
        page.screenshot(path=str(ARTIFACTS / "web-demo.png"), full_page=True)

        page.fill("#q", "gardn hose")  # a misspelt word: the status says what was searched
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('status').textContent.includes('→')")
        assert "searched as: gardn → garden" in page.inner_text("#status")

        shared = browser.new_page(viewport={"width": 1200, "height": 800})
        shared.goto(f"{server}/?q=garden+hose")  # a shared link runs its search on load
        shared.wait_for_selector("#reranked li")
        assert shared.input_value("#q") == "garden hose"
        assert shared.locator("#bm25 li").count() > 0
        browser.close()
    assert (ARTIFACTS / "web-demo.png").stat().st_size > 10_000
