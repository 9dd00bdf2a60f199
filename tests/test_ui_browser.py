"""The status page in a real browser: Debian's chromium (`make test` installs it), driven by
Playwright for Python (a dev extra; its own browser downloads are never used), against a real
Konsilium serving the real SmolLM2 (the session `server`, tests/conftest.py).

The page is loaded, the model's row must show its state, a chat sent through the API must
appear in the recent requests (the page polls every second), and the route-explain box must
show the router's decision. A screenshot is saved whatever the outcome, under the directory the
test prints (`.cache/artefacts/test_ui_browser/`); with `KONSILIUM_UI_SCREENSHOT=docs/ui.png`
it is also written there (the README's picture)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.servers import MODEL_ID, ROOT, Server

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = ROOT / ".cache" / "artefacts" / "test_ui_browser"
WAIT_MS = 20_000  # the page polls every second; a loaded 2-core machine can be slow to paint
PROMPT = "Check this login handler for SQL injection and XSS vulnerabilities."

pytestmark = pytest.mark.e2e


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is not installed: `make test` installs it (Debian's chromium)")
    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page that records every script error; the test fails on any."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield opened
        assert errors == [], "the page's scripts reported errors"
    finally:
        context.close()


def chat(server: Server, request_id: str, content: str, model: str = "auto", *, stream: bool = False) -> None:
    """One chat through the API, read to its end."""
    with openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120) as sdk:
        reply = sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0,
            stream=stream, extra_headers={"x-request-id": request_id},
        )  # fmt: skip
        assert reply.status_code == 200
        reply.http_response.read()


def screenshot(page: Page) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / "ui.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"status page screenshot: {path}")  # where the artefact is, in the test's output
    wanted = os.environ.get("KONSILIUM_UI_SCREENSHOT")
    if wanted:
        shutil.copyfile(path, ROOT / wanted)
    return path


def test_the_status_page_shows_the_model_and_requests_live(server: Server, page: Page) -> None:
    try:
        page.goto(f"{server.base_url}/ui")
        row = page.locator(f'#models tr[data-model="{MODEL_ID}"]')
        row.wait_for(timeout=WAIT_MS)
        expect(row.locator(".state")).to_have_text("ready", timeout=WAIT_MS)
        expect(row.locator(".breaker")).to_have_text("closed")
        expect(page.locator("#live")).to_have_attribute("data-live", "ok", timeout=WAIT_MS)

        request_id = f"ui-{uuid.uuid4().hex}"
        chat(server, request_id, PROMPT)
        chat(server, f"ui-{uuid.uuid4().hex}", "Write a unit test for this parser.", MODEL_ID, stream=True)
        recent = page.locator(f'#recent tr[data-request-id="{request_id}"]')
        recent.wait_for(timeout=WAIT_MS)
        expect(recent.locator(".model")).to_have_text(MODEL_ID)
        expect(recent.locator(".role")).to_have_text("security")
        expect(recent.locator(".status")).to_have_text("200")
        expect(recent.locator(".tokens")).to_have_text(re.compile(r"^\d+ → [1-8]$"))  # max_tokens 8
        expect(recent.locator(".route")).not_to_have_text("—")
        assert PROMPT not in page.content(), "no prompt on the page unless content recording is on"

        page.fill("#explain-model", "konsilium")  # a council: each seat's call and the Director's
        page.fill("#explain-prompt", "Is storing passwords with MD5 fine?")
        page.click("#explain-button")
        seats = page.locator("#explain-result tbody tr")
        expect(seats).to_have_count(5, timeout=WAIT_MS)  # the default council's four agents and the Director
        expect(seats.locator(".role")).to_have_text(["dev", "security", "qa", "architect", "director"])

        page.fill("#explain-model", "auto")
        page.fill("#explain-prompt", "проверь уязвимости в авторизации")
        page.click("#explain-button")
        decision = page.locator("#explain-result tbody tr")
        expect(decision).to_have_count(1, timeout=WAIT_MS)
        expect(decision.locator(".role")).to_have_text("security", timeout=WAIT_MS)
        expect(decision.locator(".target")).to_have_text(MODEL_ID)
    finally:
        screenshot(page)
