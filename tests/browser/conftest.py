"""Browser tests: Playwright drives Debian's Chromium (headless, no browser download)
against a real Daphne process on the test database, at a phone's viewport.

Chromium comes from `apt-get install chromium` (/usr/bin/chromium, or CHROMIUM_PATH).
Without it these tests skip on a laptop and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import IN_CI
from ..processes import daphne, service_env

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"viewport": {"width": 360, "height": 740}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop running in
    # this thread while it is open, which would break every asyncio test after it.
    if not Path(CHROMIUM).exists():
        (pytest.fail if IN_CI else pytest.skip)(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """One Daphne process with its jobs and timers in-process, on the test database and Redis."""
    env = service_env(
        TASK_RUNNER="thread",
        RUN_PERIODIC_IN_PROCESS="true",
        OFFER_TIMEOUT_SECONDS="30",
        PRESENCE_GRACE_SECONDS="30",
        DEMO_ENDPOINTS="true",
    )
    with daphne(env, tmp_path / "daphne.log") as base:
        yield base


@pytest.fixture
def phone(browser: Any, server: str) -> Iterator[Any]:
    """A fresh browser context sized like a phone, with notifications allowed."""
    context = browser.new_context(base_url=server, **PHONE)
    context.grant_permissions(["notifications"], origin=server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    # The app runs under its Content-Security-Policy: anything it blocks fails the test.
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert blocked == [], blocked


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
