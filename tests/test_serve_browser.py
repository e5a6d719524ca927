"""The web page in headless Chromium (Debian `chromium`, driven by Python Playwright).

Upload a song, paste its lyrics, click Interpret, and read the interpretation and the nearest
songs off the page. A screenshot is kept in the test's tmp folder for a person to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SONGS
from test_serve import LiveServer, start_server

from recap.inference.captioner import Captioner

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server(model_dir, songs_dir, tmp_path_factory) -> Iterator[LiveServer]:
    live = start_server(model_dir, songs_dir, tmp_path_factory.mktemp("srv"))
    yield live
    live.close()


@pytest.fixture(scope="module")
def page(server) -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # the Makefile installs it (DEBS); never downloaded here
        pytest.fail(f"Debian chromium is missing at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        yield page
        browser.close()


def test_page_interprets_an_uploaded_song(page, server, model_dir, songs_dir, tmp_path):
    song_id, _, lyrics = SONGS[4]  # garden
    expected = Captioner.from_pretrained(model_dir).caption(songs_dir / f"{song_id}.wav", lyrics)

    page.goto(server.url + "/")
    assert page.title().startswith("RECAP")
    page.wait_for_function("document.getElementById('footer').textContent.includes('index of')")
    page.set_input_files("#audio", str(songs_dir / f"{song_id}.wav"))
    page.fill("#lyrics", lyrics)
    page.click("#submit")
    page.wait_for_selector("#neighbours:not([hidden])", timeout=60_000)

    assert page.inner_text("#caption") == expected
    assert "garden" in expected
    by_audio = page.locator("#by-audio li")
    by_lyrics = page.locator("#by-lyrics li")
    assert by_audio.count() == 5 and by_lyrics.count() == 5
    assert "garden" in by_audio.all_inner_texts()[0] + by_audio.all_inner_texts()[1]
    assert page.inner_text("#status").startswith("Done")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_page_shows_server_errors(page, server, tmp_path):
    bogus = tmp_path / "bogus.mp3"
    bogus.write_bytes(b"\x00\x01" * 3000)
    page.goto(server.url + "/")
    page.set_input_files("#audio", str(bogus))
    page.fill("#lyrics", "some words")
    page.click("#submit")
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "Error:" in page.inner_text("#status")
    assert page.locator("#result").is_hidden()
