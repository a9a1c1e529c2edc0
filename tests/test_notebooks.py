"""The example notebooks run top to bottom on the tiny model, so they never rot.

Each notebook in ``examples/`` is executed with ``nbclient`` in a Jupyter kernel
running this interpreter, from ``examples/`` as Jupyter would, with
``GLM3_REPO`` pointing at this checkout and the hub offline. Their first code
cell must be the ``TINY = True`` switch. Notebooks are stored without outputs.
"""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install 'glm3-mindspore[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="pip install 'glm3-mindspore[notebooks]'")
pytest.importorskip("ipykernel", reason="pip install 'glm3-mindspore[notebooks]'")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOKS = ["quickstart.ipynb", "finetune_adgen.ipynb"]
CELL_TIMEOUT = 600  # seconds; compiling the first graphs on a slow CI machine takes a while


def _runs_this_python(argv0: str) -> bool:
    # jupyter_client replaces a bare "python" / "python3" / "python3.X" with sys.executable
    major, minor = sys.version_info[:2]
    if argv0 in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True
    return os.path.abspath(argv0) == os.path.abspath(sys.executable)


def kernel_manager(tmp_path: Path):
    """The ``python3`` kernel if it runs this interpreter, else a private spec that does."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        if spec.argv and _runs_this_python(spec.argv[0]):
            return KernelManager(kernel_name="python3")
    except NoSuchKernel:
        pass
    folder = tmp_path / "kernels" / "glm3-python"
    folder.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (folder / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "glm3 tests", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(folder.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="glm3-python", kernel_spec_manager=specs)


def run_notebook(name: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GLM3_REPO", str(REPO))
    monkeypatch.setenv("GLM3_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(notebook, km=kernel_manager(tmp_path), timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    return notebook


def text_of(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stored_clean_with_the_tiny_switch_first(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].source.strip() == "TINY = True"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs"


def test_quickstart_runs(tmp_path, monkeypatch):
    text = text_of(run_notebook("quickstart.ipynb", tmp_path, monkeypatch))
    assert "{'name': 'get_weather', 'parameters': {'city': '北京'}}" in text  # the parsed tool call
    assert "['system', 'user', 'assistant', 'observation', 'assistant']" in text
    assert """'arguments': '{"city": "上海"}'""" in text  # chat_completion's OpenAI-style tool call


@pytest.mark.slow
def test_finetune_adgen_runs(tmp_path, monkeypatch):
    text = text_of(run_notebook("finetune_adgen.ipynb", tmp_path, monkeypatch))
    adapter = tmp_path / "output" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert "eval_loss" in text and "eval_rouge-l" in text and "LoRA layers after merging: 0" in text
