"""Shared test set-up: offline hub, fixture paths, small helpers."""

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-chatglm3"
TINY_BIN = FIXTURES / "tiny-chatglm3-bin"
VOCAB = TINY / "tokenizer.model"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_bin_dir() -> Path:
    return TINY_BIN


@pytest.fixture(scope="session")
def tokenizer():
    from glm3_mindspore import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer(VOCAB)


@pytest.fixture(scope="session")
def tokenizer_expected() -> dict:
    return json.loads((FIXTURES / "tokenizer_expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def expected():
    return dict(np.load(FIXTURES / "expected.npz"))


@pytest.fixture(scope="session")
def expected_train():
    return dict(np.load(FIXTURES / "expected_train.npz"))


MEASURED = """
import json, resource, sys, time
{setup}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    result = repr({expression})
except Exception as exc:
    result = f"{{type(exc).__name__}}: {{exc}}"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({{"result": result, "seconds": time.perf_counter() - start, "grown_mb": grown}}))
"""


def run_measured(setup: str, expression: str, *argv: str) -> dict:
    """``expression`` in a fresh interpreter after ``setup``: its repr (or ``"Error: message"``), the
    seconds it took and how far it raised the peak RSS (MB), plus the process's ``stdout`` and ``stderr``.

    For hostile-input tests: the bound is on one call, not on whatever the test session did before.
    """
    import subprocess
    import sys

    code = MEASURED.format(setup=setup, expression=expression)
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    *printed, last = out.stdout.strip().splitlines()
    return {**json.loads(last), "stdout": "\n".join(printed), "stderr": out.stderr}
