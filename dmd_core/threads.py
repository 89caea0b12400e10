"""CPU threads on a shared machine: evaluation uses the cores that other work leaves free.

Why. PyTorch runs every CPU operation above its parallel grain on a team of OpenMP threads, which
meet at a barrier when the operation ends: about 1,200 barriers per forward pass of the MOSI model,
3,900 per training step. The first thread at a barrier spins there (the OpenMP runtime PyTorch
ships spins about 300,000 times, milliseconds, before it sleeps), so when another process holds part
of a core that one team thread needs, every barrier waits for that thread's next time slice while
its partner burns the CPU time that everybody is short of. On two cores with one competing busy
process, two threads train and evaluate about 3x slower than one thread; beside another
two-threaded PyTorch process, 30-60x slower. On an idle machine two threads are 1.2-1.4x faster
than one. The batch size does not cause it (a forward pass opens as many parallel regions at 64
samples as at 16), nor the compiled attention kernel (it runs in PyTorch's own OpenMP runtime), nor
inference mode (``no_grad`` opens the same regions). The runtime's spin policy
(``OMP_WAIT_POLICY``) is read once, when PyTorch is imported, and the passive policy costs the idle
case 1.5x; the team's size can change at any time. Measurements: ``benchmarks/results/busy.md``.

What. :class:`FittedThreads` (used by :func:`dmd_core.evaluation.predict` on CPU) keeps PyTorch's
thread count at the number of this process's cores that other processes leave free, never more than
the count it found (``torch.set_num_threads``, ``dmd bench --threads``, the book's settings). Every
:data:`INTERVAL_S` seconds, between mini-batches, it reads from ``/proc/stat`` how much CPU time the
other processes took on this process's cores (stolen time of a virtual machine included) since the
last look; a core counts as taken once others use more than :data:`MARGIN` of it, and, after this
process has stepped back, as free again once they use less than :data:`RETURN_MARGIN` of the core it
left (:func:`threads_for`). The first look covers the time since the last evaluation (since this
module's import for the first), so a trainer's validation starts from the load seen while it
trained. Elsewhere than Linux (no ``/proc/stat``) the thread count stays as it is. Training keeps
the count it is given: a run's weights are a function of its seed and its thread count.

Numbers. PyTorch's CPU results can differ in their last bits between thread counts, so on a busy
machine evaluation's numbers can differ in their last bits from an idle machine's (a training run's
validation loss steers its schedule rounded to 4 decimals: such a difference changes the run's
course only where it crosses a rounding boundary). Set the environment variable
``DMD_THREADS=fixed`` (read at import; or set :data:`POLICY`) to keep the thread count as it is, for
bit-identical reruns under any load; ``fit`` is the default.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

POLICIES = ("fit", "fixed")
# At the count found, a core counts as taken once others use more than MARGIN of it; on fewer threads, the core
# this process freed counts as free again while others use less than RETURN_MARGIN of it (others spread into a
# freed core: bursty work by 0.1-0.2 core, one busy process to the whole core). Measured (busy.md): one busy
# process beside two threads takes 0.8 of a core and one thread is then 3x faster; other sessions' bursty work
# takes 0.4-0.6 and two threads stay 10% faster.
MARGIN = 0.6
RETURN_MARGIN = 0.8
INTERVAL_S = 0.5  # seconds of work between two looks at the CPU counters (50 clock ticks a core)


def _policy_from_environment() -> str:
    value = os.environ.get("DMD_THREADS", "fit").strip().lower() or "fit"
    if value not in POLICIES:
        raise ValueError(f"DMD_THREADS={value!r}: expected one of {', '.join(POLICIES)}")
    return value


POLICY: str = _policy_from_environment()


@dataclass(frozen=True)
class CpuTimes:
    """One reading: ``at`` (monotonic s), CPU-seconds ``busy`` on ``cpus`` (every process) and ``own`` (this one)."""

    at: float
    busy: float
    own: float
    cpus: int


def busy_ticks(proc_stat: str, cpus: set[int]) -> int:
    """Clock ticks the CPUs in ``cpus`` were not idle, from the text of ``/proc/stat``.

    Busy is every column but ``idle`` and ``iowait``: user, nice, system, irq, softirq and
    steal (time a hypervisor gave this virtual CPU to other machines); guest time is part of user.
    """
    total = 0
    for line in proc_stat.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        fields = [int(x) for x in rest.split()]
        if len(fields) < 5:
            raise ValueError(f"/proc/stat: line {name!r} has {len(fields)} counters, expected at least 5")
        total += sum(fields[:8]) - fields[3] - fields[4]
    return total


def own_ticks(proc_self_stat: str) -> int:
    """Clock ticks this process ran (user + system, every thread), from the text of ``/proc/self/stat``."""
    fields = proc_self_stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


def read_cpu_times(root: Path = Path("/proc")) -> CpuTimes | None:
    """The counters now, for this process's CPUs (its affinity); None where ``/proc`` does not have them."""
    try:
        cpus = set(os.sched_getaffinity(0))
        hz = os.sysconf("SC_CLK_TCK")
        busy = busy_ticks((root / "stat").read_text(), cpus)
        own = own_ticks((root / "self" / "stat").read_text())
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return CpuTimes(at=time.monotonic(), busy=busy / hz, own=own / hz, cpus=len(cpus))


def others_cores(before: CpuTimes, after: CpuTimes) -> float:
    """Cores that other processes used on average between two readings (0 when no time passed)."""
    seconds = after.at - before.at
    if seconds <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / seconds)


def threads_for(found: int, others: float, cpus: int, current: int | None = None) -> int:
    """Threads for a team that must not share a core with other work: the free cores, 1 to ``found``.

    Free cores are ``cpus - others``, a partly used core counting as free while others use at
    most :data:`MARGIN` of it, or :data:`RETURN_MARGIN` when the ``current`` count is below
    ``found`` (the others were measured spreading into the core this process left). Two cores:
    two threads up to 0.6 of a core used by others, then one thread until they use less than 0.8.
    """
    margin = RETURN_MARGIN if current is not None and current < found else MARGIN
    return max(1, min(found, math.floor(cpus - others + margin)))


# The last block's closing reading, choice and use. The first block looks back to the import of this module (a
# trainer's first validation: to its first epoch).
_memory: dict[str, Any] = {"reading": read_cpu_times(), "threads": None, "used": {}}


class FittedThreads:
    """A block of CPU work (evaluation) whose PyTorch thread count follows the free cores.

    ::

        with FittedThreads() as fit:
            for batch in batches:
                fit.step()      # before each mini-batch: looks at the counters every INTERVAL_S
                ...

    On entry the thread count found is the most used; on exit it is restored. ``used`` counts the
    mini-batches run at each thread count. ``read`` gives the readings (:func:`read_cpu_times`, or
    prepared ones in tests). Does nothing when not ``active`` (work on a GPU), under
    ``POLICY == "fixed"``, with one thread, or without readings.
    """

    def __init__(self, active: bool = True, read=None, interval: float | None = None) -> None:
        self.active = active
        self.read = read if read is not None else read_cpu_times
        self.interval = INTERVAL_S if interval is None else interval
        self.found = self.current = torch.get_num_threads()
        self.used: Counter[int] = Counter()
        self._last: CpuTimes | None = None

    def __enter__(self) -> FittedThreads:
        self.found = self.current = torch.get_num_threads()
        if not self.active or POLICY == "fixed" or self.found <= 1:
            return self
        now = self.read()
        if now is None:
            return self
        previous, threads = _memory["reading"], _memory["threads"]
        if isinstance(previous, CpuTimes) and now.at - previous.at >= self.interval:
            # In between, this process ran (if at all) on the count found: each block restores it on exit.
            self._set(threads_for(self.found, others_cores(previous, now), now.cpus))
        elif isinstance(threads, int):
            self._set(min(self.found, threads))
        self._last = now
        return self

    def step(self) -> None:
        """Call before each mini-batch: every ``interval`` seconds, fits the thread count to the free cores."""
        if self._last is not None:
            reading = self.read()  # ~50 us: /proc/stat and /proc/self/stat
            if reading is not None and reading.at - self._last.at >= self.interval:
                others = others_cores(self._last, reading)
                self._set(threads_for(self.found, others, reading.cpus, current=self.current))
                self._last = reading
        self.used[self.current] += 1

    def __exit__(self, *exc) -> None:
        if self._last is not None:
            _memory.update(reading=self.read() or self._last, threads=self.current)
        _memory["used"] = dict(self.used)
        if self.current != self.found:
            torch.set_num_threads(self.found)
        if len(self.used) > 1 or self.current != self.found:
            log.debug("evaluation ran on %s threads (mini-batches per count); %d asked", dict(self.used), self.found)

    def _set(self, threads: int) -> None:
        if threads != self.current:
            log.debug("other processes hold part of the cores: %d -> %d threads", self.current, threads)
            torch.set_num_threads(threads)
            self.current = threads


def last_used() -> dict[int, int]:
    """Mini-batches the last block (the last evaluation) ran at each thread count."""
    return dict(_memory["used"])  # type: ignore[arg-type]


def forget() -> None:
    """Drop the reading and choice that carry over between blocks (the next block starts afresh)."""
    _memory.update(reading=None, threads=None, used={})


__all__ = ["POLICY", "MARGIN", "RETURN_MARGIN", "INTERVAL_S", "FittedThreads", "threads_for", "others_cores", "read_cpu_times",
           "busy_ticks", "own_ticks", "last_used", "forget"]  # fmt: skip
