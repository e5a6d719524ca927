"""What a captioner's content selector (`copy_select_weight`) has learnt: does it pick the key
words of texts it never read?

    .venv/bin/python benchmarks/content_selector.py RUN [RUN ...] --data runs/demo/bench

For each run (a `recap train` folder; its `best/` model) and each split, one row per distinct
text (the first `--limit` of each split): the selector's probability for every lyrics token, read
from the copy head's source states (the fusion captioners' with zero music: the selector is a
property of the lyrics side), then
- `bce`: its binary cross-entropy against its training target (the text's words that the
  reference caption contains), per word token;
- `top-3`: the text's content words (the benchmark's definition: not stopwords, at least 4
  letters) ranked by the selector's highest probability over their tokens, and the share of the
  true key words among the first three — beside the reader that takes the first three content
  words (`first-3`), which the rule equals for texts whose content words occur once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def selector_pass(model, lyrics: str, caption: str) -> tuple[dict[str, float], float, int]:
    """One pass of the selector over a text: ({lower-cased word: its highest probability over
    the word's tokens}, summed cross-entropy against its training target, word tokens)."""
    import torch
    import torch.nn.functional as F

    limit = model.config.max_source_length
    enc = model.tokenizer(lyrics, truncation=True, max_length=limit, return_offsets_mapping=True)
    cap = torch.tensor([model.tokenizer(caption, truncation=True, max_length=limit)["input_ids"]])
    ids = torch.tensor([enc["input_ids"]])  # (1, S)
    ones = torch.ones_like(ids)
    music = torch.zeros(1, 1, model.config.music_dim) if model.config.use_music else None
    head = model.copy_head
    with torch.no_grad():
        states = model.encode(ids, ones, music).last_hidden_state  # (1, S, d)
        with head.attend(states, ids, ones):
            logits = head.selection_logits()[0]  # (S,)
        targets, in_word = head.selection_targets(ids, ones, cap, torch.ones_like(cap))
        word = head.word_identities(ids, ones)[0][0]  # (S,): 0 = not in a word
    scored = in_word[0]
    loss = F.binary_cross_entropy_with_logits(logits[scored], targets[0][scored], reduction="sum")
    prob = logits.sigmoid()
    spans: dict[int, list[int]] = {}
    for position, (start, end) in enumerate(enc["offset_mapping"]):
        w = int(word[position])
        if w:
            spans.setdefault(w, [start, end])[1] = end
    scores: dict[str, float] = {}
    for w, (start, end) in spans.items():
        text = lyrics[start:end].strip().lower()
        scores[text] = max(scores.get(text, 0.0), float(prob[word == w].max()))
    return scores, float(loss), int(scored.sum())


def probe(run: Path, data: Path, limit: int) -> list[dict]:
    from recap.bench.facts import content_words, detect_language, words
    from recap.models.model import RecapModel

    model = RecapModel.from_pretrained(run / "best").eval()
    if model.copy_head is None or not model.copy_head.select:
        raise SystemExit(f"{run}: this model has no content selector (copy_select_weight 0)")
    rows = [json.loads(line) for line in (data / "dataset.jsonl").open(encoding="utf-8")]
    out = []
    for split in ("train", "test"):
        texts: dict[str, dict] = {}
        for row in rows:
            if row["split"] == split and len(texts) < limit:
                texts.setdefault(row["lyrics"], row)
        hits = first_hits = bce = tokens = 0.0
        for lyrics, row in texts.items():
            scores, loss, n = selector_pass(model, lyrics, row["comment"])
            tokens_ = words(lyrics)
            candidates = list(dict.fromkeys(content_words(tokens_, detect_language(tokens_))))
            truth = {w.lower() for w in row["slots"]["salient_words"]}
            ranked = sorted((w for w in candidates if w in scores), key=lambda w: -scores[w])
            hits += len(set(ranked[:3]) & truth)
            first_hits += len(set(candidates[:3]) & truth)
            bce, tokens = bce + loss, tokens + n
        n_texts = max(len(texts), 1)
        out.append({
            "run": str(run), "split": split, "texts": len(texts),
            "bce": bce / max(tokens, 1), "top3": hits / (3 * n_texts),
            "first3": first_hits / (3 * n_texts),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the benchmark folder")
    parser.add_argument("--limit", type=int, default=150, help="distinct texts per split")
    args = parser.parse_args(argv)
    print("| run | split | texts | selector BCE | top-3 by the selector | first three |")
    print("|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        for r in probe(run, args.data, args.limit):
            print(f"| {r['run']} | {r['split']} | {r['texts']} | {r['bce']:.3f} | "
                  f"{100 * r['top3']:.0f} % | {100 * r['first3']:.0f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
