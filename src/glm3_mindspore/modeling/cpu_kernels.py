"""CPU kernels of our own, compiled once per machine, run as ``ops.Custom`` ops.

:func:`small_batch_linear` is for linear layers applied to a few rows, the
matmuls of decoding. Why: decoding one token multiplies a handful of
activation rows by every weight matrix, so its speed is the rate at which the
weights stream from memory.
MindSpore's CPU ``MatMul`` reads a ``[27392, 4096]`` fp32 weight at about
18-20 GB/s on a 2-core Xeon for one row; a vectorised dot-product kernel reads
it at about 28 GB/s (the machine's OpenBLAS: 31). The kernels,
``csrc/cpu_kernels.cc``, are compiled once per machine with the host's C++
compiler into the user's cache and run as ahead-of-time ``ops.Custom`` ops, so
they sit inside compiled graphs like any other op. The linear kernel also
reads fp16 and bf16 weights directly, so a bf16 checkpoint decodes without
casting every weight to fp32 each step; :func:`gather_rows` looks embeddings
up in a bf16 table, which MindSpore's CPU ``Gather`` cannot do inside a graph
(and outside one does only after copying the whole table);
:func:`widen_to_float32` casts bf16/fp16 weights to fp32 for prompts at memory
speed, several times faster than MindSpore's CPU ``Cast``.

All are used on CPU only and in inference (training graphs keep MindSpore's
ops); the linear kernel for at most :data:`MAX_ROWS` rows: beyond that the
product is compute-bound and MindSpore's GEMM wins. Without a compiler, or with ``GLM3_CPU_KERNELS=0``,
these functions return None and layers use MindSpore's ops: the same results
within float rounding, slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import ops

from ..runtime import device_target

logger = logging.getLogger(__name__)

MAX_ROWS = 8  # measured crossover: at 16 rows MatMul wins on the largest weights (4096 x 27392: 34 vs 35 ms)
SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cc"
COMPILE_FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-shared", "-fPIC")
SWITCH = "GLM3_CPU_KERNELS"


class KernelBuildError(RuntimeError):
    """The C++ compiler could not build the kernels; the message carries its output."""


def cache_dir() -> Path:
    """Where compiled kernels live: ``$XDG_CACHE_HOME/glm3_mindspore/kernels`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glm3_mindspore" / "kernels"


def find_compiler() -> Optional[str]:
    """``$CXX`` if set, else ``g++`` on PATH (the kernels use GCC vector extensions)."""
    return os.environ.get("CXX") or shutil.which("g++")


def _host_identity() -> str:
    """CPU model and feature flags: ``-march=native`` code is only valid on a CPU like this one."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # one of each (every core repeats them)


def _compiler_version(compiler: str) -> str:
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout


def build_library(compiler: str, directory: Path) -> Path:
    """Compile :data:`SOURCE` into ``directory`` (once per source, compiler and CPU) and return the library.

    Written to a temporary name and renamed, so concurrent processes (``msrun``
    workers) and interrupted builds never leave a half-written library.
    """
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, " ".join(COMPILE_FLAGS).encode(), _compiler_version(compiler).encode(), _host_identity().encode(),
    ])).hexdigest()[:16]
    library = directory / f"cpu_kernels-{key}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so.partial", dir=directory)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *COMPILE_FLAGS, "-o", partial, str(SOURCE)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise KernelBuildError(f"{compiler} could not build {SOURCE.name}:\n{done.stderr.strip()}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


def _backward(x, weight, out, dout):
    """Gradients of ``y = x W^T``, for anyone differentiating an inference graph."""
    dx = ops.matmul(dout, weight.astype(dout.dtype))
    dweight = ops.matmul(dout.swapaxes(0, 1), x.astype(dout.dtype)).astype(weight.dtype)
    return dx, dweight


@functools.lru_cache(maxsize=None)
def library() -> Optional[Path]:
    """The compiled kernels on CPU, built on first use; None where they do not apply or cannot be built (warns once)."""
    if device_target() != "CPU" or os.environ.get(SWITCH, "1") == "0":
        return None
    compiler = find_compiler()
    if compiler is None:
        logger.warning("no C++ compiler (g++) found: CPU decoding uses MindSpore's MatMul, which streams weights "
                       "more slowly (up to 1.2x slower decoding measured); install g++ to build "
                       "glm3_mindspore's CPU kernels (set %s=0 to silence)", SWITCH)
        return None
    try:
        return build_library(compiler, cache_dir())
    except (OSError, subprocess.SubprocessError, KernelBuildError) as err:
        logger.warning("CPU kernels unavailable, using MindSpore's ops (set %s=0 to silence): %s", SWITCH, err)
        return None


def small_batch_linear() -> Optional[ops.Custom]:
    """``(x [M, K], w [N, K]) -> x W^T [M, N]`` in ``x``'s dtype (fp32/fp16 x; fp32/fp16/bf16 w), or None."""
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:SmallBatchLinear", out_shape=lambda x, w: (x[0], w[0]),
                      out_dtype=lambda x, w: x, func_type="aot", bprop=_backward)


def gather_rows() -> Optional[ops.Custom]:
    """``(table [V, H], int32 ids [...]) -> rows [..., H]`` in the table's dtype (no gradient), or None."""
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:GatherRows", out_shape=lambda table, ids: tuple(ids) + (table[1],),
                      out_dtype=lambda table, ids: table, func_type="aot")


def widen_to_float32() -> Optional[ops.Custom]:
    """``bf16/fp16 tensor -> fp32`` of the same shape (no gradient: inference only), or None."""
    path = library()
    if path is None:
        return None
    return ops.Custom(f"{path}:WidenToFloat32", out_shape=lambda shape: shape,
                      out_dtype=lambda dtype: ms.float32, func_type="aot")
