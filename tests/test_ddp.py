"""Two CPU processes (DDP over gloo) train exactly what one process trains on the same global
batch: the sampler shards each global batch, and the loss is re-weighted by token counts."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from test_train import fake_music_embeddings, final_weights, make_dataset, tiny_config

import recap.training.train as train_mod

# No dropout: each rank would draw masks for its half of the batch, one process for all of it.
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: train_mod.TrainConfig) -> None:
    # What torchrun / accelerate launch would set for each process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    torch.set_num_threads(1)
    train_mod.train(config, embed=fake_music_embeddings)


def _determined(key: str, value: torch.Tensor) -> torch.Tensor:
    """The part of a weight that the loss determines. Attention KEY biases get an exactly zero
    gradient (softmax ignores a shift shared by all keys), so their float round-off "gradient"
    differs with the summation order, and Adafactor, which normalises every update, turns it
    into lr-sized steps. Leave them out of the comparison."""
    if key.endswith(("k_proj.bias", "key.bias")):
        return value[:0]
    if key.endswith("in_proj_bias"):  # [q; k; v] of nn.MultiheadAttention
        q, _, v = value.chunk(3)
        return torch.cat([q, v])
    return value


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    # One interpretation per song: the per-rank alignment means then average to the global one.
    data = make_dataset(tmp_path / "data", n_songs=10, per_song=1)

    def config(out: str, **overrides) -> train_mod.TrainConfig:
        # 8 train rows, global batch 4: 2 steps per epoch; stop after 3 steps, no validation.
        values = dict(epochs=2, max_steps=3, val_every_epochs=10, model_overrides=NO_DROPOUT)
        return tiny_config(data, tmp_path / out, **{**values, **overrides})

    one = train_mod.train(config("one"), embed=fake_music_embeddings)
    mp.spawn(_worker, args=(2, _free_port(), config("two")), nprocs=2, join=True)
    two = tmp_path / "two"

    start = json.loads((two / "log.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2
    state = json.loads((two / "last" / "state.json").read_text())
    assert state["step"] == 3
    a, b = final_weights(one), final_weights(two)
    for key in a:
        torch.testing.assert_close(_determined(key, a[key]), _determined(key, b[key]),
                                   rtol=0, atol=1e-6, msg=key)  # fmt: skip
    # Not vacuous: a run that differs only in batch size (as if each rank trained on its own
    # per-process batch) ends elsewhere, far beyond that tolerance.
    other = final_weights(
        train_mod.train(config("half_batch", batch_size=2), embed=fake_music_embeddings)
    )
    assert max((a[k] - other[k]).abs().max().item() for k in a) > 1e-3
