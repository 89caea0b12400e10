"""TensorBoard logging of training runs: every ``history.csv`` column per epoch, one TensorBoard run per seed.

::

    train_seeds(cfg, "mosi.pkl", tcfg, "runs/mosi", tensorboard="runs/tb")   # or: dmd train --tensorboard runs/tb
    # tensorboard --logdir runs/tb                                           # live, while it trains

:class:`TensorBoardLogger` is an ``on_epoch_end(trainer, row)`` callback of the trainer. Each seed
writes to ``DIR/seed_<n>``; the step is the epoch. Tags (:func:`tag_for`; the columns are listed in
:mod:`dmd_core.runs`):

* ``loss/<part>``: the train loss parts (``train_<part>``); ``lr``;
* ``valid/loss`` and ``valid/<metric>``; ``valid/best_loss``;
* ``HomoGD/<split>/<edge>`` and ``HeteroGD/<split>/<edge>``: the six edges of each GD-Unit
  (``V->L``, ...: teacher -> student), averaged over the train (during the epoch) or valid split;
  the *Custom Scalars* tab draws each unit's six edges in one chart, as the paper's edge curves;
* ``run/<column>``: the other columns (seconds, optimizer steps, ``best``).

Values are written as TensorBoard's plain scalars (float32, the one kind every TensorBoard
reader shows, the fast data server included): TensorBoard returns ``history.csv``'s numbers
rounded to float32.
``tensorboard`` is an optional extra (``pip install "dmd-core[tensorboard]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .distill import EDGE_NAMES

UNITS = {"homo": "HomoGD", "hetero": "HeteroGD"}

__all__ = ["TensorBoardLogger", "TensorBoardUnavailableError", "require_tensorboard", "tag_for"]


class TensorBoardUnavailableError(ImportError):
    """TensorBoard logging was asked for, and the ``tensorboard`` package is not installed."""


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or a clear error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise TensorBoardUnavailableError(
            f"TensorBoard logging needs the tensorboard package ({err}): pip install 'dmd-core[tensorboard]' "
            "(or pip install tensorboard)"
        ) from None
    return SummaryWriter


def tag_for(column: str) -> str | None:
    """The TensorBoard tag of a ``history.csv`` column (None for ``epoch``, the step)."""
    if column == "epoch":
        return None
    if column == "lr":
        return "lr"
    for split in ("train", "valid"):
        for unit, name in UNITS.items():
            prefix = f"{split}_{unit}_"
            if column.startswith(prefix) and column[len(prefix) :] in EDGE_NAMES:
                return f"{name}/{split}/{column[len(prefix) :]}"
    if column == "best_valid_loss":
        return "valid/best_loss"
    if column.startswith("train_"):
        return "loss/" + column[len("train_") :]
    if column.startswith("valid_"):
        return "valid/" + column[len("valid_") :]
    return "run/" + column


class TensorBoardLogger:
    """Writes each epoch's history row to ``log_dir/seed_<n>`` (rank 0 only), then calls ``then`` if given.

    Use as the trainer's ``on_epoch_end``; :meth:`close` when training ends. Event files are
    flushed every epoch, so ``tensorboard --logdir log_dir`` follows a run live.
    """

    def __init__(self, log_dir: str | os.PathLike, then: Callable[[Any, dict], None] | None = None) -> None:
        self.summary_writer = require_tensorboard()  # fail before training, not after the first epoch
        self.log_dir, self.then = Path(log_dir), then
        self.writers: dict[int, Any] = {}

    def writer(self, seed: int):
        if seed not in self.writers:
            writer = self.summary_writer(log_dir=str(self.log_dir / f"seed_{seed}"))
            layout = {
                name: {f"{name} edges ({split})": ["Multiline", [f"^{name}/{split}/"]] for split in ("valid", "train")}
                for name in UNITS.values()
            }
            writer.add_custom_scalars(layout)
            self.writers[seed] = writer
        return self.writers[seed]

    def log(self, seed: int, row: dict[str, Any]) -> None:
        """Every numeric column of one history row, at step ``row["epoch"]``."""
        writer, step = self.writer(seed), int(row["epoch"])
        for column, value in row.items():
            tag = tag_for(column)
            if tag is not None and isinstance(value, (int, float)):
                writer.add_scalar(tag, float(value), global_step=step)
        writer.flush()

    def __call__(self, trainer: Any, row: dict[str, Any]) -> None:
        if trainer.dist.is_main:
            self.log(trainer.seed, row)
        if self.then is not None:
            self.then(trainer, row)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
