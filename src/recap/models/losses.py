"""Losses of the captioner (SPEC §1.4, §1.5).

* caption loss: token cross-entropy; padding is masked by default (the public code counted it);
* alignment loss between the pooled music sequence and the projected pooled lyrics:
  positive-pair cosine (paper eq. 1) or InfoNCE (the authors' code), both computed once per song;
* `recap_loss` combines them into named terms: `loss = caption_loss + w * align_loss`.

Why de-duplicate by song id: the dataset has many interpretations per song, so a batch often holds
the same (music, lyrics) pair several times. For the cosine loss duplicates would only re-weight
songs; for InfoNCE they are worse: a copy of song i elsewhere in the batch is its own positive
counted as a negative, which pushes the pair apart. Keeping the first row of each song fixes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

SongIds = Sequence[object] | torch.Tensor | None


def caption_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pad_token_id: int | None = 1,
    include_padding: bool = False,
) -> torch.Tensor:
    """Mean token cross-entropy of `logits` (B, T, V) against `labels` (B, T).

    Positions labelled -100 never count. Positions labelled `pad_token_id` are masked unless
    `include_padding` (which reproduces the reference code, where pads were trained on).
    """
    labels = labels.to(logits.device)
    if not include_padding and pad_token_id is not None:
        labels = labels.masked_fill(labels == pad_token_id, IGNORE_INDEX)
    # (B, T, V) -> (B*T, V); float32 so half-precision logits do not lose the loss.
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `x` (B, L, D) over L counting only positions where `mask` (B, L) is nonzero.

    `mask=None` averages every position. A row with an empty mask gives zeros, not NaN.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (x * weights).sum(dim=1)  # (B, D)
    count = weights.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count


class AttentionPool(nn.Module):
    """Attention pooling (not in the paper): `sum_t softmax_t(score(x_t)) x_t` over the masked
    positions, with a learned linear score per token (a query vector and a bias).

    Why: the paper's mean over a text's ~100 tokens dilutes the one or two keywords that say
    what the song is about; a learned score can weight them up. The score starts at zero
    weights, so an untrained pool is the masked mean.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).float()  # (B, L, d) -> (B, L)
        if mask is not None:
            # an all-masked row softmaxes over -inf only: give it zeros (as masked_mean does)
            scores = scores.masked_fill(mask == 0, float("-inf"))
            empty = ~(mask != 0).any(dim=1, keepdim=True)  # (B, 1)
            scores = scores.masked_fill(empty, 0.0)
        weights = scores.softmax(dim=-1).to(x.dtype)  # (B, L)
        if mask is not None:
            weights = weights * (mask != 0).to(x.dtype)
        return torch.einsum("bl,bld->bd", weights, x)  # (B, d)


def first_of_each_song(song_ids: SongIds, batch_size: int, device: torch.device) -> torch.Tensor:
    """Row indices (LongTensor) keeping the first row of each distinct song id, in batch order.

    `song_ids=None` treats every row as its own song.
    """
    if song_ids is None:
        return torch.arange(batch_size, device=device)
    ids = song_ids.tolist() if isinstance(song_ids, torch.Tensor) else list(song_ids)
    if len(ids) != batch_size:
        raise ValueError(f"song_ids has {len(ids)} entries for a batch of {batch_size}")
    seen: set[object] = set()
    keep: list[int] = []
    for row, song in enumerate(ids):
        if song not in seen:
            seen.add(song)
            keep.append(row)
    return torch.tensor(keep, dtype=torch.long, device=device)


def cosine_alignment_loss(
    music: torch.Tensor, lyrics: torch.Tensor, song_ids: SongIds = None
) -> torch.Tensor:
    """Positive-pair loss `1 - mean_i cos(music_i, lyrics_i)` over distinct songs.

    `music`, `lyrics`: (B, D) pooled music vectors and projected lyrics vectors.
    """
    keep = first_of_each_song(song_ids, music.size(0), music.device)
    cos = F.cosine_similarity(music[keep].float(), lyrics[keep].float(), dim=-1)  # (S,)
    return 1.0 - cos.mean()


def infonce_alignment_loss(
    music: torch.Tensor,
    lyrics: torch.Tensor,
    song_ids: SongIds = None,
    temperature: float | torch.Tensor = 0.3,
) -> torch.Tensor:
    """NT-Xent with music as anchors: for song i, `-log softmax_j(cos(m_i, l_j) / T)[i]`.

    The paired lyrics are the one positive and the other songs' lyrics the negatives; the batch
    is first reduced to one row per song (see the module docstring). With a single song there are
    no negatives and the loss is 0.
    """
    keep = first_of_each_song(song_ids, music.size(0), music.device)
    m = F.normalize(music[keep].float(), dim=-1)  # (S, D)
    lyr = F.normalize(lyrics[keep].float(), dim=-1)  # (S, D)
    logits = m @ lyr.T / temperature  # (S, S): row i = anchor music i against every lyrics j
    targets = torch.arange(logits.size(0), device=logits.device)
    return F.cross_entropy(logits, targets)


def alignment_loss(
    music: torch.Tensor,
    lyrics: torch.Tensor,
    song_ids: SongIds = None,
    kind: str = "cosine",
    temperature: float | torch.Tensor = 0.3,
) -> torch.Tensor:
    """Dispatch on `kind` ("cosine" | "infonce")."""
    if kind == "cosine":
        return cosine_alignment_loss(music, lyrics, song_ids)
    if kind == "infonce":
        return infonce_alignment_loss(music, lyrics, song_ids, temperature)
    raise ValueError(f"unknown alignment loss {kind!r}; expected 'cosine' or 'infonce'")


@dataclass
class LossTerms:
    """Named loss terms; `loss` is what the optimiser minimises."""

    loss: torch.Tensor
    caption_loss: torch.Tensor
    align_loss: torch.Tensor
    reconstruct_loss: torch.Tensor
    select_loss: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        """Detached floats, for logging."""
        return {
            "loss": float(self.loss.detach()),
            "caption_loss": float(self.caption_loss.detach()),
            "align_loss": float(self.align_loss.detach()),
            "reconstruct_loss": float(self.reconstruct_loss.detach()),
            "select_loss": float(self.select_loss.detach()),
        }


def recap_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    music: torch.Tensor | None = None,
    lyrics: torch.Tensor | None = None,
    song_ids: SongIds = None,
    align_weight: float = 0.02,
    align_kind: str = "cosine",
    temperature: float | torch.Tensor = 0.3,
    pad_token_id: int | None = 1,
    include_padding: bool = False,
    reconstruct_logits: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    reconstruct_weight: float = 0.0,
    select: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    select_weight: float = 0.0,
) -> LossTerms:
    """`loss = caption_loss + align_weight * align_loss + reconstruct_weight * reconstruct_loss
    + select_weight * select_loss`.

    Without music (the `bart` method) the alignment term is a zero tensor, so logging stays uniform.
    The alignment term is computed whenever vectors are given, even at w = 0, so BART-fusion
    runs report how aligned their (untrained) spaces are. The reconstruction term (given
    `reconstruct_logits`, see `reconstruction_loss`) is zero when absent, and so is the content
    selector's (`select` = its logits, targets and mask, see `selection_loss`).
    """
    cap = caption_loss(logits, labels, pad_token_id, include_padding)
    if music is None or lyrics is None:
        align = cap.new_zeros(())
    else:
        align = alignment_loss(music, lyrics, song_ids, align_kind, temperature)
    total = cap + align_weight * align if align_weight else cap
    recon = cap.new_zeros(())
    if reconstruct_logits is not None and input_ids is not None:
        recon = reconstruction_loss(reconstruct_logits, input_ids, attention_mask)
        if reconstruct_weight:
            total = total + reconstruct_weight * recon
    chosen = cap.new_zeros(())
    if select is not None:
        chosen = selection_loss(*select)
        if select_weight:
            total = total + select_weight * chosen
    return LossTerms(
        loss=total,
        caption_loss=cap,
        align_loss=align,
        reconstruct_loss=recon,
        select_loss=chosen,
    )


def selection_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Binary cross-entropy of the content selector (`logits` (B, S)) against which source
    tokens' words the caption contains (`targets` (B, S) in {0, 1}), over the `mask`ed tokens.

    Why: the copy head learns which lyrics words a caption quotes only from the handful of
    tokens each caption copies; this term gives every lyrics token a label."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if mask is None:
        return loss.mean()
    weights = mask.to(loss.dtype)
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)


def reconstruction_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of each lyrics token predicted from the encoder's output at its own
    position (`logits` (B, L, V) from the tied LM head; padding masked).

    Why: trained from scratch on captions, a small encoder collapses to states that no longer
    depend on its input (the decoder first learns the captions' template language, and any
    input-dependent variation is noise to it until it learns to read). This term keeps every
    token readable at the output, so copying the lyrics is one cross-attention away.
    """
    targets = input_ids.to(logits.device)
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask.to(logits.device) == 0, IGNORE_INDEX)
    # (B, L, V) -> (B*L, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
