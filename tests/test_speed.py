"""The reference workload the demos time before and after their stages."""

from __future__ import annotations

import torch

from recap.training.speed import (
    captioner_step,
    cpu_model,
    machine,
    reference_speed,
    seconds_per_step,
)


def test_seconds_per_step_times_only_the_steps_after_the_warm_up():
    calls = []
    seconds = seconds_per_step(lambda: calls.append(1), steps=4, warmup=2)
    assert len(calls) == 6 and seconds >= 0.0


def test_the_reference_step_trains_and_leaves_the_callers_random_stream_alone(one_thread):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    step = captioner_step(batch=2, source=12, target=6)
    assert torch.equal(torch.rand(3), expected)  # building it drew from a forked stream
    step()  # one forward, backward and update of the real `small` captioner
    assert reference_speed(steps=1, batch=2) > 0.0


def test_the_demos_measurement_leaves_the_thread_count_alone(one_thread, monkeypatch):
    # Setting it, even to the same number, changes the last bits of every later training.
    from recap import demo

    def refuse(n):
        raise AssertionError(f"torch.set_num_threads({n}) called")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    monkeypatch.setattr("recap.training.speed.reference_speed", lambda steps: 50.0)
    assert demo.reference_speed(steps=1) == 50.0
    assert demo.reference_speed(steps=1, threads=torch.get_num_threads()) == 50.0


def test_the_cpu_model_is_read_from_cpuinfo_or_the_platform(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    assert cpu_model(info) == "AMD EPYC"
    assert cpu_model(tmp_path / "missing")  # the platform's word for it, never empty
    assert machine()["torch"] == torch.__version__
