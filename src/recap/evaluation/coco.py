"""The caption literature's metric set (pycocoevalcap), multi-reference: BLEU-1..4, ROUGE-L
and CIDEr-D on PTB-tokenised text, with METEOR 1.5 (`recap.evaluation.metrics.meteor_15`)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap.evaluation.metrics import (
    BLEU_LABELS,
    CAPTION_SET,
    CIDER_D_LABEL,
    METEOR_15_LABEL,
    METRIC_SETS,
    ROUGE_L_COCO_LABEL,
    _check_pairs,
    meteor_15,
)
from recap.utils import RecapError

# pycocoevalcap's PTBTokenizer drops these tokens after tokenising (its PUNCTUATIONS list).
_COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--"]
    + ["...", ";"]
)
PTB_TOKENIZER_LABEL = "pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, -lowerCase)"
PYTHON_TOKENIZER_LABEL = "NLTK Treebank stand-in for PTBTokenizer (no Java)"


def _pycocoevalcap_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError as err:
        raise RecapError(
            "the caption metrics (BLEU, CIDEr-D, ROUGE-L, METEOR 1.5) need pycocoevalcap: "
            "pip install pycocoevalcap"
        ) from err
    for root in getattr(pycocoevalcap, "__path__", []):
        return Path(root)
    raise RecapError("pycocoevalcap is installed without a package folder")


def coco_tokenize(texts: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str]:
    """Texts tokenised as pycocoevalcap's evaluation does: (space-joined tokens, tokenizer label).

    `tokenizer`: "ptb" (the Stanford jar pycocoevalcap ships, through stdin: one line per text,
    newlines inside a text become spaces, as pycocoevalcap's wrapper does), "python" (NLTK's
    Treebank tokenizer, a close stand-in where there is no Java) or "auto" (ptb when Java is
    on PATH). The punctuation pycocoevalcap removes is removed either way.
    """
    if tokenizer not in ("auto", "ptb", "python"):
        raise RecapError(f"tokenizer must be auto, ptb or python, got {tokenizer!r}")
    texts = [t.replace("\r", " ").replace("\n", " ") for t in texts]
    java = shutil.which("java")
    if tokenizer == "ptb" or (tokenizer == "auto" and java is not None):
        if java is None:
            raise RecapError("the PTB tokenizer needs Java on PATH (apt-get install default-jre)")
        lines = _run_ptb_jar(java, texts)
        label = PTB_TOKENIZER_LABEL
    else:
        from nltk.tokenize import TreebankWordTokenizer

        treebank = TreebankWordTokenizer()
        lines = [
            " ".join(treebank.tokenize(t.lower(), convert_parentheses=True)).lower() for t in texts
        ]
        label = PYTHON_TOKENIZER_LABEL
    out = [
        " ".join(w for w in line.rstrip().split(" ") if w not in _COCO_PUNCTUATION)
        for line in lines
    ]
    return out, label


def _run_ptb_jar(java: str, texts: Sequence[str], timeout_s: float = 600.0) -> list[str]:
    jar = _pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise RecapError(f"pycocoevalcap is installed but {jar.name} is missing")
    cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
    cmd += ["-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    try:
        done = subprocess.run(
            cmd,
            input="\n".join(texts).encode("utf-8"),
            capture_output=True,
            timeout=timeout_s,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as err:
        raise RecapError(f"the PTB tokenizer (java) failed: {err}") from err
    lines = done.stdout.decode("utf-8").split("\n")
    # -preserveLines answers one line per input line (empty ones included), plus a final newline.
    if len(lines) < len(texts) or any(line.strip() for line in lines[len(texts) :]):
        raise RecapError(
            f"the PTB tokenizer returned {len(lines)} lines for {len(texts)} texts; "
            "cannot align them"
        )
    return lines[: len(texts)]


def _check_multi(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    _check_pairs(predictions, references)
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise RecapError(f"item {i}: references must be a non-empty list of strings")


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """(gts, res) dicts in pycocoevalcap's shape: item index → [captions] (already tokenised)."""
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [pred] for i, pred in enumerate(predictions)}
    return gts, res


def _resample_weights(n: int, n_samples: int, seed: int) -> np.ndarray:
    """(n_samples, n) counts: how often each item is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_samples, n))
    weights = np.zeros((n_samples, n), dtype=np.float64)
    np.add.at(weights, (np.arange(n_samples)[:, None], idx), 1.0)
    return weights


def _interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    delta = (1 - confidence) / 2
    low, mid, high = np.quantile(values, [delta, 0.5, 1 - delta])
    return float(low), float(mid), float(high)


def _bleu_from_stats(stats: np.ndarray, n: int = 4) -> np.ndarray:
    """Corpus BLEU-1..n from summed statistics, exactly as pycocoevalcap's BleuScorer.

    `stats`: (..., 2 + 2n) = testlen, reflen, guess[n], correct[n] summed over items.
    Returns (..., n).
    """
    small, tiny = 1e-9, 1e-15  # BleuScorer's constants
    testlen, reflen = stats[..., 0], stats[..., 1]
    guess, correct = stats[..., 2 : 2 + n], stats[..., 2 + n : 2 + 2 * n]
    precisions = (correct + tiny) / (guess + small)
    cumulative = np.cumprod(precisions, axis=-1)
    bleus = cumulative ** (1.0 / np.arange(1, n + 1))
    ratio = (testlen + tiny) / (reflen + small)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * brevity[..., None]


def bleu_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Corpus BLEU-1..4 of tokenised texts with pycocoevalcap's `Bleu(4)`, multi-reference,
    and a bootstrap over items (BLEU recomputed from each resample's summed n-gram statistics).

    Returns {label: {"corpus", "low", "mid", "high"}} for BLEU-1..4.
    """
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    _check_multi(predictions, references)
    n = 4
    scorer = BleuScorer(n=n)
    for pred, refs in zip(predictions, references):
        scorer += (pred, list(refs))
    corpus, _ = scorer.compute_score(option="closest", verbose=0)
    stats = np.zeros((len(predictions), 2 + 2 * n))  # per item: testlen, reflen, guess, correct
    for i, comps in enumerate(scorer.ctest):
        testlen = comps["testlen"]
        stats[i, 0] = testlen
        # "closest" effective reference length, ties to the shorter (BleuScorer's rule)
        stats[i, 1] = min((abs(length - testlen), length) for length in comps["reflen"])[1]
        stats[i, 2 : 2 + n] = comps["guess"]
        stats[i, 2 + n :] = comps["correct"]
    if not np.allclose(_bleu_from_stats(stats.sum(axis=0)), corpus, rtol=1e-9, atol=1e-12):
        # The resampled statistic must be the very BLEU pycocoevalcap reports.
        raise RecapError("BLEU from summed statistics differs from pycocoevalcap's corpus BLEU")
    resampled = _bleu_from_stats(_resample_weights(len(predictions), bootstrap, seed) @ stats)
    out: dict[str, Any] = {}
    for k, label in enumerate(BLEU_LABELS):
        low, mid, high = _interval(resampled[:, k])
        out[label] = {"corpus": float(corpus[k]), "low": low, "mid": mid, "high": high}
    return out


def _mean_interval(per_item: Sequence[float], bootstrap: int, seed: int) -> dict[str, float]:
    values = np.asarray(per_item, dtype=np.float64)
    means = _resample_weights(values.size, bootstrap, seed) @ values / values.size
    low, mid, high = _interval(means)
    return {"corpus": float(values.mean()), "low": low, "mid": mid, "high": high}


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """CIDEr-D of tokenised texts with pycocoevalcap's `Cider` (n = 4, σ = 6; it implements
    CIDEr-D). IDF comes from all items' references; the corpus score is the mean of per-item
    scores, so the interval is a bootstrap of that mean. Needs ≥ 2 items (IDF is log(#items))."""
    from pycocoevalcap.cider.cider import Cider

    _check_multi(predictions, references)
    if len(predictions) < 2:
        raise RecapError("CIDEr-D needs at least two items (its IDF is log of their number)")
    score, per_item = Cider().compute_score(*_coco_inputs(predictions, references))
    out = {"label": CIDER_D_LABEL, **_mean_interval(per_item, bootstrap, seed)}
    out["corpus"] = float(score)
    out["per_example"] = [float(x) for x in per_item]
    return out


def rouge_l_coco(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """pycocoevalcap's ROUGE-L (LCS; F-measure with β = 1.2 of the best precision and the best
    recall over the references), mean over items with a bootstrap interval."""
    from pycocoevalcap.rouge.rouge import Rouge

    _check_multi(predictions, references)
    score, per_item = Rouge().compute_score(*_coco_inputs(predictions, references))
    out = {"label": ROUGE_L_COCO_LABEL, **_mean_interval(per_item, bootstrap, seed)}
    out["corpus"] = float(score)
    out["per_example"] = [float(x) for x in per_item]
    return out


def caption_set(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor15: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
) -> dict[str, Any]:
    """The caption literature's metric set on one prediction per item against that item's list
    of references (raw text: tokenised here). `summary` holds the labelled headline numbers
    (fractions; CIDEr-D as pycocoevalcap returns it, ×100 in tables like the rest)."""
    _check_multi(predictions, references)
    _pycocoevalcap_dir()  # a clear error now when it is not installed
    flat_refs = [r for refs in references for r in refs]
    tokens, tokenizer_label = coco_tokenize([*predictions, *flat_refs], tokenizer)
    preds_tok, rest = tokens[: len(predictions)], tokens[len(predictions) :]
    refs_tok: list[list[str]] = []
    for refs in references:
        refs_tok.append(rest[: len(refs)])
        rest = rest[len(refs) :]
    result: dict[str, Any] = {
        "set": CAPTION_SET,
        "description": METRIC_SETS[CAPTION_SET]["description"],
        "references": METRIC_SETS[CAPTION_SET]["references"],
        "tokenizer": tokenizer_label,
        "n_items": len(predictions),
        "n_references": len(flat_refs),
        "bleu": bleu_scores(preds_tok, refs_tok, bootstrap=bootstrap, seed=seed),
        "rouge_l": rouge_l_coco(preds_tok, refs_tok, bootstrap=bootstrap, seed=seed),
    }
    if len(predictions) >= 2:
        result["cider_d"] = cider_d(preds_tok, refs_tok, bootstrap=bootstrap, seed=seed)
    if meteor15:
        # The jar normalises and tokenises by itself (-norm), as pycocoevalcap feeds it.
        result["meteor_15"] = meteor_15(predictions, references, bootstrap=bootstrap, seed=seed)
    summary: dict[str, float] = {}
    bands = dict(result["bleu"])
    for key, label in (("meteor_15", METEOR_15_LABEL), ("rouge_l", ROUGE_L_COCO_LABEL)):
        if key in result:
            bands[label] = result[key]
    if "cider_d" in result:
        bands[CIDER_D_LABEL] = result["cider_d"]
    for label in METRIC_SETS[CAPTION_SET]["keys"]:
        if label in bands:
            band = bands[label]
            summary[label] = band["corpus"]
            summary[f"{label} low"], summary[f"{label} high"] = band["low"], band["high"]
    result["summary"] = summary
    return result
