"""Scale-out: data parallelism under ``msrun``, and (on Ascend/GPU) model and pipeline parallel layouts."""

from .data_parallel import DataParallel, launched_by_msrun


def parallel_from_environment():
    """:class:`DataParallel` when started by ``msrun`` with several workers, else single-process."""
    from ..training.trainer import SingleProcess

    return DataParallel() if launched_by_msrun() else SingleProcess()


__all__ = ["DataParallel", "launched_by_msrun", "parallel_from_environment"]
