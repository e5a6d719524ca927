"""Alignment warm-up (not in the paper): train the aligned space alone before captioning.

RECAP learns its aligned space inside the captioning run: `loss = caption_loss + w * align_loss`
with w = 0.02, over batches that hold a few songs each. On a benchmark whose audio follows the
lyrics (`recap bench build --coupling 1`) that leaves the space at chance: the caption loss
outweighs the alignment 50 to 1 and the lyrics side never learns which words the sound follows
(docs/results.md, "Alignment where audio and lyrics correspond"). The warm-up gives the alignment
its own epochs first: over the train split's songs (one row each), the lyrics encoder up to
`align_layer`, the pool and the projection are trained on the model's alignment loss alone,
against the frozen music vectors. Captioning then starts from that encoder.

Use it with the InfoNCE loss (`--align-loss infonce`): the paper's positive-pair cosine has no
negatives, and alone it drives every lyrics vector to one point (a warm-up with it is allowed,
and measured in docs/results.md, but it cannot learn to retrieve).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from recap.models.losses import alignment_loss


def songs_once(examples: Sequence[Any]) -> list[Any]:
    """The first example of each song, in order: a song's lyrics and music are the same in all
    its interpretations, and one song counted twice in a batch would be its own negative."""
    seen: set[str] = set()
    out = []
    for example in examples:
        if example.song_id not in seen:
            seen.add(example.song_id)
            out.append(example)
    return out


@torch.no_grad()
def music_vectors(
    model: Any, embeddings: Mapping[str, Any], song_ids: Sequence[str], device: torch.device
) -> torch.Tensor:
    """(S, music_dim): each song's music vector (`embed_music` of its frozen sequence)."""
    rows = [
        model.embed_music(
            torch.from_numpy(np.asarray(embeddings[s], dtype=np.float32))[None].to(device)
        )
        for s in song_ids
    ]  # each (1, music_dim)
    return torch.cat(rows).float()


def align_warmup(
    model: Any,
    examples: Sequence[Any],
    embeddings: Mapping[str, Any],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_token_id: int,
    device: torch.device,
    progress: bool = False,
    log: Any = None,
) -> list[float]:
    """Train `model`'s aligned space alone for `epochs` over the songs of `examples` (token ids
    in `example.lyrics_ids`); returns each epoch's mean alignment loss. Only what the lyrics
    vector depends on moves (the embeddings, encoder layers below `align_layer`, pool,
    projection): the other parameters get no gradient, so AdamW leaves them as they are. Songs
    without lyrics (only <s></s>) are left out, as in the training loss. Its own optimizer and
    data order (from `seed`), so the captioning run that follows is what it would be from these
    weights. `log(record)` receives one record per epoch."""
    from tqdm.auto import tqdm

    songs = [e for e in songs_once(examples) if len(e.lyrics_ids) > 2 and e.song_id in embeddings]
    if len(songs) < 2:
        return []
    music = music_vectors(model, embeddings, [e.song_id for e in songs], device)  # (S, m)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    bar = tqdm(total=epochs, desc="align warm-up", disable=not progress, dynamic_ncols=True)
    for epoch in range(epochs):
        total, counted = 0.0, 0
        for rows in torch.randperm(len(songs), generator=order).split(batch_size):
            if len(rows) < 2:  # one song has no negative
                continue
            batch = [songs[i] for i in rows.tolist()]
            width = max(len(e.lyrics_ids) for e in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            for i, e in enumerate(batch):
                ids[i, : len(e.lyrics_ids)] = torch.as_tensor(e.lyrics_ids)
            mask = (ids != pad_token_id).long()
            lyrics = model.embed_lyrics(ids.to(device), mask.to(device))  # (B, m)
            loss = alignment_loss(
                music[rows.to(device)],
                lyrics,
                kind=model.config.align_loss,
                temperature=model.align_temperature(),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, counted = total + float(loss.detach()) * len(batch), counted + len(batch)
        losses.append(total / max(counted, 1))
        bar.update(1)
        bar.set_postfix(align_loss=f"{losses[-1]:.3f}")
        if log is not None:
            log({"event": "align_warmup", "epoch": epoch, "align_loss": losses[-1]})
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    return losses
