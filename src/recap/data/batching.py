"""Length-grouped, seeded, resumable batches that shard the same way on one process or many.

Padding every batch to 512 tokens wastes most of a step on pad positions, so examples of similar
length go together: each epoch the examples are shuffled, cut into mega-batches of
`batch_size * mega_batch_mult`, sorted by length inside each mega-batch, cut into batches, and the
batches are shuffled. The order is a pure function of (seed, epoch), so a resumed run sees the
same batches, and `start_batch` skips the batches an interrupted epoch already trained on.

With `per_group` K > 1 the examples of one group (the references of one song) enter the epoch
in units of up to K, so a batch holds K captions of each of its songs, and the collator encodes
each song once for all of them (`Collator.share_sources`): the encoder's work per step falls
by up to K while every caption still gets its own row.

Every batch is a GLOBAL batch; with several processes each rank takes one contiguous slice of it
(neighbours in a length-sorted batch have similar lengths, so ranks pad alike). One process with
batch B and N processes with B/N each therefore train on exactly the same examples per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yield this rank's share of each global batch of dataset indices.

    Args:
        lengths: a length per example (lyrics + caption tokens); only the order matters.
        batch_size: the GLOBAL batch size (summed over processes).
        seed: the order of epoch e depends only on (seed, e).
        mega_batch_mult: batches per sorted group; 1 sorts within a batch only (no grouping),
            larger groups pad less but make batch composition less random.
        shuffle: False keeps dataset order (for evaluation).
        drop_last: drop the final incomplete global batch instead of training on it.
        num_replicas, rank: the process group; each rank gets its slice of every global batch.
        groups, per_group: with per_group > 1, a group label per example (its song); each
            group's examples are shuffled and cut into units of up to per_group that stay
            together in one batch (a unit may still straddle two batches). per_group 1: the
            examples are drawn one by one (groups unused).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        mega_batch_mult: int = 50,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        groups: Sequence[str] | None = None,
        per_group: int = 1,
    ) -> None:
        if batch_size < 1 or mega_batch_mult < 1 or per_group < 1:
            raise ValueError("batch_size, mega_batch_mult and per_group must be positive")
        if per_group > 1 and (groups is None or len(groups) != len(lengths)):
            raise ValueError("per_group > 1 needs one group label per example")
        if batch_size % num_replicas:
            raise ValueError(
                f"the global batch size {batch_size} must divide evenly among {num_replicas} processes"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.groups = list(groups) if groups is not None else None
        self.per_group = per_group
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first `start_batch` batches (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All global batches of an epoch, in training order (identical on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        units = self._units(rng)
        order = rng.permutation(len(units)) if self.shuffle else np.arange(len(units))
        # Whole units first, so that only the epoch's last batches hold a unit cut in two.
        whole = np.array([len(units[u]) == self.per_group for u in order], dtype=bool)
        order = np.concatenate([order[whole], order[~whole]])
        longest = np.array([self.lengths[u].max() for u in units])
        mega = max(1, self.batch_size // self.per_group) * self.mega_batch_mult
        flat: list[np.ndarray] = []
        for start in range(0, len(order), mega):
            group = order[start : start + mega]
            # Longest first inside a group; the stable sort keeps the shuffled order among ties.
            flat.extend(units[u] for u in group[np.argsort(-longest[group], kind="stable")])
        examples = np.concatenate(flat)  # every example once, units contiguous
        # Mega-batches of single examples are multiples of the batch: cutting the whole epoch
        # cuts each of them as before.
        batches = [examples[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        # Only the last batch of the last mega-batch can be short: drop it, or pad it by repeating
        # its own examples (as DistributedSampler does) so every rank gets the same count.
        if len(batches[-1]) < self.batch_size:
            if self.drop_last:
                batches.pop()
            elif self.num_replicas > 1:
                last = batches[-1]
                need = -len(last) % self.num_replicas
                batches[-1] = np.concatenate([last, np.resize(last, need)])
        if self.shuffle and batches:
            # The mega-batch boundaries would otherwise show up as a long-to-short sawtooth.
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _units(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The examples in units: single examples, or with `per_group` > 1 each group's
        examples (shuffled) cut into pieces of up to `per_group`."""
        if self.per_group == 1:
            return list(np.arange(len(self.lengths)).reshape(-1, 1))
        members: dict[str, list[int]] = {}
        for i, group in enumerate(self.groups or ()):
            members.setdefault(group, []).append(i)
        units: list[np.ndarray] = []
        for indices in members.values():
            own = np.asarray(indices)
            if self.shuffle:
                own = own[rng.permutation(len(own))]
            units.extend(own[i : i + self.per_group] for i in range(0, len(own), self.per_group))
        return units

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start_batch :]:
            per_rank = len(batch) // self.num_replicas
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()

    def __len__(self) -> int:
        """Batches left in the current epoch (after `start_batch`)."""
        return max(0, self.batches_per_epoch() - self.start_batch)

    def batches_per_epoch(self) -> int:
        n, b = len(self.lengths), self.batch_size
        if n == 0:
            return 0
        full, rest = divmod(n, b)
        # Mega-batches are multiples of b, so only the global tail can be short.
        return full + (1 if rest and not self.drop_last else 0)


def pad_music(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Stack songs' music sequences (M_i, D) into (B, M, D), M = max M_i, zero-padded.

    Songs heard in different numbers of windows have different M_i (W_i * 119 tokens); the mask
    (B, M) is 1 for real tokens and 0 for padding, for fusion's attention and the music mean. It
    is None when every song has the same length (the paper's one window), so that path stays as
    it was. A song without music (0, D) — a text-only training row — is a row of mask zeros."""
    lengths = [a.shape[0] for a in arrays]
    if len(set(lengths)) == 1 and lengths[0] > 0:
        return np.stack(arrays), None  # (B, M, D)
    longest = max(1, max(lengths))  # a batch of text-only rows still has one (masked) token
    music = np.zeros((len(arrays), longest, arrays[0].shape[-1]), dtype=arrays[0].dtype)
    mask = np.zeros((len(arrays), longest), dtype=np.int64)  # (B, M)
    for i, a in enumerate(arrays):
        music[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = 1
    return music, mask


def music_tensors(arrays: Sequence[np.ndarray], device: Any) -> dict[str, Any]:
    """`music_embeds` (B, M, D) float32 and, when lengths differ, `music_mask` (B, M) on
    `device`: the keyword arguments of `RecapModel.encode/forward/generate` for these songs."""
    import torch

    music, mask = pad_music([np.asarray(a) for a in arrays])
    out = {"music_embeds": torch.from_numpy(music.astype(np.float32)).to(device)}
    if mask is not None:
        out["music_mask"] = torch.from_numpy(mask).to(device)
    return out
