"""The web page in headless Chromium (Debian `chromium`, driven by Python Playwright).

Upload a song, paste its lyrics (or only one of the two), click the button, and read the
interpretation and the nearest songs off the page. Screenshots are kept in the tests' tmp
folders for a person to look at, and checked: their pixels show the page's result (the caption's
blue rule, the players), not a blank or unstyled page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import RATE, SONGS, tone
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
def catalogue(songs_dir, tmp_path_factory) -> Path:
    """The test songs plus a second rendering of "garden" (other timbre, same lyrics): one work
    that the neighbour lists must show once."""
    folder = tmp_path_factory.mktemp("catalogue")
    for path in songs_dir.iterdir():
        shutil.copy(path, folder / path.name)
    sf.write(folder / "garden-live.wav", tone((523.0, 784.0)) * 0.8, RATE)
    shutil.copy(songs_dir / "garden.txt", folder / "garden-live.txt")
    return folder


@pytest.fixture(scope="module")
def server(model_dir, catalogue, tmp_path_factory) -> Iterator[LiveServer]:
    live = start_server(model_dir, catalogue, tmp_path_factory.mktemp("srv"))
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
    # one work, two renderings: listed once in each list
    for names in (song_names(page, "#by-audio"), song_names(page, "#by-lyrics")):
        assert len({"garden", "garden-live"} & set(names)) == 1, names
    assert page.inner_text("#status").startswith("Done")
    # players: the chosen file, and every neighbour's audio from the server
    assert page.locator("#query-player").is_visible()
    assert page.eval_on_selector("#query-player", "a => a.src.startsWith('blob:')")
    players = page.locator("#by-audio li audio")
    assert players.count() == 5
    src = players.first.get_attribute("src")
    assert src.startswith("/audio?song_id=")
    assert page.request.get(server.url + src).body()[:4] == b"RIFF"
    check_screenshot(page, tmp_path / "page.png", caption=True)


def test_page_searches_by_lyrics_alone(page, server, tmp_path):
    song_id, _, lyrics = SONGS[5]  # road
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('footer').textContent.includes('index of')")
    page.fill("#lyrics", lyrics)
    page.click("#submit")
    page.wait_for_selector("#neighbours:not([hidden])", timeout=60_000)
    assert page.locator("#result").is_hidden()  # no audio: nothing to interpret
    assert page.locator("#by-audio-column").is_hidden()
    names = song_names(page, "#by-lyrics")
    assert len(names) == 5 and song_id in names[:2]
    assert page.locator("#by-lyrics li audio").count() == 5
    assert "lyrics alone" in page.inner_text("#status")
    check_screenshot(page, tmp_path / "lyrics-only.png", caption=False)


def song_names(page, list_selector: str) -> list[str]:
    return page.locator(f"{list_selector} li strong").all_inner_texts()


def check_screenshot(page, path: Path, caption: bool) -> None:
    """Save a full-page screenshot and check what it shows: the page's colours are there (the
    stylesheet loaded) and the caption's accent rule appears exactly when a caption is shown."""
    from PIL import Image

    page.screenshot(path=str(path), full_page=True)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    paper = (np.abs(pixels - [0xFB, 0xFA, 0xF7]).sum(axis=1) < 6).mean()
    accent = (np.abs(pixels - [0x2F, 0x6F, 0x8F]).sum(axis=1) < 12).sum()
    assert paper > 0.5, f"{path}: not the page's background ({paper:.0%})"
    # the button is accent-coloured too (~7000 px); the caption's rule adds 4 px per line
    button = page.locator("#submit").bounding_box()
    button_px = button["width"] * button["height"]
    rule = page.locator("blockquote").bounding_box() if caption else None
    if caption:
        assert accent > button_px * 0.6 + rule["height"] * 3, f"{path}: no caption rule"
    else:
        assert accent < button_px * 1.1, f"{path}: an accent block where no caption should be"


def test_page_shows_server_errors_and_clears_old_results(page, server, catalogue, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('footer').textContent.includes('index of')")
    page.set_input_files("#audio", str(catalogue / "river.wav"))
    page.fill("#lyrics", SONGS[0][2])
    page.click("#submit")
    page.wait_for_selector("#neighbours:not([hidden])", timeout=60_000)
    assert page.inner_text("#caption")
    bogus = tmp_path / "bogus.mp3"
    bogus.write_bytes(b"\x00\x01" * 3000)
    page.set_input_files("#audio", str(bogus))
    page.click("#submit")
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "Error:" in page.inner_text("#status")
    # nothing of the previous song is left under the message
    assert page.locator("#result").is_hidden() and page.inner_text("#caption") == ""
    assert page.locator("#neighbours").is_hidden()
    assert page.locator("#by-audio li").count() == 0 and page.locator("#by-lyrics li").count() == 0
