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

from recap.inference.captioner import Captioner
from recap.inference.generate import DecodeSettings
from recap.inference.indexing import Searcher, build_index
from recap.inference.serve import ServeSettings, create_app
from recap.utils import RecapError


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
    assert (h["windows"], h["trained_windows"]) == (1, 1)  # the model's count by default
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
    quoted = client.post(
        "/caption",
        files=upload(songs_dir, "storm"),
        data={"lyrics": lyrics, "quote_lyrics": "true"},
    )
    assert quoted.status_code == 200, quoted.text
    assert quoted.json()["caption"] == Captioner.from_pretrained(model_dir).caption(
        songs_dir / "storm.wav", lyrics, quote_lyrics=True
    )
    known = client.post(
        "/caption",
        files=upload(songs_dir, "storm"),
        data={"lyrics": lyrics, "known_words": "true"},
    )
    assert known.status_code == 200, known.text
    assert known.json()["caption"] == Captioner.from_pretrained(model_dir).caption(
        songs_dir / "storm.wav", lyrics, known_words=True
    )


def test_caption_without_lyrics_is_audio_only(client, model_dir, songs_dir):
    expected = Captioner.from_pretrained(model_dir).caption(songs_dir / "storm.wav")
    for data in ({}, {"lyrics": "   "}):  # no field, or a blank one
        r = client.post("/caption", files=upload(songs_dir, "storm"), data=data)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["caption"] == expected and body["lyrics"] is False and body["windows"] == 1


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
            [captioner.load_waveform(songs_dir / f"{sid}.wav")], [lyr], DecodeSettings()
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


def test_concurrent_requests_are_batched(model_dir, songs_dir, tmp_path):
    """Requests that arrive together share one model call, each gets its own row, songs heard in
    different numbers of windows share a call, and one refused request fails alone."""
    captioner = Captioner.from_pretrained(model_dir, device="cpu", windows=3)
    # Songs of 2 s, 30 s and 45 s: heard in 1, 2 and 3 windows of 15 s.
    for sid, seconds in (("river", 30.0), ("dance", 45.0)):
        freqs = next(f for s, f, _ in SONGS if s == sid)
        sf.write(tmp_path / f"{sid}.wav", tone(freqs, seconds), RATE)
    for sid, _, _ in SONGS:
        if not (tmp_path / f"{sid}.wav").exists():
            (tmp_path / f"{sid}.wav").write_bytes((songs_dir / f"{sid}.wav").read_bytes())
    expected = {
        sid: captioner.caption_waveforms(
            [captioner.load_waveform(tmp_path / f"{sid}.wav")], [lyr], DecodeSettings()
        )[0]
        for sid, _, lyr in SONGS
    }
    sizes: list[int] = []
    windows: list[set[int]] = []
    batch_call = captioner.caption_waveforms

    def spy(waves, lyrics, options):
        sizes.append(len(waves))
        windows.append({w.shape[0] for w in waves})
        time.sleep(0.2)  # a slow model: the other requests queue meanwhile
        if len(waves) > 1 and "refuse me" in lyrics:  # the model refuses one item of a batch
            raise RecapError("cannot take item 'refuse me'")
        if lyrics == ["refuse me"]:
            raise RecapError("the music encoder gave NaN values")
        return batch_call(waves, lyrics, options)

    captioner.caption_waveforms = spy
    settings = ServeSettings(max_batch_size=4, max_wait_ms=200)
    live = LiveServer(create_app(captioner, settings=settings))
    jobs = [(sid, lyr) for sid, _, lyr in SONGS] * 2  # 12 requests, 6 distinct captions

    def post(sid, lyr):
        return httpx.post(f"{live.url}/caption", files=upload(tmp_path, sid),
                          data={"lyrics": lyr}, timeout=60)  # fmt: skip

    def call(job):
        r = post(*job)
        assert r.status_code == 200, r.text
        return job[0], r.json()

    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            got = list(pool.map(call, jobs))
        first, first_windows = list(sizes), list(windows)
        # one bad request in a batch fails alone; the others still get their captions
        bad = [("river", SONGS[0][2]), ("winter", "refuse me")] * 2
        with ThreadPoolExecutor(max_workers=len(bad)) as pool:
            answers = list(pool.map(lambda j: post(*j), bad))
    finally:
        live.close()
    assert all(body["caption"] == expected[sid] for sid, body in got)
    assert {sid: body["windows"] for sid, body in got} == {
        sid: {"river": 2, "dance": 3}.get(sid, 1) for sid, _, _ in SONGS
    }
    assert sum(first) == len(jobs) and max(first) > 1 and max(first) <= 4
    assert any(len(w) > 1 for w in first_windows)  # a call held songs of different lengths
    assert [r.status_code for r in answers] == [200, 422, 200, 422]
    assert answers[1].json()["error"]["code"] == "unprocessable_input"


def test_lyrics_only_model_refuses_a_song_without_lyrics(model_dir, songs_dir):
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    tokenizer = Captioner.from_pretrained(model_dir, device="cpu").tokenizer
    cfg = RecapConfig.preset("bart", "tiny", vocab_size=len(tokenizer))
    bart = Captioner(RecapModel(cfg).eval(), tokenizer)
    from starlette.testclient import TestClient

    with TestClient(create_app(bart)) as c:
        for data in ({}, {"lyrics": "  "}):
            r = c.post("/caption", files=upload(songs_dir, "river"), data=data)
            assert r.status_code == 422 and r.json()["error"]["code"] == "empty_lyrics"
            assert "hears no audio" in r.json()["error"]["message"]
        r = c.post("/caption", files=upload(songs_dir, "river"), data={"lyrics": "the river"})
        assert r.status_code == 200 and r.json()["lyrics"] is True


def test_batching_off_runs_one_request_per_call(model_dir, songs_dir):
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    sizes: list[int] = []
    batch_call = captioner.caption_waveforms
    captioner.caption_waveforms = lambda w, ly, o: (sizes.append(len(w)), batch_call(w, ly, o))[1]
    app = create_app(captioner, settings=ServeSettings(max_batch_size=1))
    from starlette.testclient import TestClient

    with TestClient(app) as c, ThreadPoolExecutor(max_workers=4) as pool:
        rs = list(pool.map(lambda sid: c.post("/caption", files=upload(songs_dir, sid),
                                               data={"lyrics": "words"}), ["river"] * 4))  # fmt: skip
    assert [r.status_code for r in rs] == [200] * 4 and sizes == [1, 1, 1, 1]


def test_neighbour_audio_is_served_from_the_index_only(client, songs_dir):
    r = client.post("/search", data={"lyrics": SONGS[4][2], "k": "3"})
    hits = r.json()["results"]
    assert all(h["audio_url"].startswith("/audio?song_id=") for h in hits)
    audio = client.get(hits[0]["audio_url"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/x-wav"
    assert audio.content == (songs_dir / f"{hits[0]['song_id']}.wav").read_bytes()
    for bad in ("nowhere", "../river.wav", str(songs_dir / "river.wav"), "/etc/passwd"):
        r = client.get("/audio", params={"song_id": bad})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/audio").status_code == 422  # no song_id at all


def test_search_without_an_index(model_dir, songs_dir):
    live = LiveServer(create_app(Captioner.from_pretrained(model_dir)))
    try:
        r = httpx.post(f"{live.url}/search", data={"lyrics": "words"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_index"
        assert httpx.get(f"{live.url}/health").json()["index"] is None
    finally:
        live.close()


# ----------------------------------------------------------------------------- hostile requests
def _asgi_post(app, chunks, headers=()) -> tuple[int, dict, int]:
    """POST /caption straight into the ASGI app, the body in `chunks` as a chunked upload
    would arrive; returns (status, JSON body, bytes the app pulled from the client)."""
    import asyncio
    import json

    pulled = 0
    it = iter(chunks)
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    boundary = b"xyz"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/caption", "raw_path": b"/caption", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary),
                    (b"transfer-encoding", b"chunked"), *headers],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_chunked_upload_is_cut_off_at_the_limit(model_dir):
    app = create_app(Captioner.from_pretrained(model_dir), settings=ServeSettings(max_upload_mb=1))
    head = (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n")  # fmt: skip
    chunk = b"\0" * (64 * 1024)
    total = 32 * 1024 * 1024  # a hostile client streams on; 32 MB shows the cut-off

    status, body, pulled = _asgi_post(app, [head] + [chunk] * (total // len(chunk)))
    assert status == 413 and body["error"]["code"] == "file_too_large"
    assert pulled < 2 * 1024 * 1024  # stopped at the limit, not after 32 MB
    # a declared Content-Length over the limit is refused before any byte is read
    status, body, pulled = _asgi_post(app, [head, chunk], [(b"content-length", b"999999999")])
    assert (status, pulled) == (413, 0)


def test_decode_options_are_checked_against_the_model(client, songs_dir):
    lyr = {"lyrics": "some words"}
    r = client.post("/caption", files=upload(songs_dir, "river"),
                    data={**lyr, "do_sample": "true", "seed": str(2**64)})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_option"
    assert "seed" in r.json()["error"]["message"]
    r = client.post("/caption", files=upload(songs_dir, "river"),
                    data={**lyr, "max_new_tokens": "500"})  # fmt: skip
    assert r.status_code == 422 and "position limit" in r.json()["error"]["message"]


def test_error_messages_show_no_server_internals(client, songs_dir, tmp_path):
    garbage = {"audio": ("song.mp3", b"\xff\x00" * 4000, "audio/mpeg")}
    r = client.post("/caption", files=garbage, data={"lyrics": "words"})
    message = r.json()["error"]["message"]
    assert r.status_code == 422 and "song.mp3" in message
    assert "/tmp" not in message and "does not exist" not in message
    loud = tmp_path / "loud.wav"
    sf.write(loud, tone((440.0,)) * 1e30, RATE, subtype="FLOAT")
    r = client.post("/caption", files={"audio": ("loud.wav", loud.read_bytes(), "audio/wav")},
                    data={"lyrics": "words"})  # fmt: skip
    message = r.json()["error"]["message"]
    assert r.status_code == 422 and "loud.wav" in message and "[-1, 1]" in message
    assert "/tmp" not in message


def test_unexpected_failures_are_json_500s_without_internals(model_dir, songs_dir):
    from starlette.testclient import TestClient

    captioner = Captioner.from_pretrained(model_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path exploded")

    captioner.caption_waveforms = broken
    with TestClient(create_app(captioner), raise_server_exceptions=False) as c:
        r = c.post("/caption", files=upload(songs_dir, "river"), data={"lyrics": "words"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text
