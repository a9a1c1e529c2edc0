"""Importing the package sets MindSpore up for the host and nothing else; the entry points exist."""

import subprocess
import sys


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
