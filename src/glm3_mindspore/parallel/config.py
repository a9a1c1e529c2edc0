"""Moved to :mod:`glm3_mindspore.mindformers.parallel_config`; kept so old imports work."""

from ..mindformers.parallel_config import RunParallelSettings, parallel_config_from_sections, read_run_parallel_settings

__all__ = ["RunParallelSettings", "parallel_config_from_sections", "read_run_parallel_settings"]
