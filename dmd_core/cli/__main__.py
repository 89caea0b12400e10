"""``python -m dmd_core.cli ...`` (and ``torchrun -m dmd_core.cli train ...``): the ``dmd`` command."""

import sys

from . import main

sys.exit(main())
