"""The ``glm3 demo`` recipe, trained once here (shortened: 160 rows, one epoch): it learns, and its trained
weights keep their perplexity when quantized (int8 within 1% of float32, int4 within 5%).

Random weights hide what quantization does to a trained model's outliers, so quantization accuracy is
scored on this model; ``benchmarks/bench_quant_accuracy.py`` runs the same on the full demo model.
"""

import math
from pathlib import Path

import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration, ChatGLM3Tokenizer
from glm3_mindspore.training.demo import DemoSettings, demo_datasets, run_demo

SETTINGS = dict(train_rows=160, eval_rows=64, epochs=1.0, batch_size=8, generation_samples=2, max_new_tokens=8,
                shown_examples=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``(settings, metrics, printed lines)`` of one shortened demo run."""
    settings = DemoSettings(output_dir=str(tmp_path_factory.mktemp("demo") / "out"), **SETTINGS)
    printed = []
    return settings, run_demo(settings, echo=printed.append), printed


@pytest.mark.slow
def test_demo_learns_on_a_few_rows(demo):
    settings, result, printed = demo
    assert result["after"]["eval_loss"] < result["before"]["eval_loss"] - 0.5
    assert any(line.startswith("before:") for line in printed) and any("reference:" in line for line in printed)
    assert (Path(settings.output_dir) / "model.safetensors").is_file()


def perplexity(model, settings: DemoSettings) -> float:
    """On the demo's held-out rows."""
    from glm3_mindspore.training import TrainingArguments
    from glm3_mindspore.training.glm_trainer import ChatGLM3Trainer

    tokenizer = ChatGLM3Tokenizer.from_pretrained(settings.output_dir)
    _, held_out, _ = demo_datasets(tokenizer, settings)
    args = TrainingArguments(output_dir=str(Path(settings.output_dir) / "eval"), per_device_eval_batch_size=8,
                             report_to=[], disable_tqdm=True)
    return math.exp(ChatGLM3Trainer(model, args, eval_dataset=held_out, tokenizer=tokenizer).evaluate()["eval_loss"])


@pytest.mark.slow
def test_quantized_demo_model_keeps_its_perplexity(demo):
    settings, _, _ = demo
    load = lambda: ChatGLM3ForConditionalGeneration.from_pretrained(settings.output_dir)  # noqa: E731
    reference = perplexity(load(), settings)
    assert reference < 5000  # it learned something: random weights score ~65,000
    int8 = perplexity(load().quantize(8), settings)
    int4 = perplexity(load().quantize(4), settings)
    assert abs(int8 / reference - 1) <= 0.01, (reference, int8)
    assert abs(int4 / reference - 1) <= 0.05, (reference, int4)
