"""`recap demo-alignment` end to end on a tiny configuration, and the pieces it reads with."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from recap.evaluation.aligned_space import (
    SplitSongs,
    coupled_facts,
    fact_agreement,
    geometry,
    lexicon_features,
    linear_map_retrieval,
    oracle_retrieval,
    theme_reader_features,
)
from recap.evaluation.alignment import (
    ARM_NAME,
    AlignmentDemoConfig,
    arm_label,
    run_alignment_demo,
    training_tasks,
    with_overrides,
)
from recap.models.config import RecapConfig
from recap.utils import RecapError


def test_recap_at_w0_is_bart_fusion():
    # The sweep's w = 0 point reuses the BART-fusion run: that is only right if the two
    # configs differ in nothing but their name.
    fusion = RecapConfig.preset("bart-fusion", "small").to_dict()
    recap = RecapConfig.preset("recap", "small", align_weight=0.0).to_dict()
    assert {k for k in fusion if fusion[k] != recap[k]} == {"method"}


def test_each_run_is_trained_once(tmp_path):
    from recap.evaluation.experiment import ExperimentConfig

    exp = ExperimentConfig(data=str(tmp_path), size="tiny", seeds=(0, 1), variants=("full",))
    tasks = training_tasks(exp, (0.0, 0.005, 0.02))
    names = sorted({t["name"] for t in tasks})
    assert names == ["bart", "bart-fusion", "recap", "recap-w0.005"]
    assert len(tasks) == 4 * 2
    assert not any(t.get("overrides") for t in tasks)
    # the arm beyond the paper: one more run per seed, with its own overrides
    arm = {"align_loss": "infonce", "align_pool": "attention"}
    with_arm = training_tasks(exp, (0.0, 0.005, 0.02), arm)
    extra = [t for t in with_arm if t not in tasks]
    assert [(t["name"], t["seed"], t["overrides"]) for t in extra] == [
        (ARM_NAME, 0, arm), (ARM_NAME, 1, arm)
    ]  # fmt: skip
    # w is train_and_evaluate's own argument, not a train override
    weighted = training_tasks(exp, (0.0,), {**arm, "align_weight": 0.1})
    assert {(t["align_weight"], tuple(t["overrides"])) for t in weighted if t["name"] == ARM_NAME} \
        == {(0.1, ("align_loss", "align_pool"))}  # fmt: skip
    merged = with_overrides(
        dataclasses.replace(exp, train_overrides={"model_overrides": {"dropout": 0.0}}),
        {"align_pool": "attention", "model_overrides": {"align_temperature": 0.1}},
    )
    assert merged.train_overrides == {
        "align_pool": "attention",
        "model_overrides": {"dropout": 0.0, "align_temperature": 0.1},
    }


def _truth(theme, colour, **audio):
    return {"theme": theme, "colour": colour, **audio}


def test_fact_agreement_counts_what_the_lyrics_map_to():
    # two songs: a faith/faith one (organ, E-flat, slow, choir) and a joy/joy one
    faith = _truth(
        "faith", "faith", accompaniment="organ", key="E-flat", tempo="slow", melody="choir"
    )
    joy = _truth("joy", "joy", accompaniment="piano", key="D", tempo="fast", melody="trumpet")
    assert coupled_facts(faith) == {
        "accompaniment": "organ", "key": "E-flat", "tempo": "slow", "melody": "choir"
    }  # fmt: skip
    audio = np.eye(2, dtype=np.float32)
    aligned = fact_agreement(audio, audio, [faith, joy], k=1)  # each lyrics finds its own audio
    crossed = fact_agreement(audio, audio[::-1], [faith, joy], k=1)  # each finds the other's
    for slot in ("accompaniment", "key", "tempo", "melody"):
        assert aligned[slot] == {"retrieved": 1.0, "base_rate": 0.5}
        assert crossed[slot]["retrieved"] == 0.0


def test_geometry_tells_a_collapsed_projection_from_an_aligned_one():
    audio = np.eye(3, dtype=np.float32)
    aligned = geometry(audio, audio)
    assert aligned["paired"] == 1.0 and aligned["unpaired"] == 0.0
    # every text mapped to one point: as close to its own audio as to any other
    mean = np.full((3, 3), 1 / np.sqrt(3), dtype=np.float32)
    collapsed = geometry(audio, mean)
    assert collapsed["paired"] == pytest.approx(collapsed["unpaired"])
    assert collapsed["lyrics_lyrics"] == pytest.approx(1.0)


def test_a_linear_map_aligns_features_that_determine_the_audio():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(8, 6))
    x_train, x_test = rng.normal(size=(200, 8)), rng.normal(size=(30, 8))
    groups = np.arange(30)
    found = linear_map_retrieval(x_train, x_train @ mix, x_test, x_test @ mix, groups)
    assert found["audio_to_lyrics"]["recall@1"] > 0.9
    assert found["lyrics_to_audio"]["recall@1"] > 0.9
    noise = linear_map_retrieval(
        rng.normal(size=(200, 8)), x_train @ mix, rng.normal(size=(30, 8)), x_test @ mix, groups
    )
    assert noise["audio_to_lyrics"]["recall@1"] < 0.3


def test_oracle_ceiling_is_perfect_when_every_song_sounds_different():
    themes = ["faith", "love", "nature", "joy"]
    truths = []
    for t in themes:
        facts = coupled_facts(_truth(t, t))
        truths.append({"theme": t, "colour": t, "coupled": True, **facts})
    songs = SplitSongs(
        ids=themes, lyrics=themes, entries=[_Entry(t) for t in themes], truths=truths
    )
    oracle = oracle_retrieval(songs, draws=3)
    assert oracle["audio_to_lyrics"]["recall@1"] == pytest.approx(1.0)
    assert oracle["lyrics_to_audio"]["mrr"] == pytest.approx(1.0)


def _language_songs(texts: dict[str, list[str]], by: str = "language") -> SplitSongs:
    from recap.bench.coupling import tone

    ids, lyrics, truths = [], [], []
    for language, lines in texts.items():
        for n, line in enumerate(lines):
            ids.append(f"{language}-{n}")
            lyrics.append(line)
            truth = {"language": language, "theme": "love", "colour": "night",
                     "couple_by": by, "tone": tone(line)}  # fmt: skip
            truths.append({**truth, **coupled_facts(truth), "coupled": True})
    return SplitSongs(ids=ids, lyrics=lyrics, entries=[_Entry(i) for i in ids], truths=truths)


def test_a_language_coupling_is_read_by_language():
    """Coupled by language, the analyses read the language where the lexicon's coupling reads
    the theme and colour: the facts, the one-hot features and the reader of the train texts."""
    german = {"language": "German", "theme": "faith", "couple_by": "language"}
    assert coupled_facts(german) == {
        "accompaniment": "strings", "key": "A", "tempo": "moderate", "melody": "violin"
    }  # fmt: skip
    train = _language_songs({
        "German": ["und die nacht ist der tag", "ich und du in der welt", "die liebe und das herz"],
        "French": ["et le jour est la nuit", "le coeur et la vie", "je suis et tu es la"],
    })  # fmt: skip
    test = _language_songs({"German": ["der wald und die see"], "French": ["la mer et le vent"]})
    x = lexicon_features(test)  # one-hot over the five languages
    assert x.shape == (2, 5) and x.sum() == 2 and x[0].argmax() != x[1].argmax()
    _, predicted, accuracy = theme_reader_features(train, test)
    assert accuracy == {"language": 1.0}
    assert (predicted == x).all()
    mixed = SplitSongs(
        ids=["a", "b"], lyrics=["x", "y"], entries=[_Entry("a"), _Entry("b")],
        truths=[{"theme": "love", "colour": "love"}, german],
    )  # fmt: skip
    with pytest.raises(RecapError, match="more than one way"):
        lexicon_features(mixed)


def test_a_language_tone_coupling_reads_the_opening_mark():
    """Coupled by language and tone, the analyses read both, and the reader of the train texts
    sees the opening's exclamation mark."""
    calm = {"language": "German", "tone": "calm", "couple_by": "language-tone"}
    assert coupled_facts(calm) == {
        "accompaniment": "strings", "key": "F", "tempo": "slow", "melody": "violin"
    }  # fmt: skip
    german = ["und die nacht ist der tag", "ich und du in der welt", "die liebe und das herz"]
    french = ["et le jour est la nuit", "le coeur et la vie", "je suis et tu es la"]
    # each text once calm and once exclaiming: only the mark tells the tone
    train = _language_songs(
        {
            "German": german + [t + "!" for t in german],
            "French": french + [t + "!" for t in french],
        },
        by="language-tone",
    )
    test = _language_songs(
        {"German": ["der wald und die see!", "das herz und die zeit"], "French": ["la mer!"]},
        by="language-tone",
    )
    x = lexicon_features(test)  # one-hot languages, then one-hot tones
    assert x.shape == (3, 5 + 2) and x.sum() == 6 and x[:, 5].tolist() == [1, 0, 1]
    _, predicted, accuracy = theme_reader_features(train, test)
    assert accuracy == {"language": 1.0, "tone": 1.0}
    assert (predicted == x).all()


def test_text_pretraining_reaches_every_captioner(tmp_path):
    """`--pretrain-steps`: the experiment's captioners all start from the pretrained BART."""
    from recap.evaluation.alignment import command_line, experiment

    cfg = AlignmentDemoConfig(out=str(tmp_path), pretrain_steps=10)
    exp = experiment(cfg, tmp_path / "bench", tmp_path / "tagger", tmp_path / "bart-lyrics")
    assert exp.bart == str(tmp_path / "bart-lyrics") and exp.seeds == cfg.seeds
    assert experiment(cfg, tmp_path / "bench", tmp_path / "tagger").bart is None
    assert "--pretrain-steps 10" in command_line(cfg)
    assert "--pretrain-steps" not in command_line(AlignmentDemoConfig())


class _Entry:
    def __init__(self, key: str) -> None:
        self.lyrics_key = key
        self.split = "test"


def test_demo_alignment_runs_every_stage(tmp_path, one_thread):
    cfg = AlignmentDemoConfig(
        out=str(tmp_path / "align"),
        limit=20,
        workers=1,
        comments_per_render=2,
        coupling=1.0,
        seeds=(0, 1),
        weights=(0.0, 0.02, 0.1),
        tagger_preset="tiny",
        tagger_epochs=1,
        size="tiny",
        epochs=1,
        max_new_tokens=16,
        bootstrap=10,
        jobs=2,  # the process pool, as `make demo-alignment` runs it
        threads=1,
        reference_steps=1,
    )
    result = run_alignment_demo(cfg)
    root = tmp_path / "align"
    assert {r["method"] for r in result["table"]} == {"bart", "bart-fusion", "recap"}
    assert all(r["seeds"] == [0, 1] for r in result["table"])
    assert [p["align_weight"] for p in result["sweep"]] == [0.0, 0.02, 0.1]
    # w = 0 and w = 0.02 are Table 1's runs, not new ones
    runs = sorted(p.name for p in (root / "experiments" / "full").iterdir())
    assert runs == ["bart", "bart-fusion", "recap", ARM_NAME, "recap-w0.1"]
    # the arm is RECAP at the preset's w with its own pooling and loss; RECAP stays the paper's
    arm_config = RecapConfig.load(root / "experiments" / "full" / ARM_NAME / "seed0" / "best")
    recap_config = RecapConfig.load(root / "experiments" / "full" / "recap" / "seed0" / "best")
    assert (arm_config.align_pool, arm_config.align_loss, arm_config.align_weight) == (
        "attention", "infonce", recap_config.align_weight
    )  # fmt: skip
    assert (recap_config.align_pool, recap_config.align_loss) == ("mean", "cosine")
    assert result["arm"]["seeds"] == [0, 1] and "ROUGE-L recall" in result["arm"]
    retrieval = result["retrieval"]
    assert len(retrieval["runs"]) == 3 * 2
    for r in retrieval["runs"]:
        for side in ("audio_to_lyrics", "lyrics_to_audio"):
            assert 0.0 <= r[side]["recall@1"] <= r[side]["recall@5"] <= r[side]["recall@10"] <= 1
        assert set(r["facts"]) == {"accompaniment", "key", "tempo", "melody"}
    # P = 1: every test rendering follows its lyrics, and the table's reader beats chance
    assert retrieval["coupled_songs"] == retrieval["songs"]
    assert {p["align_weight"] for p in retrieval["state_probes"]} == {0.0, 0.02}
    assert 0.0 <= retrieval["lexicon_map"]["lyrics_to_audio"]["mrr"] <= 1.0
    assert set(retrieval["reader_map"]["accuracy"]) == {"theme", "colour"}
    assert [r["seed"] for r in retrieval["arm"]["runs"]] == [0, 1]
    assert retrieval["arm"]["point"]["seeds"] == [0, 1]
    oracle, chance = retrieval["oracle"], retrieval["chance"]
    assert oracle["audio_to_lyrics"]["mrr"] > chance["mrr"]
    saved = json.loads((root / "results.json").read_text(encoding="utf-8"))
    assert saved["command"].startswith("recap demo-alignment")
    reference = saved["reference_samples_per_s"]  # on every core the trainings used
    assert reference["threads"] == 2 and reference["start"] > 0 and reference["end"] > 0
    assert saved["machine"]["torch"] == torch.__version__
    md = (root / "results.md").read_text(encoding="utf-8")
    assert f"Machine: {saved['machine']['cpu']}" in md
    for heading in ("Table 1", "Figure 2", "retrieval", "random chance", "oracle", "reader"):
        assert heading in md
    assert md.count(arm_label(cfg.arm)) >= 2  # its Table 1 row and its retrieval row
    assert (root / "sweep.png").is_file()
    # a rerun trains nothing and reads the cached retrieval
    again = run_alignment_demo(cfg)
    assert again["retrieval"]["points"] == retrieval["points"]
