"""`recap serve`: an HTTP API and a small web page over a Captioner (and optionally an index).

    POST /caption   multipart: audio (file), optional lyrics (text; none: audio-only), decoding fields
    POST /search    multipart: audio (file) OR lyrics (text), k, distinct
    GET  /audio     ?song_id=…: a catalogue song's audio, for the page's players (only the
                    files the index was built from; the client never names a path)
    GET  /health    model, index and limits
    GET  /          the web page (serve_static/); GET /openapi.json and /docs come from FastAPI

Every bad request gets a JSON body `{"error": {"code": ..., "message": ...}}` with a proper
status: 413 (upload, duration or lyrics over the limit), 415 (not an audio file), 422 (corrupt
audio, empty lyrics, bad option, missing field), 503 (search without an index); anything
unexpected is a 500 in the same shape, without internals. The body limit counts the bytes as
they arrive (`BodyLimit`), so a chunked upload without Content-Length is cut off at the limit
too. Messages never show the server's temporary file names.

The model is not thread-safe in a useful sense (and sampling seeds torch's global generator),
so every model call holds one lock. Caption requests are batched (`CaptionBatcher`): uploads
are decoded in parallel by the request threads, then queued; one worker thread takes what is
queued (up to `max_batch_size` requests, waiting at most `max_wait_ms` for more) and captions
them in one `Captioner.caption_waveforms` call, and each request gets its own row of the result
(songs heard in different numbers of windows are padded, with a music mask, by `generate_texts`).
A batch one model call cannot take (an item it refuses) is retried one request at a time, so
one bad request fails alone. Requests with a sampling seed run alone: their caption then does not
depend on what else was in the queue.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# definition time, and they name classes imported inside create_app (fastapi is an extra).
import contextlib
import dataclasses
import logging
import mimetypes
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recap.data.audio import decode_error_reason
from recap.inference.captioner import Captioner
from recap.inference.generate import DecodeSettings
from recap.inference.inputs import AUDIO_SUFFIXES, no_audio_message
from recap.utils import RecapError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("serve_static")
_CHUNK = 1 << 20
# Multipart framing and the text fields ride along with the file: allow this much on top.
_FORM_OVERHEAD = 256 * 1024


@dataclass
class ServeSettings:
    max_upload_mb: float = 20.0
    max_duration_s: float = 900.0  # decoding reads only the excerpt, but a limit stops abuse
    max_lyrics_chars: int = 20_000
    max_beams: int = 8
    max_new_tokens: int = 512
    max_k: int = 100
    # Batching of concurrent caption requests (max_batch_size 1 turns it off).
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64  # requests waiting beyond this are refused (503) rather than queued

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """A bad request: HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class _Job:
    wave: Any  # (W, T) float32 windows (songs in one batch may differ in W)
    lyrics: str | None
    options: DecodeSettings
    future: Future


class CaptionBatcher:
    """Captions concurrent requests in batches: a short queue, one worker thread.

    `caption()` blocks the calling (request) thread until its caption is made. The worker takes
    the first queued job, waits up to `max_wait_ms` for more (never past `max_batch_size`), and
    runs each group of jobs with equal decoding options as one `caption_waveforms` call under
    `lock` (shared with the server's other model calls).
    """

    def __init__(self, captioner: Captioner, lock: threading.Lock, settings: ServeSettings):
        if settings.max_batch_size < 1 or settings.max_wait_ms < 0 or settings.max_queue < 1:
            raise RecapError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.captioner, self.lock = captioner, lock
        self.max_batch = settings.max_batch_size
        self.max_wait = settings.max_wait_ms / 1000
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=settings.max_queue)
        self.thread = threading.Thread(target=self._work, name="recap-batcher", daemon=True)
        self.thread.start()

    def caption(self, wave: Any, lyrics: str | None, options: DecodeSettings) -> str:
        job = _Job(wave, lyrics, options, Future())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise ApiError(
                503, "busy", "the server is busy (caption queue full); try again shortly"
            ) from None
        return job.future.result()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    # Whatever queued while the last batch ran is taken without waiting.
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            for group in _groups(batch):
                self._run(group)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        try:
            with self.lock:
                captions = self.captioner.caption_waveforms(
                    [j.wave for j in jobs], [j.lyrics for j in jobs], jobs[0].options
                )
        except Exception as exc:  # noqa: BLE001 - handed to the request that caused it
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
            else:  # find the job at fault; the others still get their captions
                for j in jobs:
                    self._run([j])
            return
        for j, text in zip(jobs, captions):
            j.future.set_result(text)


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one model call: equal decoding options, and no sampling seed (a
    seeded job alone draws the same numbers whatever else is queued)."""
    groups: dict[Any, list[_Job]] = {}
    for n, job in enumerate(jobs):
        key = ("seed", n) if job.options.seed is not None else dataclasses.astuple(job.options)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def create_app(
    captioner: Captioner, searcher: Any = None, settings: ServeSettings | None = None
) -> Any:
    """The FastAPI application. `searcher`: a recap.inference.indexing.Searcher sharing `captioner`, or None."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import recap

    settings = settings or ServeSettings()
    lock = threading.Lock()  # one model call at a time (see the module docstring)
    batcher = CaptionBatcher(captioner, lock, settings)
    # The only files GET /audio serves: those the index was built from, by song id.
    audio_files: dict[str, str] = {}
    if searcher is not None:
        for entry in searcher.index.songs:
            if entry.audio:
                audio_files.setdefault(entry.song_id, entry.audio)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        batcher.close()

    app = FastAPI(
        title="RECAP",
        version=recap.__version__,
        description="Interpret songs from their audio and lyrics; search songs across modalities.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    # -- errors: one JSON shape for all of them
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a bad request: logged with its traceback here, and answered in the same
        # JSON shape without internals (paths, tracebacks) in the text.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "the server failed to handle this request"),
            status_code=500,
        )

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + _FORM_OVERHEAD,
                       message=_too_large_message(settings))  # fmt: skip

    # -- request pieces
    def read_audio(upload: UploadFile) -> Any:
        """The upload's 15 s excerpt; raises ApiError for a wrong type, size or content."""
        import soundfile as sf

        suffix = Path(upload.filename or "").suffix.lower()
        ctype = (upload.content_type or "").lower()
        if suffix not in AUDIO_SUFFIXES and not ctype.startswith("audio/"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{upload.filename or 'the upload'} ({ctype or 'no type'}) is not an audio file; "
                f"send one of {', '.join(AUDIO_SUFFIXES)}",
            )
        name = upload.filename or "the upload"
        with tempfile.NamedTemporaryFile(suffix=suffix or ".audio") as tmp:
            size = 0
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:  # the file alone, within the body limit
                    raise ApiError(413, "file_too_large", _too_large_message(settings))
                tmp.write(chunk)
            tmp.flush()
            if size == 0:
                raise ApiError(422, "unreadable_audio", "the audio file is empty")
            try:
                duration = sf.info(tmp.name).duration
            except Exception as exc:  # libsndfile: unknown format, garbage header ...
                raise ApiError(
                    422, "unreadable_audio", f"cannot decode {name}: {decode_error_reason(exc)}"
                ) from exc
            if duration > settings.max_duration_s:
                raise ApiError(
                    413,
                    "audio_too_long",
                    f"the audio lasts {duration:.0f} s; the limit is {settings.max_duration_s:.0f} s",
                )
            try:
                return captioner.load_waveform(tmp.name)
            except RecapError as exc:
                # The message names the file it read: the client's name, not our temporary one.
                message = str(exc).replace(tmp.name, name)
                if not message.startswith(name):
                    message = f"{name}: {message}"
                raise ApiError(422, "unreadable_audio", message) from exc

    def check_lyrics(text: str | None, required: bool = True) -> str | None:
        """The lyrics, or None when there are none (an error when `required`)."""
        if text is None or not text.strip():
            if required:
                raise ApiError(422, "empty_lyrics", "lyrics are missing or empty")
            return None
        if len(text) > settings.max_lyrics_chars:
            raise ApiError(
                413, "lyrics_too_long", f"lyrics exceed {settings.max_lyrics_chars} characters"
            )
        return text

    def decode_options(**values: Any) -> DecodeSettings:
        try:
            options = captioner.settings(**values)
        except RecapError as exc:
            raise ApiError(422, "invalid_option", str(exc)) from exc
        if options.num_beams > settings.max_beams:
            raise ApiError(422, "invalid_option", f"num_beams is limited to {settings.max_beams}")
        if options.max_new_tokens is not None and options.max_new_tokens > settings.max_new_tokens:
            raise ApiError(
                422, "invalid_option", f"max_new_tokens is limited to {settings.max_new_tokens}"
            )
        return options

    # -- endpoints (plain `def`: FastAPI runs them in its thread pool, the lock orders them)
    @app.get("/health", summary="Service status, model, index and limits")
    def health() -> dict[str, Any]:
        index = None
        if searcher is not None:
            s = searcher.index.settings
            index = {"songs": len(searcher.index), "kind": s.kind, "nprobe": s.nprobe}
        return {
            "status": "ok",
            "version": recap.__version__,
            "model": str(captioner.source) if captioner.source else None,
            # windows of 15 s heard per song, and the count the model was trained on
            "windows": captioner.audio_config.windows,
            "trained_windows": captioner.trained_windows,
            "index": index,
            "limits": asdict(settings),
        }

    @app.post("/caption", summary="Interpret a song from its audio (and lyrics)")
    def caption(
        audio: UploadFile = File(..., description="audio file (mp3, wav, flac, ogg)"),
        lyrics: str | None = Form(None, description="the song's lyrics (none: from the audio)"),
        num_beams: int | None = Form(None),
        do_sample: bool | None = Form(None),
        top_p: float | None = Form(None),
        seed: int | None = Form(None),
        max_new_tokens: int | None = Form(None),
        quote_lyrics: bool | None = Form(
            None, description="a quote in the caption continues the lyrics verbatim"
        ),
        known_words: bool | None = Form(
            None, description="every word is one of the training captions' or the lyrics'"
        ),
    ) -> dict[str, Any]:
        text = check_lyrics(lyrics, required=False)
        if text is None and not captioner.model.config.use_music:
            raise ApiError(422, "empty_lyrics", no_audio_message(captioner.model.config.method))
        options = decode_options(
            num_beams=num_beams,
            do_sample=do_sample,
            top_p=top_p,
            seed=seed,
            max_new_tokens=max_new_tokens,
            quote_lyrics=quote_lyrics,
            known_words=known_words,
        )
        wave = read_audio(audio)
        start = time.perf_counter()
        try:
            result = batcher.caption(wave, text, options)
        except RecapError as exc:  # the model refused this input (NaN music, ...)
            raise ApiError(422, "unprocessable_input", str(exc)) from exc
        return {
            "caption": result,
            "seconds": round(time.perf_counter() - start, 3),
            "windows": int(wave.shape[0]),
            "lyrics": text is not None,
        }

    @app.post("/search", summary="Nearest lyrics for an audio file, or nearest songs for lyrics")
    def search(
        audio: UploadFile | None = File(None, description="find lyrics that fit this audio"),
        lyrics: str | None = Form(None, description="find songs that sound like these lyrics"),
        k: int = Form(10, ge=1),
        distinct: bool = Form(True, description="list each work once (renderings share one)"),
    ) -> dict[str, Any]:
        from urllib.parse import urlencode

        from recap.inference.indexing import embed_audio, embed_lyrics

        if searcher is None:
            raise ApiError(503, "no_index", "this server has no index; start it with --index")
        if (audio is None) == (lyrics is None):
            raise ApiError(422, "invalid_request", "send exactly one of 'audio' or 'lyrics'")
        k = min(k, settings.max_k)
        if audio is not None:
            wave = read_audio(audio)
            with lock:
                vector, side, query = embed_audio(captioner, [wave]), "lyrics", "audio"
        else:
            text = check_lyrics(lyrics)
            with lock:
                vector, side, query = embed_lyrics(captioner, [text]), "audio", "lyrics"
        hits = searcher.index.search(vector, side, k, distinct=distinct)[0]
        results = []
        for h in hits:
            row = h.to_dict()
            if h.song_id in audio_files:
                row["audio_url"] = "/audio?" + urlencode({"song_id": h.song_id})
            results.append(row)
        return {"query": query, "results": results}

    @app.get("/audio", summary="A catalogue song's audio (files of the index only)")
    def catalogue_audio(song_id: str) -> FileResponse:
        path = audio_files.get(song_id)
        # Only a path the index recorded, looked up by id: the request never names a file.
        if path is None or Path(path).suffix.lower() not in AUDIO_SUFFIXES:
            raise ApiError(404, "not_found", f"no audio for song {song_id!r} in the index")
        if not Path(path).is_file():
            raise ApiError(404, "not_found", f"the audio of song {song_id!r} is gone")
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: at most `limit` request-body bytes reach the application, whether the
    client declared a Content-Length or streams a chunked body. A declared oversized body is
    refused before any of it is read; a stream is cut off at the limit (so the multipart
    parser never spools more than that to disk) and answered 413 in the usual JSON shape."""

    def __init__(self, app: Any, limit: int, message: str) -> None:
        self.app, self.limit, self.message = app, limit, message

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps(error_body("file_too_large", self.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Any:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app made of the cut-off body, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send)


def _too_large_message(settings: ServeSettings) -> str:
    return f"the upload exceeds the {settings.max_upload_mb:g} MB limit"


def load_app(
    model: str | os.PathLike,
    index: str | os.PathLike | None = None,
    settings: ServeSettings | None = None,
    device: Any = None,
    windows: int | None = None,
    int8: bool = False,
) -> Any:
    """The app for a model folder / RUN and an optional index built with that model. `windows`:
    the 15 s windows heard per song (default: the model's, `Captioner`); `int8`: a CPU
    captioner with int8 Linear layers (recap.inference.quantize)."""
    captioner = Captioner.from_pretrained(model, device=device, windows=windows, int8=int8)
    searcher = None
    if index is not None:
        from recap.inference.index import SongIndex
        from recap.inference.indexing import Searcher

        searcher = Searcher(SongIndex.load(index), captioner)
    return create_app(captioner, searcher, settings)
