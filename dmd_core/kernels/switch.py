"""The kernels' one switch: which implementation :func:`dmd_core.kernels.attention` and ``dropout`` use.

:data:`BACKEND` is set from the environment variable ``DMD_KERNELS`` at import (``auto``, the default:
the compiled CPU kernel where it builds; ``tiled``: never build or use the compiled kernel; ``torch``:
PyTorch's own functions everywhere) and changed for a block with :func:`use`. It lives in a module of
its own so that every kernel reads it without importing the package that holds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Backend = Literal["auto", "tiled", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "tiled", "torch")


def _from_environment() -> Backend:
    value = os.environ.get("DMD_KERNELS", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"DMD_KERNELS={value!r}: expected one of {', '.join(BACKENDS)}")
    return value  # type: ignore[return-value]


BACKEND: Backend = _from_environment()


@contextmanager
def use(backend: Backend) -> Iterator[None]:
    """Run a block with another :data:`BACKEND` (restored afterwards), e.g. ``use("torch")``."""
    global BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"kernels.use({backend!r}): expected one of {', '.join(BACKENDS)}")
    saved, BACKEND = BACKEND, backend
    try:
        yield
    finally:
        BACKEND = saved
