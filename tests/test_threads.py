"""Evaluation's thread count follows the cores other processes leave free (dmd_core.threads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dmd_core.threads as fitting_module
from dmd_core.bench import random_split
from dmd_core.evaluation import predict
from dmd_core.model import DMD
from dmd_core.threads import CpuTimes, FittedThreads, busy_ticks, others_cores, own_ticks, threads_for

from .conftest import tiny_config

PROC_STAT = """cpu  900 10 100 5000 40 0 5 60 0 0
cpu0 400 10 50 2500 20 0 2 30 0 0
cpu1 500 0 50 2500 20 0 3 30 7 0
intr 12345 0 0
ctxt 999
"""


@pytest.fixture(autouse=True)
def fitting(monkeypatch, threads):  # `threads` (conftest) restores torch's thread count afterwards
    monkeypatch.setattr(fitting_module, "POLICY", "fit")
    fitting_module.forget()
    torch.set_num_threads(2)
    yield
    fitting_module.forget()


class Readings:
    """CPU counters as a machine where other processes use ``others`` cores would give, one reading per call."""

    def __init__(self, others: list[float], cpus: int = 2, step: float = 1.0) -> None:
        self.others, self.cpus, self.step = list(others), cpus, step
        self.at = self.busy = self.own = 0.0

    def __call__(self) -> CpuTimes:
        others = self.others.pop(0) if len(self.others) > 1 else self.others[0]
        mine = torch.get_num_threads() * self.step
        self.at += self.step
        self.busy += others * self.step + mine
        self.own += mine
        return CpuTimes(at=self.at, busy=self.busy, own=self.own, cpus=self.cpus)


def test_busy_ticks_counts_every_column_but_idle_and_iowait_on_the_given_cpus_only():
    assert busy_ticks(PROC_STAT, {0}) == 400 + 10 + 50 + 0 + 2 + 30  # user nice system irq softirq steal
    assert busy_ticks(PROC_STAT, {0, 1}) == 492 + (500 + 50 + 3 + 30)
    assert busy_ticks(PROC_STAT, {5}) == 0  # the aggregate "cpu" line is never counted


def test_busy_ticks_names_a_short_line():
    with pytest.raises(ValueError, match="cpu0.*2 counters, expected at least 5"):
        busy_ticks("cpu0 1 2\n", {0})


def test_own_ticks_reads_utime_and_stime_after_a_name_with_spaces_and_parentheses():
    stat = "4242 (python (my) job) R 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 3 0"
    assert own_ticks(stat) == 111 + 222


def test_others_cores_is_the_busy_time_not_spent_by_this_process_per_second():
    a = CpuTimes(at=10.0, busy=100.0, own=5.0, cpus=2)
    assert others_cores(a, CpuTimes(at=12.0, busy=103.0, own=6.0, cpus=2)) == pytest.approx(1.0)
    assert others_cores(a, CpuTimes(at=12.0, busy=100.5, own=6.0, cpus=2)) == 0.0  # clock jitter: never below 0
    assert others_cores(a, a) == 0.0


@pytest.mark.parametrize(
    ("found", "others", "cpus", "expected"),
    [(2, 0.0, 2, 2), (2, 0.29, 2, 2), (2, 0.31, 2, 1), (2, 1.0, 2, 1), (2, 1.9, 2, 1), (4, 1.0, 4, 3),
     (4, 2.5, 4, 1), (2, 0.0, 4, 2), (1, 0.0, 2, 1)],
)  # fmt: skip
def test_threads_for_counts_a_core_free_while_others_use_under_the_margin(found, others, cpus, expected):
    assert threads_for(found, others, cpus) == expected


def test_a_busy_core_drops_the_count_a_freed_core_brings_it_back_and_exit_restores_it():
    read = Readings([0.0, 0.8, 0.8, 0.1, 0.1], step=1.0)
    seen = []
    with FittedThreads(read=read, interval=0.5) as fit:
        for _ in range(4):
            fit.step()
            seen.append(torch.get_num_threads())
    assert seen == [1, 1, 2, 2]
    assert fit.used == {1: 2, 2: 2}  # mini-batches run at each count
    assert torch.get_num_threads() == 2


def test_the_next_block_starts_from_what_the_last_one_saw():
    read = Readings([0.0, 1.0])
    with FittedThreads(read=read, interval=0.5) as fit:
        fit.step()
    assert torch.get_num_threads() == 2
    with FittedThreads(read=read, interval=0.5):
        assert torch.get_num_threads() == 1  # the gap since the last block's end was busy
    fitting_module.forget()
    with FittedThreads(read=read, interval=0.5):
        assert torch.get_num_threads() == 2  # nothing remembered: the count found, until the first look


def test_fixed_policy_one_thread_inactive_or_no_readings_leave_the_count_alone(monkeypatch):
    def busy_block(**kwargs):
        with FittedThreads(interval=0.0, **kwargs) as fit:
            for _ in range(3):
                fit.step()
            return torch.get_num_threads()

    assert busy_block(read=Readings([1.5]), active=False) == 2
    assert busy_block(read=lambda: None) == 2
    torch.set_num_threads(1)
    assert busy_block(read=Readings([0.0])) == 1
    torch.set_num_threads(2)
    monkeypatch.setattr(fitting_module, "POLICY", "fixed")
    assert busy_block(read=Readings([1.5])) == 2
    monkeypatch.setattr(fitting_module, "POLICY", "fit")
    assert busy_block(read=Readings([1.5])) == 1


def test_predict_runs_the_model_on_one_thread_when_another_process_holds_a_core(monkeypatch):
    cfg = tiny_config()
    split = random_split(cfg, 12, "test")
    model = DMD(cfg)
    seen = []
    model.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(fitting_module, "read_cpu_times", Readings([1.0]))
    predict(model, split, "cpu", batch_size=4)
    assert seen == [1, 1, 1]  # each reading 1 s after the last: the first look, before the first mini-batch, is due
    assert torch.get_num_threads() == 2
    assert fitting_module.last_used() == {1: 3}
    fitting_module.forget()
    seen.clear()
    monkeypatch.setattr(fitting_module, "read_cpu_times", Readings([0.0]))
    predict(model, split, "cpu", batch_size=4)
    assert seen == [2, 2, 2]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat (not Linux)")
def test_read_cpu_times_reads_this_machines_counters_for_this_process_cpus():
    a = fitting_module.read_cpu_times()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = fitting_module.read_cpu_times()
    assert a is not None and b is not None
    assert a.cpus == len(os.sched_getaffinity(0))
    assert b.at > a.at and b.busy >= a.busy and b.own >= a.own


def test_read_cpu_times_is_none_without_proc(tmp_path):
    assert fitting_module.read_cpu_times(tmp_path) is None


def test_an_unknown_policy_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("DMD_THREADS", "sometimes")
    with pytest.raises(ValueError, match="DMD_THREADS='sometimes': expected one of fit, fixed"):
        fitting_module._policy_from_environment()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat (not Linux)")
def test_the_first_evaluation_of_a_process_looks_back_to_the_import():
    import subprocess
    import sys

    code = "import dmd_core.threads as t; print(isinstance(t._memory['reading'], t.CpuTimes))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
