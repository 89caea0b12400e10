"""``python -m dmd_core.cli ...`` (and ``torchrun -m dmd_core.cli train ...``): the ``dmd`` command."""

from . import run

run()
