"""Importing the package sets MindSpore up for the host and nothing else; the entry points exist."""

import re
import subprocess
import sys
from pathlib import Path


def test_import_changes_no_environment_variable_and_blocks_on_cpu():
    # (MindSpore's own import sets a few variables; ours must add none)
    code = (
        "import os, json, mindspore; before = dict(os.environ); import glm3_mindspore; "
        "from mindspore._c_expression import RuntimeConf as conf; "
        "print(json.dumps({'same_env': dict(os.environ) == before, 'target': mindspore.get_context('device_target'), "
        "'blocking': conf.get_instance().is_launch_blocking()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same_env"] is True
    assert result["target"] != "CPU" or result["blocking"] is True


def test_heavy_modules_load_lazily():
    code = "import sys, glm3_mindspore; print('glm3_mindspore.modeling' in sys.modules, 'glm3_mindspore.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["False", "False"]


SRC = Path(__file__).resolve().parent.parent / "src" / "glm3_mindspore"


def imported_packages(folder: Path):
    """The glm3_mindspore sub-packages the modules under ``folder`` import (relative imports resolved)."""
    found = {}
    for path in folder.rglob("*.py"):
        package = path.relative_to(SRC).parts[:-1]  # the module's package below glm3_mindspore
        for dots, name in re.findall(r"^\s*from (\.+)([a-zA-Z_.]*) import", path.read_text(encoding="utf-8"), re.M):
            parts = package[: len(package) - (len(dots) - 1)] + tuple(name.split(".") if name else ())
            if parts:
                found.setdefault(parts[0], set()).add(str(path.relative_to(SRC)))
    return found


def test_parallel_does_not_import_the_trainer():
    assert "training" not in imported_packages(SRC / "parallel")
    code = "import sys, glm3_mindspore.parallel; print(any(m.startswith('glm3_mindspore.training') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-1:] == ["False"], out.stderr[-2000:]


def test_checkpoints_do_not_import_the_layers_above_them():
    above = imported_packages(SRC / "checkpoints")
    assert not {"training", "parallel", "peft", "cli"} & set(above), above


def test_moved_modules_still_import_from_their_old_paths():
    from glm3_mindspore.parallel.checkpoints import merged_tensors, write_strategy_files  # noqa: F401
    from glm3_mindspore.parallel.config import read_run_parallel_settings  # noqa: F401
    from glm3_mindspore.parallel.mindformers import split_mindformers_lora  # noqa: F401
    from glm3_mindspore.run_config import YamlDocument, model_config_from_yaml  # noqa: F401
    from glm3_mindspore.training.finetune import apply_tuning_method  # noqa: F401
    from glm3_mindspore.training.finetune_config import load_finetune_config  # noqa: F401
    from glm3_mindspore.training.train_step import FusedTrainDriver, FusedTrainStep  # noqa: F401
    from glm3_mindspore.training.trainer import SingleProcess  # noqa: F401
