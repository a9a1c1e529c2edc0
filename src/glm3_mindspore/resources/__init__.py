"""Data files shipped with the package."""

from pathlib import Path

_HERE = Path(__file__).parent


def adgen_dev_path() -> Path:
    """The 1,070-row ADGEN dev split (``content`` -> ``summary`` JSON lines)."""
    return _HERE / "adgen" / "dev.json"


def tokenizer_path() -> Path:
    """Folder with the real ChatGLM3 ``tokenizer.model`` (and its ``tokenizer_config.json``)."""
    return _HERE / "tokenizer"
