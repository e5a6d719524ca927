"""The alignment warm-up: the aligned space trained alone before captioning."""

import json

import numpy as np
import pytest
import torch
from test_train import final_weights, make_dataset, tiny_config, train_fake

from recap.models.config import RecapConfig
from recap.models.model import RecapModel
from recap.training.align_warmup import align_warmup, songs_once
from recap.training.collate import Example

pytestmark = pytest.mark.usefixtures("one_thread")


def _songs(n: int, config: RecapConfig) -> tuple[list[Example], dict[str, np.ndarray]]:
    """n songs, each with its own lyrics word (token 10 + i) and its own random music: only the
    lyrics can say which music is the song's. Every song has two interpretations."""
    rng = np.random.default_rng(0)
    examples, music = [], {}
    for i in range(n):
        sid = f"s{i:02d}"
        ids = [config.bos_token_id, 10 + i, 5, 10 + i, 6, config.eos_token_id]
        examples += [Example(sid, ids, [config.bos_token_id, 7, config.eos_token_id])] * 2
        music[sid] = rng.standard_normal((119, config.music_dim)).astype(np.float16)
    return examples, music


def _retrieved(model: RecapModel, examples: list[Example], music: dict) -> float:
    """Share of songs whose own music is the nearest to their lyrics vector."""
    from recap.training.align_warmup import music_vectors

    songs = songs_once(examples)
    model.eval()
    with torch.no_grad():
        lyrics = model.embed_lyrics(torch.tensor([e.lyrics_ids for e in songs]), normalize=True)
        audio = music_vectors(model, music, [e.song_id for e in songs], torch.device("cpu"))
    model.train()
    nearest = (lyrics @ torch.nn.functional.normalize(audio, dim=-1).T).argmax(dim=1)
    return float((nearest == torch.arange(len(songs))).float().mean())


def test_warmup_learns_to_retrieve_and_moves_only_the_lyrics_side():
    torch.manual_seed(0)
    config = RecapConfig.preset("recap", "tiny", align_loss="infonce", align_temperature=0.1)
    model = RecapModel(config)
    examples, music = _songs(12, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = _retrieved(model, examples, music)

    losses = align_warmup(
        model, examples, music, epochs=30, lr=3e-3, batch_size=6, seed=0,
        pad_token_id=config.pad_token_id, device=torch.device("cpu"),
    )  # fmt: skip

    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    assert start < 0.5 and _retrieved(model, examples, music) == 1.0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("align_proj") for n in moved)
    assert any(".encoder.layers.0." in n for n in moved)
    # Above the aligned layer, in the decoder and in fusion nothing reads the alignment loss.
    assert not any(".decoder." in n or "fusion" in n for n in moved), sorted(moved)
    assert not any(f".encoder.layers.{config.align_layer}." in n for n in moved)


def test_songs_once_keeps_the_first_example_of_each_song():
    examples = [Example(s, [0, i, 2], [0, 2]) for i, s in enumerate("aabcb")]
    assert [(e.song_id, e.lyrics_ids[1]) for e in songs_once(examples)] == [
        ("a", 0),
        ("b", 2),
        ("c", 3),
    ]


def test_training_runs_the_warmup_once_and_resumes_past_it(tmp_path):
    data = make_dataset(tmp_path / "data")
    extra = {"align_loss": "infonce", "align_warmup_epochs": 3, "align_warmup_batch_size": 4}
    straight = train_fake(tiny_config(data, tmp_path / "a", **extra))
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    warm = [r for r in log if r.get("event") == "align_warmup"]
    assert [r["epoch"] for r in warm] == [0, 1, 2]
    assert all(np.isfinite(r["align_loss"]) for r in warm)

    # The warm-up changes where captioning starts, so the weights differ from a run without.
    plain = train_fake(tiny_config(data, tmp_path / "p", align_loss="infonce"))
    a, p = final_weights(straight), final_weights(plain)
    assert any(not torch.equal(a[k], p[k]) for k in a)

    # A resumed run loads weights that hold the warm-up: it does not run it again, and ends
    # where the unbroken run ends.
    train_fake(tiny_config(data, tmp_path / "b", max_steps=5, checkpoint_every_steps=5, **extra))
    resumed = train_fake(tiny_config(data, tmp_path / "b", resume=True, **extra))
    log_b = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "align_warmup" for r in log_b) == 3
    b = final_weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_warmup_settings_are_checked():
    from recap.training.config import TrainConfig
    from recap.utils import RecapError

    for bad in ({"align_warmup_epochs": -1}, {"align_warmup_batch_size": 1}):
        with pytest.raises(RecapError, match="align_warmup"):
            TrainConfig(data="d", out="o", size="tiny", **bad).resolved()
