"""/docs in a real browser with no way out: Swagger UI renders every /mediator route from what this
server serves (a request to any other host is aborted and fails the test)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cht_interop.app import create_app
from tests.conftest import CLIENT_AUTH, make_settings
from tests.support.live import serve_in_thread

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str) -> Iterator[str]:
    app = create_app(make_settings(tmp_path, sqlite_url), run_worker=False)
    with serve_in_thread(app) as url:
        yield url


def test_swagger_ui_renders_offline_behind_the_login(server: str) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Route, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/setup-extra installs it)"
    outside: list[str] = []

    def only_this_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(server).netloc:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                browser.new_page().goto(f"{server}/docs")  # no login: the browser gets no page
            user, password = CLIENT_AUTH
            context = browser.new_context(http_credentials={"username": user, "password": password})
            page: Any = context.new_page()
            page.route("**/*", only_this_server)
            page.goto(f"{server}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = set(page.locator(".opblock-summary-path").all_inner_texts())
            title = page.locator(".info .title").inner_text()
            metadata_link = page.locator(f'.info a[href="{server}/fhir/metadata"]').count()
        finally:
            browser.close()
    assert not outside, f"the page reached beyond this server: {outside}"
    assert "cht-interop" in title
    assert metadata_link == 1
    assert {"/mediator/endpoint", "/mediator/service-request", "/mediator/encounter"} <= {
        p.replace("\u200b", "") for p in paths
    }
