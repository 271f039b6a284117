"""The web demo in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

RERANKER_SKIP_BROWSER=1 opts out explicitly; otherwise a missing browser is a failure. The
screenshot is saved to $RERANKER_TEST_ARTIFACTS (default: test-artifacts/).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

if os.environ.get("RERANKER_SKIP_BROWSER") == "1":
    pytest.skip("RERANKER_SKIP_BROWSER=1: browser test opted out", allow_module_level=True)

CHROMIUM = os.environ.get("RERANKER_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RERANKER_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def server(built_index, tiny_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reranker.cli",
            "serve",
            "--index-dir",
            str(built_index),
            "--model",
            str(tiny_model),
            "--port",
            str(port),
        ],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_search_in_a_real_browser_shows_both_columns(server):
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
        page.screenshot(path=str(ARTIFACTS / "web-demo.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "web-demo.png").stat().st_size > 10_000
