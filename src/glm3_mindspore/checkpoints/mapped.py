"""Giving back the memory of a memory-mapped tensor once it has been copied.

Readers return tensors as views of a read-only memory map of the checkpoint.
Pages read through a map stay in the process's resident set until the map is
closed, so loading one large file would count the weights twice (the mapped
file plus the model's copy). Telling the kernel the pages are no longer needed
(``MADV_DONTNEED``) drops them; the data stays valid and is simply read again
from the file (or the page cache) if touched later.
"""

from __future__ import annotations

import mmap

import numpy as np

_PAGE = mmap.PAGESIZE


def _mapped_base(array: np.ndarray):
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
        if isinstance(base, memoryview):
            base = base.obj
    return base


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages behind ``array`` if it views a memory map; otherwise do nothing."""
    mapped = _mapped_base(array)
    if mapped is None or not hasattr(mapped, "madvise") or array.nbytes == 0 or mapped.closed:
        return
    start_address = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    low, high = np.byte_bounds(array)
    begin = (low - start_address) // _PAGE * _PAGE
    end = min(len(mapped), high - start_address)
    if 0 <= begin < end:
        mapped.madvise(mmap.MADV_DONTNEED, begin, end - begin)
