"""Browser fixtures: the app on 127.0.0.1 (werkzeug, in a thread) driven by Playwright.

Playwright drives Debian's Chromium (``/usr/bin/chromium``), never a downloaded browser. The
tests skip, saying why, where that Chromium is absent; CI (``.ci/run``) installs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (skips when /usr/bin/chromium is missing)."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's Chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app served on a free 127.0.0.1 port; yields its base URL."""
    from werkzeug.serving import make_server

    before = set(threading.enumerate())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    # Request threads are daemons the server does not wait for; a Live Feed stream ends within
    # FEED_STREAM_SECONDS. Wait for them so that no database connection outlives the test.
    for worker in set(threading.enumerate()) - before:
        worker.join(timeout=10)


@pytest.fixture
def page(browser: Any, live_server: str) -> Iterator[Any]:
    """A fresh browser tab (own cookies) on the live server; closed before the server stops."""
    context = browser.new_context(base_url=live_server, viewport={"width": 1280, "height": 900},
                                  timezone_id="Europe/Paris", locale="en-GB")
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
