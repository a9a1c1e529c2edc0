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
