"""The compiled CPU kernels (``csrc/*.c``: attention): built on first use, loaded with ctypes.

The C files are plain C99 with OpenMP (no PyTorch headers), so building them takes about a
second with the system's C compiler. The shared library is cached under ``~/.cache/dmd_core`` (or
``$DMD_CACHE``), keyed by the source, the compiler, its flags and the CPU, and rebuilt when
any of them changes. Flags are tried from fastest to most portable (``-march=native`` and
OpenMP first, plain ``-O3`` last).

Where no compiler works, :func:`library` returns None once with a warning, and
:mod:`dmd_core.kernels.tiled` uses its pure-PyTorch tiled attention instead: same function,
slower. ``DMD_KERNELS=tiled`` (see :mod:`dmd_core.kernels`) keeps the kernel from being built.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.c")))
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-fopenmp-simd"),  # no OpenMP runtime (e.g. Apple clang): one thread
    ("-O3",),
)
COMMON_FLAGS = ("-std=gnu99", "-shared", "-fPIC", "-fvisibility=hidden", "-ffp-contract=fast")

_lock = threading.Lock()


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled with any flag set (the message holds the compiler's output)."""


def cache_dir() -> Path:
    """Where built libraries are kept: ``$DMD_CACHE``, else ``$XDG_CACHE_HOME/dmd_core``, else ``~/.cache/dmd_core``."""
    if os.environ.get("DMD_CACHE"):
        return Path(os.environ["DMD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dmd_core"


def compiler() -> str | None:
    """``$CC``, else the first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags where the OS says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()


def build(cc: str, folder: Path | None = None) -> Path:
    """Compile the kernels into one shared library (or find it cached); returns its path.

    Raises :class:`NativeBuildError` with the compiler's messages when every flag set fails.
    The library is written to a temporary name and moved into place, so processes building at
    the same time never load a half-written file.
    """
    folder = cache_dir() if folder is None else folder
    source = b"\0".join(path.name.encode() + b"\0" + path.read_bytes() for path in SOURCES)
    suffix = ".dylib" if platform.system() == "Darwin" else ".so"
    cpu = _cpu_signature().encode()

    def target(flags: tuple[str, ...]) -> Path:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(flags + COMMON_FLAGS).encode(), cpu]))
        return folder / f"kernels-{key.hexdigest()[:16]}{suffix}"

    cached = [target(flags) for flags in FLAG_SETS if target(flags).exists()]
    if cached:  # the fastest flag set that built before (slower ones exist where faster ones failed)
        return cached[0]
    errors = []
    for flags in FLAG_SETS:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder)
        os.close(fd)
        cmd = [cc, *flags, *COMMON_FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as err:  # no such compiler, or it hung: other flags won't help
            Path(tmp).unlink(missing_ok=True)
            raise NativeBuildError(f"could not run the C compiler {cc!r}: {err}") from err
        if done.returncode == 0:
            os.replace(tmp, target(flags))
            log.info("built %s with %s", target(flags), " ".join(flags))
            return target(flags)
        errors.append(f"{' '.join(cmd)}:\n{done.stderr.strip()}")
        Path(tmp).unlink(missing_ok=True)
    raise NativeBuildError("could not compile " + ", ".join(map(str, SOURCES)) + ":\n" + "\n\n".join(errors))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, f32, ptr, u32, u64, int_ = (ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_uint32,
                                     ctypes.c_uint64, ctypes.c_int)  # fmt: skip
    tail = [i64] * 5 + [f32, f32, u32, u64, int_]  # n, Lq, Lk, dh, offset, scale, keep_scale, p24, seed, threads
    lib.dmd_attention_forward.argtypes = [ptr, i64, i64] * 4 + [ptr] + tail
    lib.dmd_attention_forward.restype = int_
    lib.dmd_attention_backward.argtypes = [ptr, i64, i64] * 5 + [ptr] + [ptr, i64, i64] * 3 + tail
    lib.dmd_attention_backward.restype = int_
    lib.dmd_keep_mask.argtypes = [ptr, i64, i64, i64, u32, u64]
    lib.dmd_keep_mask.restype = int_
    lib.dmd_openmp_threads.argtypes = []
    lib.dmd_openmp_threads.restype = int_
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it if needed; None (with one warning) where that fails.

    Call :func:`library.cache_clear` to try again (tests do, after changing the environment).
    """
    cc = compiler()
    with _lock:
        try:
            if cc is None:
                raise NativeBuildError("no C compiler found (set CC, or install gcc or clang)")
            try:
                path = build(cc)
            except OSError:  # unwritable cache (permissions, read-only home): a private temporary folder
                path = build(cc, Path(tempfile.mkdtemp(prefix="dmd_core-")))
            return _declare(ctypes.CDLL(str(path)))
        except (NativeBuildError, OSError) as err:
            warnings.warn(
                f"dmd_core: the compiled CPU kernels are unavailable, using the slower PyTorch path ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
