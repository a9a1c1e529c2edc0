"""Quantization on trained weights: perplexity on the 170 held-out ADGEN rows within 1% (int8) and 5% (int4) of float32.

Random weights hide what quantization does to a trained model's outliers, so
the ``glm3 demo`` recipe trains its model here (shortened: 160 rows, one
epoch) and the quantized copies are scored on the demo's held-out rows.
``benchmarks/bench_quant_accuracy.py`` runs the same on the full demo model.
"""

import math

import pytest

from glm3_mindspore import ChatGLM3ForConditionalGeneration, ChatGLM3Tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from glm3_mindspore.training.demo import DemoSettings, run_demo

    folder = tmp_path_factory.mktemp("demo")
    run_demo(DemoSettings(output_dir=str(folder), train_rows=160, epochs=1.0, generation_samples=1,
                          max_new_tokens=2, shown_examples=0), echo=lambda *_: None)
    return folder


def _perplexity(model, folder) -> float:
    from glm3_mindspore.training import TrainingArguments
    from glm3_mindspore.training.demo import demo_datasets
    from glm3_mindspore.training.glm_trainer import ChatGLM3Trainer

    tokenizer = ChatGLM3Tokenizer.from_pretrained(folder)
    _, held_out, _ = demo_datasets(tokenizer)
    args = TrainingArguments(output_dir=str(folder / "eval"), per_device_eval_batch_size=8, report_to=[],
                             disable_tqdm=True)
    return math.exp(ChatGLM3Trainer(model, args, eval_dataset=held_out, tokenizer=tokenizer).evaluate()["eval_loss"])


@pytest.mark.slow
def test_quantized_demo_model_keeps_its_perplexity(trained):
    reference = _perplexity(ChatGLM3ForConditionalGeneration.from_pretrained(trained), trained)
    assert reference < 5000  # it learned something: random weights score ~65,000
    int8 = _perplexity(ChatGLM3ForConditionalGeneration.from_pretrained(trained).quantize(8), trained)
    int4 = _perplexity(ChatGLM3ForConditionalGeneration.from_pretrained(trained).quantize(4), trained)
    assert abs(int8 / reference - 1) <= 0.01, (reference, int8)
    assert abs(int4 / reference - 1) <= 0.05, (reference, int4)
