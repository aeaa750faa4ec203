"""Headless Chromium for tests of HTML pages: Debian's ``chromium`` package driven by
Playwright's Python package. Playwright never downloads a browser of its own here
(``scripts/bootstrap`` installs Debian's when it runs as root); without it a test fails saying
how to install it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = (
    f"Debian's chromium is not installed ({CHROMIUM} is missing): scripts/bootstrap installs it "
    "when run as root; otherwise run `sudo apt-get install -y --no-install-recommends chromium`"
)
# Nothing that would reach outside: no updates, no sync, no QUIC probes, no field trials.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-field-trial-config",
]


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(INSTALL)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Traffic:
    """What a page asked for: every request's URL, those stopped for leaving ``origin``, the
    answers with an error status (status, path), and the errors of its scripts."""

    origin: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def route(self, route: Route) -> None:
        url = route.request.url
        if _origin(url) == self.origin or url.startswith("data:"):
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort("internetdisconnected")

    def request(self, request: Request) -> None:
        self.requests.append(request.url)

    def response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append((response.status, urlsplit(response.url).path))

    def console(self, message: ConsoleMessage) -> None:
        # Chromium logs every error status as "Failed to load resource": those are in `failed`.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"{message.text} ({message.location})")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.asynccontextmanager
async def page_on(
    browser: Browser, origin: str, **context_options: object
) -> AsyncIterator[tuple[Page, Traffic]]:
    """A page in a fresh context whose requests may only go to ``origin`` (others are aborted
    and listed in ``Traffic.blocked``), 1280 px wide."""
    traffic = Traffic(origin)
    context: BrowserContext = await browser.new_context(
        viewport={"width": 1280, "height": 900},
        service_workers="block",
        **context_options,  # type: ignore[arg-type]
    )
    try:
        await context.route("**/*", traffic.route)
        page = await context.new_page()
        page.on("request", traffic.request)
        page.on("response", traffic.response)
        page.on("console", traffic.console)
        page.on("pageerror", lambda error: traffic.errors.append(str(error)))
        yield page, traffic
    finally:
        await context.close()
