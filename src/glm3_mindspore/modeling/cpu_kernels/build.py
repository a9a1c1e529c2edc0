"""Compiling the CPU kernels once per machine, and measuring the choices that differ between CPUs.

The C++ sources (``csrc/``) are compiled with the host's compiler and
``-march=native`` into the user's cache. The library is keyed by the sources,
flags, compiler version and CPU, so a changed machine or source builds anew;
it is written under a temporary name and renamed, so concurrent processes
(``msrun`` workers) and interrupted builds never leave a half-written library.

Right after a build, :func:`measure_tuning` times the few choices where no
single value is best on every CPU (the number of rows up to which streaming
the weights beats the blocked product, weight rows per tile for one row,
and from how many rows MindSpore's own ``MatMul`` beats ours on float32
weights, one row included, see :class:`~..layers.Linear`)
and stores them beside the library; every process then sets them before
the kernels run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

SOURCES = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.cc")))
HEADERS = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.h")))
COMPILE_FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """The C++ compiler could not build the kernels; the message carries its output."""


def cache_dir() -> Path:
    """Where compiled kernels live: ``$XDG_CACHE_HOME/glm3_mindspore/kernels`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glm3_mindspore" / "kernels"


def find_compiler() -> Optional[str]:
    """``$CXX`` if set, else ``g++`` on PATH (the kernels use GCC vector extensions)."""
    return os.environ.get("CXX") or shutil.which("g++")


def host_identity() -> str:
    """CPU model and feature flags: ``-march=native`` code is only valid on a CPU like this one."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # one of each (every core repeats them)


def compiler_version(compiler: str) -> str:
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout


def build_key(compiler: str, flags=COMPILE_FLAGS) -> str:
    parts = [p.read_bytes() for p in SOURCES + HEADERS]
    parts += [" ".join(flags).encode(), compiler_version(compiler).encode(), host_identity().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build_library(compiler: str, directory: Path, flags=COMPILE_FLAGS) -> Path:
    """Compile the sources into ``directory`` (once per sources, flags, compiler and CPU); the library's path."""
    library = directory / f"cpu_kernels-{build_key(compiler, flags)}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so.partial", dir=directory)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *flags, "-o", partial, *map(str, SOURCES)],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise KernelBuildError(f"{compiler} could not build the CPU kernels:\n{done.stderr.strip()}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


# ------------------------------------------------------------------ tuning
@dataclass(frozen=True)
class Tuning:
    """The measured choices; the defaults are what the C++ uses untuned."""

    stream_max_rows: int = 8      # x rows up to which weights stream (decoding) rather than the blocked product
    rows_per_block_one: int = 4   # weight rows a tile reads together when x has one row
    matmul_from_rows: int = 0     # float32 weights: from this many x rows MindSpore's MatMul is faster (0: never)


def open_library(path: Path) -> ctypes.CDLL:
    """The library through ctypes; the same loaded object MindSpore's ``ops.Custom`` calls."""
    lib = ctypes.CDLL(str(path))
    lib.glm3_time_linear.restype = ctypes.c_double
    lib.glm3_time_linear.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_int, ctypes.c_int]
    lib.glm3_configure.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.glm3_configure.restype = None
    return lib


# glm3_time_linear's weight formats (int4 in groups of 128)
FORMAT_F16, FORMAT_BF16, FORMAT_INT8, FORMAT_INT4 = 1, 2, 3, 4
STREAMING, BLOCKED = 1, 2


def measure_tuning(lib: ctypes.CDLL, path: Path, repeats: int = 5) -> Tuning:
    """Time the choices on weights read from memory, as decoding reads them (a few seconds in all).

    The machine may be busy, and its memory shared with other machines: the
    tile size moves off its default only when it wins clearly in nearly every
    one of several interleaved rounds, and the crossovers take the fastest of
    interleaved calls.
    """
    default, others = Tuning.rows_per_block_one, (2, 8)
    wins = dict.fromkeys(others, 0)
    fastest = dict.fromkeys(others, float("inf"))
    for _ in range(5):  # interleaved rounds: a burst of load elsewhere cannot favour one choice
        lib.glm3_configure(Tuning.stream_max_rows, default)
        base = lib.glm3_time_linear(FORMAT_BF16, 1, 8192, 4096, STREAMING, repeats)
        for rows in others:
            lib.glm3_configure(Tuning.stream_max_rows, rows)
            seconds = lib.glm3_time_linear(FORMAT_BF16, 1, 8192, 4096, STREAMING, repeats)
            fastest[rows] = min(fastest[rows], seconds)
            wins[rows] += seconds < 0.95 * base
    winners = [rows for rows in others if wins[rows] >= 4]  # a clear win in nearly every round
    best_rows = min(winners, key=fastest.get) if winners else default
    lib.glm3_configure(Tuning.stream_max_rows, best_rows)
    stream_max = 1
    for rows in (2, 4, 6, 8, 12, 16, 24, 32):
        streaming = blocked = float("inf")
        for _ in range(2):
            streaming = min(streaming, lib.glm3_time_linear(FORMAT_BF16, rows, 8192, 4096, STREAMING, repeats))
            blocked = min(blocked, lib.glm3_time_linear(FORMAT_BF16, rows, 8192, 4096, BLOCKED, repeats))
        if streaming > blocked:
            break
        stream_max = rows
    lib.glm3_configure(stream_max, best_rows)
    products = float32_products(path)
    tuning = Tuning(stream_max_rows=stream_max, rows_per_block_one=best_rows,
                    matmul_from_rows=matmul_crossover(products, repeats))
    lib.glm3_configure(tuning.stream_max_rows, tuning.rows_per_block_one)
    return tuning


def float32_products(path: Path):
    """``(ours, MindSpore's MatMul)``: ``x W^T`` of a float32 weight, each in a compiled graph as the model runs it."""
    import mindspore as ms
    from mindspore import ops

    ours = ops.Custom(f"{path}:LinearDense", out_shape=lambda x, w: (x[0], w[0]), out_dtype=lambda x, w: x,
                      func_type="aot")
    theirs = ops.MatMul(transpose_b=True)

    def compiled(op):
        def product(a, b):
            return op(a, b)

        return ms.jit(product)

    return compiled(ours), compiled(theirs)


def matmul_crossover(products, repeats: int, rows=(1, 8, 32, 128)) -> int:
    """The fewest rows of x from which MindSpore's ``MatMul`` beats our kernel on a float32 weight (0: never).

    MatMul must win clearly at that count and at every larger one measured: a
    single win between two losses is taken for noise.
    """
    import numpy as np
    from mindspore import Tensor

    weight = Tensor(np.random.default_rng(0).standard_normal((8192, 4096), dtype=np.float32))

    def fastest(run, x) -> float:
        run(x, weight).asnumpy()  # compiles
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x, weight).asnumpy()
            times.append(time.perf_counter() - start)
        return min(times)

    ours_run, theirs_run = products
    wins = []
    for count in rows:
        x = Tensor(np.ones((count, 4096), np.float32))
        wins.append(fastest(theirs_run, x) < 0.95 * fastest(ours_run, x))
    for i, count in enumerate(rows):
        if all(wins[i:]):
            return count
    return 0


def load_tuning(library: Path, lib: ctypes.CDLL) -> Tuning:
    """The library's stored tuning, measured now if there is none (or ``GLM3_CPU_KERNELS_RETUNE=1``)."""
    stored = library.with_suffix(".tuning.json")
    tuning = None
    if stored.exists() and os.environ.get("GLM3_CPU_KERNELS_RETUNE", "0") != "1":
        try:
            stored_choices = json.loads(stored.read_text(encoding="utf-8"))
            # a choice added since the file was written is measured (with the others) now
            tuning = Tuning(**stored_choices) if set(stored_choices) == set(asdict(Tuning())) else None
        except (ValueError, TypeError):
            tuning = None
    if tuning is None:
        tuning = measure_tuning(lib, library)
        handle, partial = tempfile.mkstemp(suffix=".json.partial", dir=stored.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(asdict(tuning), out)
        os.replace(partial, stored)
        logger.info("CPU kernels tuned for this machine: %s", tuning)
    lib.glm3_configure(tuning.stream_max_rows, tuning.rows_per_block_one)
    return tuning
