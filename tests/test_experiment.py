"""Table 1 rendering and the Figure 2 plot from fake evaluation records, the sweep's reuse of
the Table 1 runs, and the `recap experiment` command line."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest

from recap.cli import experiment as excli
from recap.evaluation import experiment as ex


def fake_summary(base: float, audio: float) -> dict[str, float]:
    s: dict[str, float] = {}
    for i, key in enumerate(
        (
            "ROUGE-1 recall",
            "ROUGE-2 recall",
            "ROUGE-L recall",
            "ROUGE-L F1",
            "METEOR (NLTK)",
            "METEOR 1.5",
        )
    ):
        value = base - 0.05 * i
        s[key], s[f"{key} low"], s[f"{key} high"] = value, value - 0.01, value + 0.01
    s["attribute accuracy audio"] = audio
    s["attribute accuracy lyrics"] = 0.8
    return s


def fake_records() -> list[dict]:
    recs = []
    for variant in ("full", "positive"):
        for method, base, audio in (
            ("bart", 0.30, 0.1),
            ("bart-fusion", 0.35, 0.6),
            ("recap", 0.36, 0.65),
        ):
            for seed, shift in ((0, 0.0), (1, 0.02)):
                recs.append(
                    {
                        "variant": variant,
                        "method": method,
                        "seed": seed,
                        "run": f"runs/{variant}/{method}/seed{seed}",
                        "summary": fake_summary(base + shift, audio),
                        "n_examples": 10,
                        "align_weight": 0.0,
                    }
                )
    return recs


def test_aggregate_means_over_seeds():
    rows = ex.aggregate(fake_records())
    assert [(r["variant"], r["method"]) for r in rows] == [
        (v, m) for v in ("full", "positive") for m in ex.METHODS
    ]
    recap_full = rows[2]
    stat = recap_full["ROUGE-1 recall"]
    assert stat["mean"] == pytest.approx(0.37)
    assert stat["low"] == pytest.approx(0.36) and stat["high"] == pytest.approx(0.38)
    assert stat["seed_std"] == pytest.approx(0.01)
    assert recap_full["seeds"] == [0, 1]


def test_table1_markdown_has_ours_and_paper_rows_labelled(tmp_path):
    rows = ex.aggregate(fake_records())
    md = ex.render_table1(
        rows,
        {
            "num_beams": 4,
            "do_sample": False,
            "top_p": 0.92,
            "seeds": [1],
            "no_repeat_ngram_size": 3,
            "max_new_tokens": None,
            "batch_size": 16,
        },
    )
    lines = md.splitlines()
    assert lines[0].startswith("**Paper metrics")
    assert lines[2].startswith(
        "| Training data | Method | Source | ROUGE-1 | ROUGE-2 | ROUGE-L | METEOR |"
    )
    caption_head = lines.index(next(ln for ln in lines if ln.startswith("**Caption metrics")))
    assert "| METEOR 1.5 |" in lines[caption_head + 2]
    # The paper's numbers appear in the paper set only: it has no caption metrics.
    caption_block = lines[caption_head : caption_head + 16]
    assert not any("| paper |" in ln for ln in caption_block)
    recap_ours = next(ln for ln in lines if "| Dataset full | RECAP | ours" in ln)
    assert "37.0 [36.0, 38.0]" in recap_ours  # ROUGE-1 mean over seeds with the interval
    recap_paper = next(ln for ln in lines if "| Dataset full | RECAP | paper" in ln)
    assert "48.4" in recap_paper and "27.5" in recap_paper
    assert "| vote > 0 | RECAP | paper | 51.2 | 16.3 | 27.6 | 27.9 |" in md
    assert "recall" in md and "METEOR 1.5" in md and "beam4" in md

    paths = ex.write_table1(rows, tmp_path, None, fake_records())
    data = json.loads(paths["json"].read_text())
    assert data["paper"]["full"]["bart"]["ROUGE-1"] == 44.1
    assert len(data["runs"]) == 12
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    ours = [r for r in table if r["source"] == "ours"]
    paper = [r for r in table if r["source"] == "paper"]
    assert len(ours) == 6 and len(paper) == 6
    assert ours[0]["ROUGE-1 recall"] == "31.00" and ours[0]["seeds"] == "0 1"
    assert paper[0]["ROUGE-1 recall"] == "44.1"


def test_sweep_points_and_png(tmp_path):
    recs = []
    for w, base in ((0.0, 0.30), (0.005, 0.31), (0.02, 0.33), (0.1, 0.29)):
        for seed, shift in ((0, 0.0), (1, 0.01)):
            recs.append(
                {"align_weight": w, "seed": seed, "summary": fake_summary(base + shift, 0.5)}
            )
    points = ex.sweep_points(recs)
    assert [p["align_weight"] for p in points] == [0.0, 0.005, 0.02, 0.1]
    assert points[2]["mean"] == pytest.approx(0.335 - 0.10)  # ROUGE-L recall = base - 0.10
    assert points[2]["low"] < points[2]["mean"] < points[2]["high"]
    png = ex.plot_sweep(points, tmp_path / "fig" / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_sweep_reuses_table1_runs_for_w0_and_preset_w():
    assert ex.sweep_run_name(0.0, "small") == ("bart-fusion", None, "bart-fusion")
    assert ex.sweep_run_name(0.02, "small") == ("recap", None, "recap")
    assert ex.sweep_run_name(0.05, "small") == ("recap", 0.05, "recap-w0.05")


def test_cli_parses_table1_and_sweep():
    parser = argparse.ArgumentParser()
    excli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "experiment",
            "table1",
            "--data",
            "d",
            "--seeds",
            "0,1",
            "--train",
            "epochs=3",
            "--train",
            "lr_schedule=step",
            "--sample",
            "--sample-seeds",
            "7",
        ]
    )
    cfg = excli.config_from_args(args)
    assert cfg.seeds == (0, 1) and cfg.variants == ("full", "positive")
    assert cfg.train_overrides == {"epochs": 3, "lr_schedule": "step"}
    # Explicit --sample-seeds: every model is sampled with each of them.
    assert cfg.decode.do_sample and cfg.decode.seeds == (7,) and not cfg.paired_sampling
    assert cfg.decode_for(1).seeds == (7,)
    args = parser.parse_args(["experiment", "sweep", "--data", "d", "--weights", "0,0.02"])
    cfg = excli.config_from_args(args)
    assert cfg.variants == ("full",) and cfg.seeds == (0,) and not cfg.decode.do_sample
    assert "deterministic" in cfg.protocol()
    # --sample alone: the authors' protocol, one model per seed, sampled with its own seed.
    cfg = excli.config_from_args(
        parser.parse_args(["experiment", "table1", "--data", "d", "--sample"])
    )
    assert cfg.seeds == (2022, 2021, 2020) and cfg.paired_sampling
    assert cfg.decode_for(2021).seeds == (2021,) and cfg.decode_for(2021).do_sample
    assert "authors' protocol" in cfg.protocol()
    with pytest.raises(ex.RecapError):
        ex.ExperimentConfig(data="d", methods=("gpt",))


def test_cached_evaluation_is_reused_only_when_it_still_fits(tmp_path):
    import os

    from recap.inference.generate import DecodeSettings

    cfg = ex.ExperimentConfig(
        data="d", decode=DecodeSettings(num_beams=2), meteor15=False, bootstrap=50
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "done.json").write_text("{}")
    metrics = run / "metrics.json"
    from recap.evaluation.metrics import METRICS_VERSION

    saved = {
        "decode": cfg.decode.to_dict(),
        "bootstrap": 50,
        "summary": {"ROUGE-L recall": 0.2},
        "metrics_version": METRICS_VERSION,
    }
    metrics.write_text(json.dumps(saved))
    os.utime(run / "done.json", (1000, 1000))  # trained before the evaluation
    assert ex._cached_metrics(metrics, cfg, run) == saved
    other = ex.ExperimentConfig(
        data="d", decode=DecodeSettings(num_beams=4), meteor15=False, bootstrap=50
    )
    assert ex._cached_metrics(metrics, other, run) is None  # other decoding
    wants_m15 = ex.ExperimentConfig(data="d", decode=cfg.decode, bootstrap=50)
    assert ex._cached_metrics(metrics, wants_m15, run) is None  # METEOR 1.5 missing
    metrics.write_text(json.dumps({**saved, "metrics_version": METRICS_VERSION - 1}))
    assert ex._cached_metrics(metrics, cfg, run) is None  # older metric definitions
    metrics.write_text(json.dumps(saved))
    os.utime(run / "done.json", None)
    os.utime(metrics, (1000, 1000))
    assert ex._cached_metrics(metrics, cfg, run) is None  # retrained since


def stub_training(tmp_path, monkeypatch):
    """Stub `train` and `evaluate`; returns the TrainConfigs trained and the (seed, decoding)
    pairs evaluated, in call order."""
    import recap.evaluation.evaluate
    import recap.training.train

    trained, evaluated = [], []

    def fake_train(tc):
        run = tmp_path / "runs" / f"{tc.preset}-{tc.seed}"
        (run / "best").mkdir(parents=True, exist_ok=True)
        (run / "best" / "config.json").write_text("{}")
        (run / "train_config.json").write_text(json.dumps({"seed": tc.seed}))
        trained.append(tc)
        return run

    def fake_evaluate(run, data, decode, **kwargs):
        evaluated.append((json.loads((run / "train_config.json").read_text())["seed"], decode))
        return {"summary": fake_summary(0.3, 0.5), "decode": decode.to_dict(), "n_examples": 3}

    monkeypatch.setattr(recap.training.train, "train", fake_train)
    monkeypatch.setattr(recap.evaluation.evaluate, "evaluate", fake_evaluate)
    return trained, evaluated


def test_table1_sample_trains_one_model_per_seed_sampled_with_that_seed(tmp_path, monkeypatch):
    """The authors' seed protocol, checked on the calls (training and decoding are stubbed)."""
    from recap.inference.generate import DecodeSettings

    trained, evaluated = stub_training(tmp_path, monkeypatch)
    cfg = ex.ExperimentConfig(
        data="d",
        out=str(tmp_path / "out"),
        variants=("full",),
        methods=("recap",),
        decode=DecodeSettings.paper_sampled(),
        meteor15=False,
        progress=False,
    )
    result = ex.run_table1(cfg)
    assert [(tc.preset, tc.seed) for tc in trained] == [
        ("recap", 2022),
        ("recap", 2021),
        ("recap", 2020),
    ]
    assert [(seed, d.seeds, d.do_sample) for seed, d in evaluated] == [
        (2022, (2022,), True),
        (2021, (2021,), True),
        (2020, (2020,), True),
    ]
    assert "each sampled once with its own seed" in result["markdown"]
    assert result["rows"][0]["seeds"] == [2022, 2021, 2020]


def test_method_overrides_reach_only_that_methods_runs(tmp_path, monkeypatch):
    """The demo trains the fusion models longer than BART: a per-method field wins over the
    shared one, and only for that method."""
    trained, _ = stub_training(tmp_path, monkeypatch)
    cfg = ex.ExperimentConfig(
        data="d",
        out=str(tmp_path / "out"),
        variants=("full",),
        train_overrides={"epochs": 3, "lr": 0.003},
        method_overrides={"recap": {"epochs": 6}, "bart-fusion": {"epochs": 6}},
        meteor15=False,
        progress=False,
    )
    ex.run_table1(cfg)
    epochs = {tc.preset: (tc.epochs, tc.lr) for tc in trained}
    assert epochs == {"bart": (3, 0.003), "bart-fusion": (6, 0.003), "recap": (6, 0.003)}
    with pytest.raises(ex.RecapError, match="unknown method"):
        ex.ExperimentConfig(data="d", method_overrides={"recapp": {"epochs": 6}})


def test_fusion_from_bart_starts_each_fusion_run_from_the_bart_run_of_its_seed(
    tmp_path, monkeypatch
):
    trained, _ = stub_training(tmp_path, monkeypatch)
    cfg = ex.ExperimentConfig(
        data="d",
        out=str(tmp_path / "out"),
        variants=("full",),
        methods=("recap", "bart-fusion", "bart"),  # BART is trained first all the same
        seeds=(0, 1),
        fusion_from_bart=True,
        meteor15=False,
        progress=False,
    )
    ex.run_table1(cfg)
    assert [(tc.preset, tc.seed) for tc in trained][:2] == [("bart", 0), ("bart", 1)]
    starts = {(tc.preset, tc.seed): tc.init for tc in trained}
    assert starts[("bart", 0)] is None
    assert starts[("recap", 1)] == str(cfg.run_dir("full", "bart", 1))
    assert starts[("bart-fusion", 0)] == str(cfg.run_dir("full", "bart", 0))
    with pytest.raises(ex.RecapError, match="needs the bart method"):
        ex.ExperimentConfig(data="d", methods=("recap",), fusion_from_bart=True)
