"""`recap serve`: the real server (uvicorn on 127.0.0.1, a free port) driven over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from support import RATE, SONGS, tone

from recap.captioner import Captioner, DecodeOptions
from recap.index import Searcher, build_index
from recap.serve import ServeSettings, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a daemon thread; `url` once it answers, stopped by `close()`."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(model_dir: Path, songs_dir: Path, tmp: Path, **limits) -> LiveServer:
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    index, _ = build_index(captioner, songs_dir, tmp / "index", progress=False)
    searcher = Searcher(index, captioner)
    settings = ServeSettings(**limits)
    return LiveServer(create_app(captioner, searcher, settings))


@pytest.fixture(scope="module")
def server(model_dir, songs_dir, tmp_path_factory) -> Iterator[LiveServer]:
    live = start_server(
        model_dir, songs_dir, tmp_path_factory.mktemp("srv"), max_upload_mb=1.0, max_duration_s=60
    )
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def upload(songs_dir: Path, song_id: str) -> dict:
    return {"audio": (f"{song_id}.wav", (songs_dir / f"{song_id}.wav").read_bytes(), "audio/wav")}


def test_health_openapi_and_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["index"]["songs"] == len(SONGS)
    assert h["limits"]["max_upload_mb"] == 1.0
    spec = client.get("/openapi.json").json()
    assert {"/caption", "/search", "/health"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "Interpret" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_caption_matches_the_python_api(client, model_dir, songs_dir):
    lyrics = SONGS[3][2]
    r = client.post("/caption", files=upload(songs_dir, "storm"), data={"lyrics": lyrics})
    assert r.status_code == 200, r.text
    expected = Captioner.from_pretrained(model_dir).caption(songs_dir / "storm.wav", lyrics)
    assert r.json()["caption"] == expected and "storm" in expected
    short = client.post(
        "/caption", files=upload(songs_dir, "storm"), data={"lyrics": lyrics, "max_new_tokens": "2"}
    )
    assert len(short.json()["caption"].split()) < len(expected.split())


def test_search_both_ways(client, songs_dir):
    r = client.post("/search", files=upload(songs_dir, "garden"), data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "audio" and len(body["results"]) == 3
    assert "garden" in [h["song_id"] for h in body["results"][:2]]
    r = client.post("/search", data={"lyrics": SONGS[5][2], "k": "2"})
    assert r.json()["query"] == "lyrics" and "road" in [h["song_id"] for h in r.json()["results"]]


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("wrong_type", 415, "unsupported_media_type"),
        ("corrupt", 422, "unreadable_audio"),
        ("empty_file", 422, "unreadable_audio"),
        ("empty_lyrics", 422, "empty_lyrics"),
        ("missing_lyrics", 422, "invalid_request"),
        ("missing_audio", 422, "invalid_request"),
        ("oversized", 413, "file_too_large"),
        ("too_long", 413, "audio_too_long"),
        ("bad_option", 422, "invalid_option"),
        ("bad_number", 422, "invalid_request"),
        ("search_both", 422, "invalid_request"),
        ("search_neither", 422, "invalid_request"),
        ("not_found", 404, "not_found"),
    ],
)
def test_bad_requests_get_clear_json_errors(client, songs_dir, tmp_path, case, status, code):
    good = upload(songs_dir, "river")
    lyr = {"lyrics": "some words"}
    if case == "wrong_type":
        r = client.post(
            "/caption", files={"audio": ("notes.txt", b"hello", "text/plain")}, data=lyr
        )
    elif case == "corrupt":
        r = client.post(
            "/caption", files={"audio": ("x.mp3", b"\xff\x00" * 4000, "audio/mpeg")}, data=lyr
        )
    elif case == "empty_file":
        r = client.post("/caption", files={"audio": ("x.wav", b"", "audio/wav")}, data=lyr)
    elif case == "empty_lyrics":
        r = client.post("/caption", files=good, data={"lyrics": "   "})
    elif case == "missing_lyrics":
        r = client.post("/caption", files=good)
    elif case == "missing_audio":
        r = client.post("/caption", data=lyr)
    elif case == "oversized":
        big = np.zeros(2 * RATE * 15, dtype=np.int16) + 1  # ~1.3 MB > the 1 MB limit
        path = tmp_path / "big.wav"
        sf.write(path, big, RATE)
        r = client.post(
            "/caption", files={"audio": ("big.wav", path.read_bytes(), "audio/wav")}, data=lyr
        )
    elif case == "too_long":
        path = tmp_path / "long.flac"  # 90 s of a quiet tone: small as FLAC, over the 60 s limit
        sf.write(path, tone((200.0,), seconds=90, rate=8000) * 0.01, 8000)
        r = client.post(
            "/caption", files={"audio": ("long.flac", path.read_bytes(), "audio/flac")}, data=lyr
        )
    elif case == "bad_option":
        r = client.post("/caption", files=good, data={**lyr, "num_beams": "0"})
    elif case == "bad_number":
        r = client.post("/caption", files=good, data={**lyr, "num_beams": "many"})
    elif case == "search_both":
        r = client.post("/search", files=good, data=lyr)
    elif case == "search_neither":
        r = client.post("/search", data={"k": "3"})
    else:
        r = client.get("/nowhere")
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_concurrent_requests_get_their_own_results(client, model_dir, songs_dir):
    captioner = Captioner.from_pretrained(model_dir)
    jobs = [(sid, lyr) for sid, _, lyr in SONGS] * 2
    expected = {
        sid: captioner.caption_waveforms(
            [captioner.load_waveform(songs_dir / f"{sid}.wav")], [lyr], DecodeOptions()
        )[0]
        for sid, lyr in jobs
    }
    assert len(set(expected.values())) > 1

    def call(job):
        sid, lyr = job
        r = client.post("/caption", files=upload(songs_dir, sid), data={"lyrics": lyr})
        return sid, r.json()["caption"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(call, jobs))
    assert all(caption == expected[sid] for sid, caption in got)


def test_search_without_an_index(model_dir, songs_dir):
    live = LiveServer(create_app(Captioner.from_pretrained(model_dir)))
    try:
        r = httpx.post(f"{live.url}/search", data={"lyrics": "words"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_index"
        assert httpx.get(f"{live.url}/health").json()["index"] is None
    finally:
        live.close()
