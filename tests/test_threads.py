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


class Machine:
    """A simulated machine: a clock, other processes using ``others`` cores (a number, or one per thread count
    of this process: others spread into a core it leaves), and this process, whose mini-batch takes 1 s."""

    def __init__(self, others: float | dict[int, float], cpus: int = 2):
        self.others, self.cpus = others, cpus
        self.at = self.busy = self.own = 0.0

    def read(self) -> CpuTimes:
        return CpuTimes(at=self.at, busy=self.busy, own=self.own, cpus=self.cpus)

    def wait(self, seconds: float) -> None:  # time passes; others use their cores
        others = self.others if isinstance(self.others, float) else self.others[torch.get_num_threads()]
        self.at += seconds
        self.busy += others * seconds

    def batch(self, seconds: float = 1.0) -> None:  # this process runs one mini-batch on all its threads
        mine = torch.get_num_threads() * seconds
        self.wait(seconds)
        self.busy += mine
        self.own += mine

    def evaluate(self, batches: int, **kwargs) -> list[int]:
        """A block of ``batches`` mini-batches; the thread count each ran at."""
        seen = []
        with FittedThreads(read=self.read, interval=0.5, **kwargs) as fit:
            for _ in range(batches):
                fit.step()
                seen.append(torch.get_num_threads())
                self.batch()
        return seen


BUSY_PROCESS = {2: 0.8, 1: 1.0}  # one busy process: squeezed by two spinning threads, a whole core beside one
BURSTY = {2: 0.5, 1: 0.7}  # other sessions' bursty work: spreads a little into a freed core


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
    ("found", "others", "cpus", "current", "expected"),
    [(2, 0.0, 2, None, 2), (2, 0.55, 2, None, 2), (2, 0.65, 2, None, 1), (2, 1.0, 2, 2, 1), (2, 1.9, 2, None, 1),
     (2, 0.75, 2, 1, 2), (2, 0.85, 2, 1, 1), (4, 1.0, 4, None, 3), (4, 1.1, 4, 3, 3), (4, 2.5, 4, None, 2),
     (2, 0.0, 4, None, 2), (1, 0.0, 2, None, 1)],
)  # fmt: skip
def test_threads_for_counts_a_core_taken_above_the_margin_and_free_again_below_the_return_margin(
    found, others, cpus, current, expected
):
    assert threads_for(found, others, cpus, current) == expected


def test_an_idle_machine_and_bursty_neighbours_keep_the_count_found():
    assert Machine(others=0.05).evaluate(20) == [2] * 20
    assert Machine(others=BURSTY).evaluate(20) == [2] * 20
    assert torch.get_num_threads() == 2


def test_beside_a_busy_process_one_thread_runs_from_the_first_look_and_exit_restores_the_count():
    seen = Machine(others=BUSY_PROCESS).evaluate(20)
    assert seen == [2] + [1] * 19  # the first look comes after one mini-batch
    assert torch.get_num_threads() == 2


def test_when_the_busy_process_stops_the_count_found_comes_back_at_the_next_look():
    machine = Machine(others=BUSY_PROCESS)
    seen = []
    with FittedThreads(read=machine.read, interval=0.5) as fit:
        for i in range(12):
            if i == 9:
                machine.others = 0.1
            fit.step()
            seen.append(torch.get_num_threads())
            machine.batch()
    assert seen == [2] + [1] * 9 + [2] * 2
    assert fit.used == {2: 3, 1: 9}


def test_the_next_block_starts_from_the_load_seen_since_the_last_one():
    machine = Machine(others=BUSY_PROCESS)
    machine.evaluate(3)
    machine.wait(30.0)  # e.g. a training epoch, on the count found, beside the busy process
    with FittedThreads(read=machine.read, interval=0.5):
        assert torch.get_num_threads() == 1
    machine.others = 0.1
    machine.wait(30.0)
    with FittedThreads(read=machine.read, interval=0.5):
        assert torch.get_num_threads() == 2
    machine.others = BUSY_PROCESS
    machine.wait(30.0)
    fitting_module.forget()
    with FittedThreads(read=machine.read, interval=0.5):
        assert torch.get_num_threads() == 2  # nothing remembered: the count found, until the first look


def test_fixed_policy_one_thread_inactive_or_no_readings_leave_the_count_alone(monkeypatch):
    machine = Machine(others=1.5)
    assert machine.evaluate(6, active=False) == [2] * 6
    with FittedThreads(read=lambda: None, interval=0.0) as fit:
        for _ in range(3):
            fit.step()
            machine.batch()
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert machine.evaluate(6) == [1] * 6
    torch.set_num_threads(2)
    monkeypatch.setattr(fitting_module, "POLICY", "fixed")
    assert machine.evaluate(6) == [2] * 6
    monkeypatch.setattr(fitting_module, "POLICY", "fit")
    assert machine.evaluate(6) == [2] + [1] * 5


class SteppedMachine(Machine):
    """A :class:`Machine` whose clock advances by one mini-batch at every reading after the first (one a batch)."""

    def read(self) -> CpuTimes:
        if getattr(self, "started", False):
            self.batch()
        self.started = True
        return super().read()


def test_predict_runs_the_model_on_one_thread_beside_a_busy_process(monkeypatch):
    cfg = tiny_config()
    split = random_split(cfg, 40, "test")
    model = DMD(cfg)
    seen = []
    model.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(fitting_module, "read_cpu_times", SteppedMachine(BUSY_PROCESS).read)
    predict(model, split, "cpu", batch_size=4)
    assert seen == [1] * 10  # each reading 1 s after the last: the first look, before the first mini-batch, is due
    assert torch.get_num_threads() == 2
    assert fitting_module.last_used() == {1: 10}
    fitting_module.forget()
    seen.clear()
    monkeypatch.setattr(fitting_module, "read_cpu_times", SteppedMachine(BURSTY).read)
    predict(model, split, "cpu", batch_size=4)
    assert seen == [2] * 10


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
