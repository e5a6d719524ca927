"""The reference workload the demos time before and after their stages."""

from __future__ import annotations

import torch

from recap.training.speed import (
    captioner_step,
    cpu_generation,
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
    block = "vendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n"
    # two processors; only the first is read (a hybrid CPU's second block may differ)
    info.write_text(
        "processor\t: 0\n" + block.format(25, 1) + "\nprocessor\t: 1\n" + block.format(9, 9)
    )
    assert cpu_model(info) == "AMD EPYC"
    assert cpu_generation(info) == "family 25 model 1"
    assert cpu_model(tmp_path / "missing")  # the platform's word for it, never empty
    assert cpu_generation(tmp_path / "missing") == ""
    ran_on = machine()
    assert ran_on["torch"] == torch.__version__
    assert ran_on["kernels"] == torch.backends.cpu.get_cpu_capability()
    from recap.demo import machine_line

    line = machine_line({**ran_on, "cpu": "AMD EPYC", "generation": "family 25 model 1",
                         "kernels": "AVX2"})  # fmt: skip
    assert line.startswith("Machine: AMD EPYC (family 25 model 1, AVX2), ")
    old = {"cpu": "AMD EPYC", "cpus": 2, "torch": "2.13.0+cpu"}  # a results.json before run AH
    assert machine_line(old).startswith("Machine: AMD EPYC, 2 CPU(s)")
