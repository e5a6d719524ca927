"""`recap bench build`: scores → renderings (audio + true slots) → interpretations with votes.

Every random choice is drawn from a generator seeded by (seed, work, rendering), never from the
order the worker pool finishes in, so one seed always gives the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from recap.bench.coupling import (
    COUPLE_BY,
    couple,
    coupled_rows,
    is_coupled,
    theme_and_colour,
    tone,
)
from recap.bench.facts import lyrics_facts, normalize_phrase
from recap.bench.render import (
    Performance,
    default_soundfont,
    heard_notes,
    is_silent,
    render,
    schedule,
    write_mp3,
)
from recap.bench.slots import (
    ACCOMPANIMENTS,
    ALL_SLOTS,
    MELODY_INSTRUMENTS,
    TEMPO_CLASSES,
    TONICS,
    VOCABULARIES,
    metre_class,
    mood_for,
)
from recap.bench.sources import (
    ScoreData,
    ScoreError,
    ScoreSource,
    estimate_key,
    find_sources,
    load_score,
)
from recap.bench.templates import random_caption
from recap.data.songs import COMMENT_WITHOUT_LYRICS
from recap.utils import RecapError, SkipReport, atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Slots a wrong interpretation may get wrong: the closed-vocabulary ones (a wrong first line or
# wrong salient words would just be another song's text).
CORRUPTIBLE = ("melody", "accompaniment", "tempo", "key", "theme")


@dataclass
class BuildConfig:
    source: str = "music21"
    out: str = "bench"
    renders_per_song: int = 2
    comments_per_render: int = 4
    limit: int | None = None
    seed: int = 0
    soundfont: str | None = None
    workers: int = 2
    seconds: float = 30.0
    sample_rate: int = 44100
    synth_rate: int = 22050
    polyphony: int = 32  # voices at once (recap.bench.render.render)
    wrong_share: float = 0.3  # interpretations with at least one false slot (negative votes)
    zero_vote_share: float = 0.25  # correct interpretations nobody voted on
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    transpose_range: tuple[int, int] = (-5, 6)
    # auto: MusicXML through recap.bench.musicxml (~6x faster), other formats through music21
    parser: str = "auto"
    # Share of renderings whose audio follows the lyrics (recap.bench.coupling), and what of
    # them it follows: "meaning" (theme and colour) or "language".
    coupling: float = 0.0
    couple_by: str = "meaning"
    # The key and mode in the truth are those of the notes in the rendering's first N seconds,
    # what a captioner hears (CNNSA hears the first 15 s, SPEC §1): the whole score's key, which
    # builds before this option stated, is named by those notes for only 58 % of the renderings
    # (docs/benchmark.md). 0: the whole score's key (how older build.json files read).
    key_seconds: float = 15.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.coupling <= 1.0:
            raise RecapError(f"coupling must be in [0, 1], not {self.coupling}")
        if self.couple_by not in COUPLE_BY:
            raise RecapError(f"couple_by is one of {', '.join(COUPLE_BY)}, not {self.couple_by!r}")
        if self.couple_by != "meaning" and not self.coupling:
            raise RecapError(f"couple_by {self.couple_by} needs a coupling above 0 (--coupling P)")
        if self.key_seconds < 0:
            raise RecapError(f"key_seconds must be >= 0, not {self.key_seconds}")
        lo, hi = self.transpose_range
        if self.coupling > 0 and hi - lo < 11:
            raise RecapError(
                f"coupling needs a transpose range of 12 semitones to reach every key, "
                f"not {self.transpose_range}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        # Fields at the value builds had before the field existed are left out, so those builds'
        # build.json (and the whole build) stay byte-identical; `read_build_record` and
        # from_dict read them back.
        for name, value in OMITTED_AT.items():
            if d[name] == value:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        d = {**OMITTED_AT, **d}
        for k in ("split_fractions", "transpose_range"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# What builds before each field stated (coupling, couple_by, key_seconds): `to_dict` leaves
# a field at this value out of build.json.
OMITTED_AT: dict[str, object] = {"coupling": 0.0, "couple_by": "meaning", "key_seconds": 0.0}


def read_build_record(out: Path) -> dict | None:
    """A build's build.json as a plain dict (an older version's may not fit BuildConfig), the
    fields it leaves out filled in (`OMITTED_AT`); None when there is none."""
    path = Path(out) / "build.json"
    if not path.is_file():
        return None
    return {**OMITTED_AT, **json.loads(path.read_text("utf-8"))}


@dataclass
class BuildResult:
    out: Path
    songs: int
    rows: int
    works: int
    seconds: float
    skipped: SkipReport = field(repr=False, default_factory=lambda: SkipReport("bench build"))

    @property
    def renders_per_second(self) -> float:
        return self.songs / self.seconds if self.seconds else 0.0


def rng_for(seed: int, *keys: object) -> random.Random:
    """A generator that depends only on the seed and the keys (not on process or order)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_performance(
    rng: random.Random, bar_count: int, cfg: BuildConfig
) -> tuple[Performance, str]:
    melody = rng.choice(sorted(MELODY_INSTRUMENTS))
    accompaniment = rng.choice(sorted(ACCOMPANIMENTS))
    tempo = rng.choice(list(TEMPO_CLASSES))
    lo, hi = TEMPO_CLASSES[tempo]
    perf = Performance(
        melody_program=MELODY_INSTRUMENTS[melody],
        accompaniment_program=ACCOMPANIMENTS[accompaniment],
        bpm=float(rng.randint(lo, hi)),
        transpose=rng.randint(*cfg.transpose_range),
        start_bar=rng.randrange(max(1, bar_count // 2)),  # anywhere in the first half
    )
    return perf, tempo


_PROGRAM_NAMES = {
    **{("melody", p): n for n, p in MELODY_INSTRUMENTS.items()},
    **{("accompaniment", p): n for n, p in ACCOMPANIMENTS.items()},
}


def heard_key(score: ScoreData, perf: Performance, seconds: float) -> tuple[int, str]:
    """The Krumhansl-Schmuckler key of what a rendering plays in its first `seconds` (tonic
    pitch class as played, mode); `seconds` 0: the whole score's key, transposed."""
    whole_score = (score.tonic_pc + perf.transpose) % 12, score.mode
    if not seconds:
        return whole_score
    notes = heard_notes(score.melody, score.accompaniment, perf, score.bar_quarters, seconds)
    return estimate_key(notes) if len(notes) else whole_score  # none: silent, skipped later


def build_score(src: ScoreSource, cfg: BuildConfig, soundfont: str) -> tuple[list[dict], list]:
    """Parse one score and render it `renders_per_song` times (a worker's unit of work).

    Returns the songs (song_id, work_id, truth, ...) and (item, reason) pairs for what failed.
    An existing mp3 is kept (resume): its truth is drawn again from the same seed.
    """
    try:
        score = load_score(src, cfg.parser)
    except ScoreError as err:
        return [], [(src.path, str(err))]
    facts = lyrics_facts(score.lyrics)
    if facts is None:
        return [], [(src.path, "lyrics too short for the text facts")]
    audio_dir = Path(cfg.out) / "audios"
    bar_count = max(1, int(score.length_quarters // score.bar_quarters))
    colour = theme_and_colour(score.lyrics, facts.language)[1]
    read = {**facts.to_dict(), "colour": colour}
    if cfg.couple_by == "language-tone":  # only this coupling reads the opening's mark
        read["tone"] = tone(score.lyrics)
    key_seconds = min(cfg.key_seconds, cfg.seconds)

    def tonic_untransposed(perf: Performance) -> int:
        return heard_key(score, replace(perf, transpose=0), key_seconds)[0]

    songs, skipped = [], []
    for k in range(cfg.renders_per_song):
        song_id = f"{src.work_id}-{k}"
        perf, tempo = draw_performance(rng_for(cfg.seed, src.work_id, k), bar_count, cfg)
        # The coupling has its own stream, drawn after the plain choices: the uncoupled songs and
        # the excerpt window of the coupled ones are what an uncoupled build would give.
        coupling_rng = rng_for(cfg.seed, src.work_id, k, "coupling")
        coupled = is_coupled(coupling_rng, cfg.coupling)
        if coupled:
            about, coloured = coupled_rows(read, cfg.couple_by)
            perf, tempo = couple(
                perf, about, coloured, tonic_untransposed, cfg.transpose_range, coupling_rng
            )
        tonic, mode = heard_key(score, perf, key_seconds)
        truth = {
            "melody": _PROGRAM_NAMES[("melody", perf.melody_program)],
            "accompaniment": _PROGRAM_NAMES[("accompaniment", perf.accompaniment_program)],
            "tempo": tempo,
            "key": TONICS[tonic],
            "mode": mode,
            "metre": metre_class(score.numerator),
            **facts.to_dict(),
            "mood": mood_for(tempo),
        }
        if cfg.coupling:
            truth.update(coupled=coupled, colour=colour)
            if cfg.couple_by != "meaning":  # what the analyses read the coupling with
                truth["couple_by"] = cfg.couple_by
            if cfg.couple_by == "language-tone":
                truth["tone"] = read["tone"]
        mp3 = audio_dir / f"{song_id}.mp3"
        if not mp3.is_file():
            events = schedule(
                score.melody, score.accompaniment, perf, score.bar_quarters, cfg.seconds
            )
            audio = render(
                events, perf, soundfont, cfg.seconds, cfg.sample_rate, cfg.synth_rate,
                cfg.polyphony,
            )  # fmt: skip
            if is_silent(audio):
                skipped.append((f"{src.path}#{k}", "rendered silent"))
                continue
            write_mp3(mp3, audio, cfg.sample_rate)
        songs.append(
            {
                "song_id": song_id,
                "work_id": src.work_id,
                "truth": truth,
                "source": src.path,
                "lyrics": score.lyrics,
                "render": {
                    **asdict(perf),
                    "soundfont": Path(soundfont).name,
                    "seconds": cfg.seconds,
                    "sample_rate": cfg.sample_rate,
                    "polyphony": cfg.polyphony,
                },
            }  # fmt: skip
        )
    return songs, skipped


def _build_score_job(job: tuple[ScoreSource, BuildConfig, str]) -> tuple[list[dict], list]:
    return build_score(*job)


def assign_splits(songs: list[dict], cfg: BuildConfig) -> dict[str, str]:
    """Split by work: all renderings of a work share a split. Works with the same opening words
    (the same hymn set twice, as among the Bach chorales) are kept together too, so no first
    line is seen in training and tested."""
    group_of: dict[str, str] = {}
    for s in songs:
        group_of.setdefault(s["work_id"], normalize_phrase(s["truth"]["first_line"]))
    groups = sorted(set(group_of.values()))
    rng_for(cfg.seed, "splits").shuffle(groups)
    n = len(groups)
    n_test = max(1, round(n * cfg.split_fractions[2])) if n >= 3 else 0
    n_val = max(1, round(n * cfg.split_fractions[1])) if n >= 3 else 0
    split_of_group = {}
    for i, g in enumerate(groups):
        split_of_group[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return {w: split_of_group[g] for w, g in group_of.items()}


def make_interpretations(song: dict, cfg: BuildConfig) -> list[dict]:
    """Several captions per rendering; a share state one or two false slots and get negative
    votes, a share of the correct ones get zero votes."""
    truth = song["truth"]
    rng = rng_for(cfg.seed, song["song_id"], "comments")
    rows = []
    for j in range(cfg.comments_per_render):
        stated = {slot: truth[slot] for slot in ALL_SLOTS}
        wrong = rng.random() < cfg.wrong_share
        if wrong:
            for slot in rng.sample(CORRUPTIBLE, rng.choice((1, 1, 2))):
                stated[slot] = rng.choice([v for v in VOCABULARIES[slot] if v != truth[slot]])
            # The reading follows from what the comment claims to hear.
            stated["mood"] = mood_for(str(stated["tempo"]))
        correct = {slot: stated[slot] == truth[slot] for slot in ALL_SLOTS}
        if not all(correct.values()):
            votes = -rng.randint(1, 8)
        elif rng.random() < cfg.zero_vote_share:
            votes = 0
        else:
            votes = rng.randint(1, 12)
        comment, heard = random_caption(stated, rng)
        rows.append(
            {
                "music4all_id": song["song_id"],
                "songmeanings_id": f"{song['song_id']}-c{j}",
                "lyrics": None,  # filled by the caller (one copy of the text per song)
                "comment": comment,
                # the reference when training drops the lyrics (TrainConfig.lyrics_dropout)
                COMMENT_WITHOUT_LYRICS: heard,
                "votes": votes,
                "split": song["split"],
                "work_id": song["work_id"],
                "slots": stated,
                "slots_correct": correct,
            }
        )
    return rows


def check_resumable(out: Path, cfg: BuildConfig) -> None:
    """Refuse to build into a finished build with another seed or coupling, or a coupled one
    keyed another way: its kept MP3s (resume) would not be the renderings the new truth
    describes. (An uncoupled build keyed another way renders the same audio: its truth is
    written anew.)"""
    old = read_build_record(out)
    if old is None:
        return
    defaults = BuildConfig()
    names = ("seed", "coupling", "couple_by") + (("key_seconds",) if cfg.coupling else ())
    for name in names:
        was, now = old.get(name, getattr(defaults, name)), getattr(cfg, name)
        if was != now:
            raise RecapError(
                f"{out} holds a build with {name} {was}, not {now}: build into another "
                f"folder (its audio would be kept)"
            )


def build_benchmark(cfg: BuildConfig, progress: bool = True) -> BuildResult:
    """Build the benchmark into `cfg.out` (see docs/benchmark.md for the layout)."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_resumable(out, cfg)
    (out / "audios").mkdir(parents=True, exist_ok=True)
    soundfont = str(cfg.soundfont or default_soundfont())
    if not Path(soundfont).is_file():
        raise RecapError(f"soundfont not found: {soundfont}")
    sources = find_sources(cfg.source)
    if cfg.limit is not None:
        sources = sources[: cfg.limit]
    skipped = SkipReport("bench build")
    # One work in two formats (music21 has a few .mxl/.xml twins) maps to one work id: keep the
    # first, or its renderings would share song ids.
    first_of: dict[str, str] = {}
    unique = []
    for src in sources:
        if src.work_id in first_of:
            skipped.add(src.path, f"duplicate of {first_of[src.work_id]} (same work id)")
        else:
            first_of[src.work_id] = src.path
            unique.append(src)
    songs: list[dict] = []
    jobs = [(src, cfg, soundfont) for src in unique]
    bar = tqdm(total=len(jobs), desc="bench build", unit="score", disable=not progress)
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            results = pool.map(_build_score_job, jobs, chunksize=1)
            for got, bad in results:
                songs += got
                for item, reason in bad:
                    skipped.add(item, reason)
                bar.update()
    else:
        for job in jobs:
            got, bad = _build_score_job(job)
            songs += got
            for item, reason in bad:
                skipped.add(item, reason)
            bar.update()
    bar.close()
    if not songs:
        skipped.write(out / "skipped.json")
        raise RecapError(f"no usable score in {cfg.source}: {skipped.summary()}")
    split_of = assign_splits(songs, cfg)
    rows = []
    for song in songs:
        song["split"] = split_of[song["work_id"]]
        for row in make_interpretations(song, cfg):
            row["lyrics"] = song["lyrics"]
            rows.append(row)
    with atomic_path(out / "dataset.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    with atomic_path(out / "songs.jsonl") as tmp:
        tmp.write_text(
            "".join(
                json.dumps(
                    {k: s[k] for k in ("song_id", "work_id", "split", "truth", "source", "render")},
                    ensure_ascii=False,
                )
                + "\n"
                for s in songs
            ),  # fmt: skip
            "utf-8",
        )
    skipped.write(out / "skipped.json")
    atomic_write_json(out / "build.json", cfg.to_dict())
    result = BuildResult(
        out=out,
        songs=len(songs),
        rows=len(rows),
        works=len({s["work_id"] for s in songs}),
        seconds=time.perf_counter() - t0,
        skipped=skipped,
    )
    return result
