"""The README is the front door: its links lead somewhere, and its datasets quick tour runs as written.

The fine-tuning block of the quick tour is taken from README.md itself and run
on the tiny model and the bundled ADGEN rows for two steps; only the model id,
the data file, the output folder and the step count are swapped in.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def python_blocks(text: str):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_stays_a_front_door():
    assert len(README.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_readme_datasets_quick_tour_trains_the_tiny_model(tmp_path):
    pytest.importorskip("datasets")
    from glm3_mindspore.resources import adgen_dev_path

    block = next(b for b in python_blocks(README) if "load_dataset" in b)
    swaps = {
        '"THUDM/chatglm3-6b"': repr(str(TINY)),
        'data_files="AdvertiseGen/train.json"': f"data_files={str(adgen_dev_path())!r}, cache_dir={str(tmp_path / 'cache')!r}",
        'output_dir="output/adgen_lora"': f"output_dir={str(tmp_path / 'out')!r}",
        "max_steps=1000": "max_steps=2",
    }
    for written, replacement in swaps.items():
        assert written in block, written
        block = block.replace(written, replacement)
    scope = {}
    exec(compile(block, "README.md (quick tour)", "exec"), scope)
    train, model = scope["train"], scope["model"]
    assert len(train) == 1070 and {"input_ids", "labels"} <= set(train.column_names)
    assert model.peft_config.r == 8
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    trained = [record for record in logged if "loss" in record]
    assert trained[-1]["step"] == 2 and np.isfinite(trained[-1]["loss"])
