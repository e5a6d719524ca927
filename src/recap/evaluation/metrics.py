"""Caption metrics in two labelled sets (SPEC §2).

**paper** — computed the way the RECAP and BART-fusion papers did, comparable with their Table 1:
- ROUGE-1/2/L from Google's `rouge_score` without stemming, aggregated with its bootstrap
  (low/mid/high). The papers report `mid.recall`; F1 (`mid.fmeasure`) is reported beside it.
- METEOR (NLTK): `single_meteor_score` with alpha 0.9, beta 3, gamma 0.5 on `word_tokenize`d text,
  one reference per example, mean over examples. It needs WordNet, found offline (SPEC §4).
One example per (song, interpretation) row, scored against that row's interpretation.

**caption** — what the captioning literature reports (pycocoevalcap), so other captioners'
numbers compare: BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, each caption scored against ALL of
its song's interpretations at once (multi-reference), one caption per song.
- Text is tokenised as pycocoevalcap's `PTBTokenizer` does (Stanford PTBTokenizer, lower-cased,
  its punctuation list removed); the same jar is run through stdin. Without Java a Python
  stand-in (NLTK's Treebank tokenizer) is used and named in the output.
- BLEU: pycocoevalcap's `Bleu(4)` (corpus BLEU, "closest" reference length). CIDEr-D:
  pycocoevalcap's `Cider` (which is CIDEr-D: clipped counts, Gaussian length penalty σ = 6,
  ×10, IDF from the test references). ROUGE-L: pycocoevalcap's `Rouge` (LCS F-measure with
  β = 1.2 over the best precision and recall among the references: the caption literature's
  "ROUGE-L", not rouge_score's F1). METEOR 1.5: the Java jar pycocoevalcap ships, all
  references in one segment. On the same pairs METEOR 1.5 gives about half the NLTK figure,
  so every output names which one it is.

Bootstrap intervals (95 %, seeded) for both sets: over rows for the paper set, over songs for the
caption set (BLEU recomputed from resampled n-gram statistics; CIDEr-D and ROUGE-L, whose corpus
score is the mean of per-song scores, resampled as means; METEOR 1.5's interval is that of its
segment mean, its headline the jar's aggregate).

Attribute accuracy: delegated to `recap.bench.score_captions` (rendered-songs benchmark only).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from recap.utils import RecapError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
METEOR_NLTK_LABEL = "METEOR (NLTK)"
METEOR_15_LABEL = "METEOR 1.5"
BLEU_LABELS = tuple(f"BLEU-{n}" for n in range(1, 5))
ROUGE_L_COCO_LABEL = "ROUGE-L (COCO)"
CIDER_D_LABEL = "CIDEr-D"
# Bumped when a metric's definition changes, so cached evaluations are recomputed.
METRICS_VERSION = 4  # 3: the audio-only test in grounding; 4: a slot given two values is wrong
PAPER_SET, CAPTION_SET = "paper", "caption"
METRIC_SETS = {
    PAPER_SET: {
        "description": "the papers' metrics: rouge_score ROUGE-1/2/L (recall = mid.recall, and "
        "F1), NLTK METEOR; comparable with the paper's Table 1",
        "references": "one example per (song, interpretation) row, scored against that row's "
        "interpretation; mean over rows",
        "keys": (
            "ROUGE-1 recall",
            "ROUGE-2 recall",
            "ROUGE-L recall",
            "ROUGE-1 F1",
            "ROUGE-2 F1",
            "ROUGE-L F1",
            METEOR_NLTK_LABEL,
        ),
    },
    CAPTION_SET: {
        "description": "the caption literature's metrics (pycocoevalcap): BLEU-1..4, METEOR 1.5, "
        "ROUGE-L (F, beta 1.2), CIDEr-D, on PTB-tokenised lower-cased text",
        "references": "one caption per song (the first row's when a song has several), scored "
        "against all of the song's interpretations in the split at once (multi-reference)",
        "keys": (*BLEU_LABELS, METEOR_15_LABEL, ROUGE_L_COCO_LABEL, CIDER_D_LABEL),
    },
}
# The papers' NLTK METEOR parameters (NLTK's own defaults, pinned here so a change upstream shows).
METEOR_ALPHA, METEOR_BETA, METEOR_GAMMA = 0.9, 3.0, 0.5


# ---------------------------------------------------------------------------------------------
# Bootstrap helpers


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for a block and restore it after.

    `rouge_score.scoring.BootstrapAggregator` draws from `np.random` directly; this makes its
    intervals reproducible without leaving the caller's random state changed.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_resamples(n_samples: int) -> None:
    if n_samples < 1:
        raise RecapError(f"bootstrap must be at least 1 resample, got {n_samples}")


def bootstrap_interval(
    values: Sequence[float], n_samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Bootstrap low/mid/high of the mean of per-example `values`, as rouge_score computes them.

    mid is the median of the resampled means (rouge_score's convention), `mean` the plain mean.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise RecapError("cannot bootstrap an empty list of scores")
    _check_resamples(n_samples)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_samples, x.size))  # (n_samples, N) resampled rows
    means = x[idx].mean(axis=1)  # (n_samples,)
    delta = (1 - confidence) / 2
    low, mid, high = np.quantile(means, [delta, 0.5, 1 - delta])
    return {"low": float(low), "mid": float(mid), "high": float(high), "mean": float(x.mean())}


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise RecapError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
    if not predictions:
        raise RecapError("no predictions to score")


# ---------------------------------------------------------------------------------------------
# ROUGE


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """ROUGE-1/2/L recall, precision and F1 with bootstrap intervals (rouge_score, no stemmer).

    Returns `{"rouge1": {"recall": {"low","mid","high"}, "precision": {...}, "f1": {...}}, ...}`
    plus `"per_example"`: per-example recall and F1 lists (for later pooling or plotting).
    The papers' figure is `result["rouge1"]["recall"]["mid"]`.
    """
    from rouge_score import rouge_scorer, scoring

    _check_pairs(predictions, references)
    _check_resamples(bootstrap)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator(confidence_interval=confidence, n_samples=bootstrap)
    per_example: dict[str, dict[str, list[float]]] = {
        t: {"recall": [], "f1": []} for t in ROUGE_TYPES
    }
    for pred, ref in zip(predictions, references):
        # rouge_score's argument order is (target, prediction): recall is over the reference.
        scores = scorer.score(ref, pred)
        aggregator.add_scores(scores)
        for t in ROUGE_TYPES:
            per_example[t]["recall"].append(scores[t].recall)
            per_example[t]["f1"].append(scores[t].fmeasure)
    with _seeded_numpy(seed):
        aggregated = aggregator.aggregate()
    result: dict[str, Any] = {}
    for t in ROUGE_TYPES:
        agg = aggregated[t]
        result[t] = {
            name: {
                "low": float(getattr(agg.low, field)),
                "mid": float(getattr(agg.mid, field)),
                "high": float(getattr(agg.high, field)),
            }
            for name, field in (
                ("recall", "recall"),
                ("precision", "precision"),
                ("f1", "fmeasure"),
            )
        }
    result["per_example"] = per_example
    result["settings"] = {
        "package": "rouge_score",
        "use_stemmer": False,
        "bootstrap_samples": bootstrap,
        "confidence": confidence,
        "seed": seed,
        "n": len(predictions),
    }
    return result


# ---------------------------------------------------------------------------------------------
# METEOR (NLTK)


@lru_cache(maxsize=1)
def _word_tokenizer():
    """NLTK's `word_tokenize` when its punkt_tab model is installed; otherwise the same word
    tokenizer after an untrained Punkt sentence splitter (offline, no data files).

    The fallback differs from `word_tokenize` only where trained Punkt knows an abbreviation
    ("Mr.", "e.g."): it splits the period off as its own token. Returns (function, label).
    """
    import nltk
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.word_tokenize, "nltk.word_tokenize (punkt_tab)"
    except LookupError:
        pass
    sentences = PunktSentenceTokenizer()
    words = NLTKWordTokenizer()

    def tokenize(text: str) -> list[str]:
        return [tok for sent in sentences.tokenize(text) for tok in words.tokenize(sent)]

    return tokenize, "untrained Punkt + NLTKWordTokenizer (punkt_tab not installed)"


def meteor_nltk(
    predictions: Sequence[str],
    references: Sequence[str],
    nltk_data_dir: str | os.PathLike | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    use_wordnet: bool = True,
) -> dict[str, Any]:
    """METEOR as the papers computed it: NLTK `single_meteor_score` per pair, mean over pairs.

    Returns {"label", "mean", "low", "mid", "high", "per_example", "tokenizer"}; the interval
    is a bootstrap over examples. `use_wordnet=False` (synonym matching off: an empty WordNet
    stand-in) exists only to show what WordNet adds; real scores always use it.
    """
    from nltk.translate.meteor_score import single_meteor_score

    _check_pairs(predictions, references)
    from recap.evaluation.wordnet import load_wordnet

    wordnet = load_wordnet(nltk_data_dir) if use_wordnet else _NoSynonyms()
    tokenize, tokenizer_label = _word_tokenizer()
    per_example = [
        float(
            single_meteor_score(
                tokenize(ref),
                tokenize(pred),
                wordnet=wordnet,
                alpha=METEOR_ALPHA,
                beta=METEOR_BETA,
                gamma=METEOR_GAMMA,
            )
        )
        for pred, ref in zip(predictions, references)
    ]
    interval = bootstrap_interval(per_example, n_samples=bootstrap, seed=seed)
    return {
        "label": METEOR_NLTK_LABEL,
        **interval,
        "per_example": per_example,
        "tokenizer": tokenizer_label,
        "params": {"alpha": METEOR_ALPHA, "beta": METEOR_BETA, "gamma": METEOR_GAMMA},
        "wordnet": use_wordnet,
    }


class _NoSynonyms:
    """A WordNet stand-in with no synsets (METEOR's synonym stage then matches nothing)."""

    def synsets(self, *args: Any, **kwargs: Any) -> list:
        return []


# ---------------------------------------------------------------------------------------------
# METEOR 1.5 (Java)


def _meteor_jar() -> Path:
    try:
        import pycocoevalcap
    except ImportError as err:
        raise RecapError(
            "METEOR 1.5 needs pycocoevalcap (pip install pycocoevalcap); or pass --no-meteor15"
        ) from err
    # pycocoevalcap is a namespace-like package without __file__ on some installs.
    roots = [Path(p) for p in getattr(pycocoevalcap, "__path__", [])]
    for root in roots:
        jar = root / "meteor" / "meteor-1.5.jar"
        if jar.is_file() and (root / "meteor" / "data" / "paraphrase-en.gz").is_file():
            return jar
    raise RecapError(
        "pycocoevalcap is installed but its meteor-1.5.jar / data/paraphrase-en.gz are missing"
    )


def _clean_for_meteor(text: str) -> str:
    # The jar reads one line per segment and splits fields on '|||'.
    return re.sub(r"\s+", " ", text.replace("|||", " ")).strip()


def meteor_15(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    timeout_s: float = 600.0,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """METEOR 1.5 through the jar pycocoevalcap ships (`-l en -norm`, runs offline).

    `references[i]` is one reference or a list of them (scored together, as pycocoevalcap's
    `Meteor` does for an image's several captions).
    Returns {"label", "corpus", "mean", "low", "mid", "high", "per_example"}: `corpus` is the
    jar's aggregate over all segments (what pycocoevalcap and the caption literature report);
    `mean` is the plain mean of segment scores, comparable in form to the NLTK figure.
    """
    _check_pairs(predictions, references)
    references = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in references):
        raise RecapError("METEOR 1.5: every prediction needs at least one reference")
    java = shutil.which("java")
    if java is None:
        raise RecapError(
            "METEOR 1.5 needs Java on PATH (Debian: apt-get install default-jre-headless); "
            "or pass --no-meteor15"
        )
    jar = _meteor_jar()
    per_example, corpus = _run_meteor_jar(java, jar, predictions, references, timeout_s)
    interval = bootstrap_interval(per_example, n_samples=bootstrap, seed=seed)
    return {
        "label": METEOR_15_LABEL,
        "corpus": corpus,
        **interval,
        "per_example": per_example,
        "jar": jar.name,
    }


def _run_meteor_jar(
    java: str,
    jar: Path,
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    timeout_s: float,
) -> tuple[list[float], float]:
    """Score through this process's running jar (started on first use); return (segment
    scores, aggregate score). A jar that failed or hung is stopped and the next call starts a
    fresh one."""
    session = _meteor_session(java, str(jar))
    if not session.alive():
        _meteor_session.cache_clear()
        session = _meteor_session(java, str(jar))
    try:
        return session.score(predictions, references, timeout_s)
    except BaseException:
        session.close()
        _meteor_session.cache_clear()
        raise


@lru_cache(maxsize=1)
def _meteor_session(java: str, jar: str) -> _MeteorJar:
    """One jar per process: loading its paraphrase table takes ~6 s, scoring a hundred
    segments a fraction of that, and an evaluation of several models (the demo: six) asks many
    times. Stopped when the process exits."""
    session = _MeteorJar(java, Path(jar))
    atexit.register(session.close)
    return session


class _MeteorJar:
    """A running METEOR 1.5 jar and its stdio protocol (as pycocoevalcap's `Meteor` keeps one).

    "SCORE ||| ref ||| hyp" answers one line of sufficient statistics; "EVAL ||| stats ||| ..."
    answers each segment's score, then the aggregate over all of them. Lines go one at a time,
    each answer read before the next is sent, so neither pipe can fill up and deadlock; one
    caller at a time (a lock).
    """

    def __init__(self, java: str, jar: Path) -> None:
        cmd = [java, "-Xmx2G", "-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=jar.parent,  # the jar finds data/paraphrase-en.gz relative to itself
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()

    def score(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        timeout_s: float,
    ) -> tuple[list[float], float]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        with self.lock:
            # A watchdog, since readline() on a hung jar would block forever.
            timer = threading.Timer(timeout_s, proc.kill)
            timer.start()
            try:

                def ask(line: str) -> str:
                    proc.stdin.write(line + "\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline()
                    if not answer:
                        raise RecapError(
                            "METEOR 1.5 (java) stopped answering"
                            + (
                                f" (timed out after {timeout_s:.0f} s)"
                                if not timer.is_alive()
                                else ""
                            )
                        )
                    return answer.strip()

                stats = [
                    ask(
                        "SCORE ||| "
                        + " ||| ".join(_clean_for_meteor(r) for r in refs)
                        + f" ||| {_clean_for_meteor(pred)}"
                    )
                    for pred, refs in zip(predictions, references)
                ]
                first = ask("EVAL ||| " + " ||| ".join(stats))
                rest = [proc.stdout.readline().strip() for _ in range(len(stats))]
            finally:
                timer.cancel()
        answers = [first, *rest]
        try:
            values = [float(x) for x in answers]
        except ValueError as err:
            raise RecapError(f"METEOR 1.5 gave an unexpected answer: {answers[:3]}") from err
        return values[:-1], values[-1]


# ---------------------------------------------------------------------------------------------
# The bundle


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    meteor15: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    nltk_data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """ROUGE + both METEORs on parallel single-reference lists; `summary` holds the headline
    numbers, labelled. (`metric_sets` is what `recap evaluate` and `recap score` report.)"""
    rouge = rouge_scores(predictions, references, bootstrap=bootstrap, seed=seed)
    meteor = meteor_nltk(
        predictions, references, nltk_data_dir=nltk_data_dir, bootstrap=bootstrap, seed=seed
    )
    result: dict[str, Any] = {"rouge": rouge, "meteor_nltk": meteor}
    if meteor15:
        result["meteor_15"] = meteor_15(predictions, references, bootstrap=bootstrap, seed=seed)
    result["summary"] = summarize(result)
    return result


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """Flat, labelled headline numbers (fractions in [0, 1]) from a `caption_metrics` result."""
    names = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
    out: dict[str, float] = {}
    for key, name in names.items():
        for stat, label in (("recall", "recall"), ("f1", "F1")):
            band = result["rouge"][key][stat]
            out[f"{name} {label}"] = band["mid"]
            out[f"{name} {label} low"] = band["low"]
            out[f"{name} {label} high"] = band["high"]
    for key in ("meteor_nltk", "meteor_15"):
        if key in result:
            m = result[key]
            out[m["label"]] = m["mean"] if key == "meteor_nltk" else m["corpus"]
            out[f"{m['label']} low"] = m["low"]
            out[f"{m['label']} high"] = m["high"]
    return out


def paper_set(
    predictions: Sequence[str],
    references: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
    nltk_data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The papers' metric set on parallel single-reference lists (one per row)."""
    rouge = rouge_scores(predictions, references, bootstrap=bootstrap, seed=seed)
    meteor = meteor_nltk(
        predictions, references, nltk_data_dir=nltk_data_dir, bootstrap=bootstrap, seed=seed
    )
    result: dict[str, Any] = {
        "set": PAPER_SET,
        "description": METRIC_SETS[PAPER_SET]["description"],
        "references": METRIC_SETS[PAPER_SET]["references"],
        "n_items": len(predictions),
        "rouge": rouge,
        "meteor_nltk": meteor,
    }
    result["summary"] = summarize(result)
    return result


def metric_sets(
    song_ids: Sequence[str],
    references: Sequence[str],
    predictions: Sequence[str],
    meteor15: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    nltk_data_dir: str | os.PathLike | None = None,
    tokenizer: str = "auto",
) -> dict[str, Any]:
    """Both labelled sets from per-row lists: row i is song `song_ids[i]`, its interpretation
    `references[i]` and the caption `predictions[i]` generated for it.

    paper: every row against its own interpretation. caption: per song, its first row's caption
    against all of its interpretations. Returns {"paper", "caption", "summary" (both sets' flat
    headline numbers), "metric_sets" (which summary keys belong to which set),
    "metrics_version"}.
    """
    if not len(song_ids) == len(references) == len(predictions):
        raise RecapError(
            f"{len(song_ids)} song ids, {len(references)} references and "
            f"{len(predictions)} predictions: one of each per row"
        )
    paper = paper_set(
        predictions, references, bootstrap=bootstrap, seed=seed, nltk_data_dir=nltk_data_dir
    )
    first: dict[str, str] = {}
    refs: dict[str, list[str]] = {}
    distinct: dict[str, set[str]] = {}
    for sid, ref, pred in zip(song_ids, references, predictions):
        first.setdefault(sid, pred)
        refs.setdefault(sid, []).append(ref)
        distinct.setdefault(sid, set()).add(pred)
    songs = list(first)
    from recap.evaluation.coco import caption_set

    caption = caption_set(
        [first[s] for s in songs],
        [refs[s] for s in songs],
        meteor15=meteor15,
        bootstrap=bootstrap,
        seed=seed,
        tokenizer=tokenizer,
    )
    # Sampling per row gives a song several captions; the caption set scores the first of each.
    caption["n_songs_with_several_captions"] = sum(len(p) > 1 for p in distinct.values())
    return {
        "metrics_version": METRICS_VERSION,
        PAPER_SET: paper,
        CAPTION_SET: caption,
        "summary": {**paper["summary"], **caption["summary"]},
        "metric_sets": {
            name: [k for k in spec["keys"] if k in {**paper["summary"], **caption["summary"]}]
            for name, spec in METRIC_SETS.items()
        },
    }


def strip_per_example(value: Any) -> Any:
    """A copy of a metrics result without its per-example lists, at any depth (JSON stays small;
    the predictions CSV holds the texts)."""
    if isinstance(value, dict):
        return {k: strip_per_example(v) for k, v in value.items() if k != "per_example"}
    return value
