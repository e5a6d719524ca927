"""What RECAP's aligned space holds, on one split of a benchmark whose truth is known.

For the models `recap demo-alignment` trains (recap.evaluation.alignment): audio ↔ lyrics
retrieval (recall@K and MRR both ways, exact search, a hit being any rendering of the query's
lyrics), the chance row and the ceiling of a reader who knows the coupling table, the geometry
of the space (paired against unpaired cosines), whether a song's lyrics retrieve audio with the
facts the coupling table maps its theme to, and what a linear map from the lexicon's reading
or from the pooled state RECAP's projection reads could align.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap.utils import RecapError, atomic_write_json

RETRIEVAL_KS = (1, 5, 10)
# The audio facts the coupling sets, and which reading of the lyrics sets each (coupling.py).
COUPLED_SLOTS = ("accompaniment", "key", "tempo", "melody")


def couple_by(truth: Mapping[str, Any]) -> str:
    """How the song's build coupled audio to lyrics (recap.bench.coupling.COUPLE_BY)."""
    return str(truth.get("couple_by", "meaning"))


def coupled_facts(truth: Mapping[str, Any]) -> dict[str, str]:
    """The audio facts the coupling table gives this song's lyrics (its theme and colour, or its
    language), whether or not its rendering was coupled."""
    from recap.bench.coupling import coupled_rows

    about, coloured = coupled_rows(truth, couple_by(truth))
    return {
        "accompaniment": about.accompaniment,
        "key": about.key,
        "tempo": coloured.tempo,
        "melody": coloured.melody,
    }


def split_couple_by(truths: Sequence[Mapping[str, Any]]) -> str:
    """The one way these songs were coupled (a split coupled two ways is refused)."""
    by = {couple_by(t) for t in truths} or {"meaning"}
    if len(by) > 1:
        raise RecapError(f"songs coupled in more than one way: {sorted(by)}")
    return by.pop()


def reading_vocabularies(truths: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Each label the coupling reads from the lyrics (theme and colour, or language) with its
    values: the columns of `lexicon_features`."""
    from recap.bench.coupling import reading_labels

    return reading_labels(split_couple_by(truths))


@dataclass
class SplitSongs:
    """The split's songs with what retrieval needs: ids, lyrics, index entries and truths."""

    ids: list[str]
    lyrics: list[str]
    entries: list[Any]  # recap.inference.index.SongEntry
    truths: list[dict[str, Any]]

    @classmethod
    def load(cls, data: str | os.PathLike, split: str = "test") -> SplitSongs:
        from recap.bench import load_truth
        from recap.inference.index import SongEntry, first_line, lyrics_key
        from recap.inference.indexing import catalogue_songs

        truths = load_truth(data)
        songs = [s for s in catalogue_songs(data) if s.split == split and s.id in truths]
        if len(songs) < 2:
            raise RecapError(f"{data} has {len(songs)} {split} song(s): retrieval needs two")
        return cls(
            ids=[s.id for s in songs],
            lyrics=[s.lyrics or "" for s in songs],
            entries=[
                SongEntry(s.id, first_line(s.lyrics or ""), lyrics_key(s.lyrics or ""), split)
                for s in songs
            ],
            truths=[truths[s.id] for s in songs],
        )

    @property
    def groups(self) -> np.ndarray:
        # renderings of one work share lyrics: any of them is a right answer
        return np.array([e.lyrics_key for e in self.entries])


def audio_vectors(model: Any, store: Mapping[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    """Unit music vectors (N, D) from the cached frozen-encoder sequences: the same vectors
    `recap index build` computes from the audio (`embed_music` of the encoder's output)."""
    import torch

    from recap.inference.index import normalize

    with torch.inference_mode():
        vectors = [
            model.embed_music(torch.from_numpy(store[i].astype(np.float32))[None])[0].numpy()
            for i in ids
        ]  # each (D,)
    return normalize(np.stack(vectors))


def embed_test_songs(
    run: str | os.PathLike, songs: SplitSongs, store: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(audio, lyrics) unit vectors (N, D) of `songs` in the aligned space of the model in RUN."""
    from recap.inference.captioner import Captioner
    from recap.inference.generate import load_model_and_tokenizer
    from recap.inference.indexing import embed_lyrics

    model, tokenizer, folder = load_model_and_tokenizer(run, device="cpu")
    captioner = Captioner(model, tokenizer, source=folder)
    lyrics = np.concatenate(
        [embed_lyrics(captioner, songs.lyrics[i : i + 32]) for i in range(0, len(songs.ids), 32)]
    )
    return audio_vectors(model, store, songs.ids), lyrics


def fact_agreement(
    audio: np.ndarray, lyrics: np.ndarray, truths: Sequence[Mapping[str, Any]], k: int = 10
) -> dict[str, dict[str, float]]:
    """What the projection learned: per coupled slot, the share of a lyrics query's top-k audio
    whose fact is the one the coupling table gives those lyrics ("retrieved"), against the share
    of all the split's audio that has it ("base rate", what a random ranking retrieves)."""
    k = min(k, len(truths))
    top = np.argsort(-(lyrics @ audio.T), axis=1, kind="stable")[:, :k]  # (N, k) audio rows
    out = {}
    for slot in COUPLED_SLOTS:
        values = np.array([t[slot] for t in truths])
        wanted = np.array([coupled_facts(t)[slot] for t in truths])
        out[slot] = {
            "retrieved": float((values[top] == wanted[:, None]).mean()),
            "base_rate": float(np.mean([(values == w).mean() for w in wanted])),
        }
    return out


def geometry(audio: np.ndarray, lyrics: np.ndarray) -> dict[str, float]:
    """Mean cosines of the aligned space: of a song's audio with its own lyrics ("paired") and
    with other songs' ("unpaired"), and within each side. Retrieval needs paired > unpaired; a
    projection that maps every text to one point makes the two equal whatever their level."""
    n = len(audio)
    cross = audio @ lyrics.T  # (N, N)
    off = ~np.eye(n, dtype=bool)
    return {
        "paired": float(np.diag(cross).mean()),
        "unpaired": float(cross[off].mean()),
        "lyrics_lyrics": float((lyrics @ lyrics.T)[off].mean()),
        "audio_audio": float((audio @ audio.T)[off].mean()),
    }


def audio_fact_neighbours(audio: np.ndarray, truths: Sequence[Mapping[str, Any]]) -> dict:
    """Per coupled slot: how often a song's nearest other audio vector shares its fact. The
    audio side of the space is the frozen encoder's mean: a fact it does not hold here cannot be
    aligned with anything."""
    sim = audio @ audio.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    out = {}
    for slot in COUPLED_SLOTS:
        values = np.array([t[slot] for t in truths])
        _, counts = np.unique(values, return_counts=True)
        out[slot] = {
            "nearest_shares": float((values[nearest] == values).mean()),
            "chance": float(((counts / counts.sum()) ** 2).sum()),
        }
    return out


def ranked_retrieval(
    score: np.ndarray, groups: np.ndarray, draws: int = 20, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Retrieval both ways from a score matrix (audio i, lyrics j), ties broken at random (the
    mean over `draws` orders; `retrieval_metrics` alone counts a tie as a hit)."""
    from recap.evaluation.retrieval import retrieval_metrics

    eye = np.eye(score.shape[1])  # key j = one-hot: query row i @ eye = that row's scores
    spread = max(float(np.ptp(score)), 1.0) * 1e-6
    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict[str, float]]] = {"audio_to_lyrics": [], "lyrics_to_audio": []}
    for _ in range(draws):
        jittered = score + rng.random(score.shape) * spread
        runs["audio_to_lyrics"].append(retrieval_metrics(jittered, eye, groups, RETRIEVAL_KS))
        runs["lyrics_to_audio"].append(retrieval_metrics(jittered.T, eye, groups, RETRIEVAL_KS))
    return {
        side: {key: float(np.mean([m[key] for m in ms])) for key in ms[0]}
        for side, ms in runs.items()
    }


def fact_match_scores(
    heard: Sequence[Mapping[str, Any]], named: Sequence[Mapping[str, str]]
) -> np.ndarray:
    """(audio i, lyrics j) scores: how many of audio i's coupled facts (`heard[i]`) are the ones
    named for lyrics j (`named[j]`, e.g. `coupled_facts` of its theme and colour)."""
    return np.array(
        [[sum(h[s] == n[s] for s in COUPLED_SLOTS) for n in named] for h in heard],
        dtype=np.float64,
    )


def oracle_retrieval(songs: SplitSongs, draws: int = 20, seed: int = 0) -> dict[str, Any]:
    """The ceiling of a reader who knows the coupling table and hears every fact exactly: lyrics
    j scores against audio i by how many of i's facts the table gives j's theme and colour."""
    mapped = [coupled_facts(t) for t in songs.truths]
    return ranked_retrieval(fact_match_scores(songs.truths, mapped), songs.groups, draws, seed)


def linear_map_retrieval(
    x_train: np.ndarray,
    audio_train: np.ndarray,
    x_test: np.ndarray,
    audio_test: np.ndarray,
    groups: np.ndarray,
    ridge: float = 10.0,
) -> dict[str, dict[str, float]]:
    """How well a linear map from lyrics features `x` to the audio vectors could align them: a
    ridge regression fitted on the train songs (both sides centred on the train means), then
    cosine retrieval on the test songs. It says whether the features hold what the audio shows,
    apart from how a training loss shapes a projection of them."""
    from recap.inference.index import normalize

    x_mean, a_mean = x_train.mean(0), audio_train.mean(0)
    xc = x_train - x_mean  # (N, F)
    weights = np.linalg.solve(
        xc.T @ xc + ridge * np.eye(xc.shape[1]), xc.T @ (audio_train - a_mean)
    )  # (F, D)
    lyrics = normalize((x_test - x_mean) @ weights)
    audio = normalize(audio_test - a_mean)
    return ranked_retrieval(audio @ lyrics.T, groups)


def lexicon_features(songs: SplitSongs) -> np.ndarray:
    """One-hot of what the coupling reads from each text (N, F): the lexicon's theme and
    colour, or the language."""
    from recap.bench.coupling import reading, reading_features

    by = split_couple_by(songs.truths)
    return reading_features([reading(t, by) for t in songs.truths], by)


def theme_reader_features(
    train: SplitSongs, test: SplitSongs, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """What a reader that learns the coupling's reading from the train works can know about
    unseen ones: a logistic regression from the words a text contains (binary bag of words) to
    each label the coupling reads (theme and colour, or language), fitted on the train songs'
    true labels (a stronger signal than any alignment loss gets), read on the test songs as the
    same one-hot features as `lexicon_features`. Returns (train features: the true ones, test
    features: the predicted ones, the test accuracy of each label)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    from recap.bench.coupling import reading, reading_features, reading_labels, tone
    from recap.bench.facts import words

    by = split_couple_by([*train.truths, *test.truths])
    analyzer = words
    if by == "language-tone":  # the words, and the mark the tone is read from

        def analyzer(text: str) -> list[str]:
            return words(text) + (["!"] if tone(text) == "exclaiming" else [])

    vectorizer = CountVectorizer(analyzer=analyzer, binary=True)
    x_train = vectorizer.fit_transform(train.lyrics)  # (N, vocabulary) sparse
    x_test = vectorizer.transform(test.lyrics)
    train_labels = [reading(t, by) for t in train.truths]
    test_labels = [reading(t, by) for t in test.truths]
    guessed: list[dict[str, str]] = [{} for _ in test.ids]
    accuracy = {}
    for name in reading_labels(by):
        y = [label[name] for label in train_labels]
        truth = np.array([label[name] for label in test_labels])
        if len(set(y)) == 1:  # one class in train (e.g. a single language): nothing to fit
            guess = np.array(y[:1] * len(test.ids))
        else:
            guess = LogisticRegression(C=c, max_iter=5000).fit(x_train, y).predict(x_test)
        accuracy[name] = float((guess == truth).mean())
        for n, value in enumerate(guess):
            guessed[n][name] = str(value)
    return reading_features(train_labels, by), reading_features(guessed, by), accuracy


def pooled_lyrics_states(captioner: Any, texts: Sequence[str]) -> np.ndarray:
    """The pooled encoder state (N, d_model) that RECAP's projection reads (its input)."""
    import torch

    seen: list[torch.Tensor] = []
    hook = captioner.model.align_proj.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].detach())
    )
    try:
        for i in range(0, len(texts), 32):
            batch = captioner.encode_lyrics(texts[i : i + 32])
            with torch.inference_mode():
                captioner.model.embed_lyrics(batch["input_ids"], batch["attention_mask"])
    finally:
        hook.remove()
    return torch.cat(seen).float().numpy()


def probe_run(
    run: str | os.PathLike,
    train: SplitSongs,
    test: SplitSongs,
    store: Mapping[str, np.ndarray],
) -> dict[str, dict[str, float]]:
    """`linear_map_retrieval` from the pooled lyrics states of the model in RUN."""
    from recap.inference.captioner import Captioner
    from recap.inference.generate import load_model_and_tokenizer

    model, tokenizer, folder = load_model_and_tokenizer(run, device="cpu")
    captioner = Captioner(model, tokenizer, source=folder)
    return linear_map_retrieval(
        pooled_lyrics_states(captioner, train.lyrics),
        audio_vectors(model, store, train.ids),
        pooled_lyrics_states(captioner, test.lyrics),
        audio_vectors(model, store, test.ids),
        test.groups,
    )


def evaluate_retrieval(
    run: str | os.PathLike, songs: SplitSongs, store: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """`recap index eval` of RUN's model over `songs` (exact search, the split as candidates)
    plus `fact_agreement`; cached in RUN/eval/retrieval-<split>.json until RUN is retrained."""
    from recap.inference.index import IndexSettings, SongIndex

    run = Path(run)
    split = songs.entries[0].split
    path = run / "eval" / f"retrieval-{split}.json"
    done = run / "done.json"
    if path.is_file() and (not done.is_file() or done.stat().st_mtime <= path.stat().st_mtime):
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("songs") == len(songs.ids) and "geometry" in cached:
            return cached
    audio, lyrics = embed_test_songs(run, songs, store)
    index = SongIndex(songs.entries, audio, lyrics, IndexSettings(kind="flat"))
    result = index.evaluate(split)
    result["facts"] = fact_agreement(audio, lyrics, songs.truths)
    result["geometry"] = geometry(audio, lyrics)
    atomic_write_json(path, result)
    return result


def audio_vectors_of(run: str, songs: SplitSongs, store: Mapping[str, np.ndarray]) -> np.ndarray:
    """`audio_vectors` of `songs` through the model in RUN."""
    from recap.inference.generate import load_model_and_tokenizer

    model, _, _ = load_model_and_tokenizer(run, device="cpu")
    return audio_vectors(model, store, songs.ids)
