"""Run configs: MindFormers' YAML keys map onto the trainer; glm3 finetune/evaluate run the tiny configs end to end."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.configuration import ConfigError
from glm3_mindspore.mindformers.finetune_config import load_finetune_config
from conftest import TINY

CONFIGS = TINY.parents[2] / "configs" / "glm3"


def test_full_size_finetune_config_reads_like_mindformers():
    config = load_finetune_config(CONFIGS / "run_glm3_6b_finetune.yaml")
    args = config.args
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.learning_rate) == (1.0, 8, 5e-5)
    assert (args.lr_scheduler_type, args.lr_end, args.adam_beta2, args.weight_decay) == ("polynomial", 1e-6, 0.95, 0.1)
    assert args.fp16 and args.gradient_checkpointing and args.max_grad_norm == 1.0
    assert (args.save_steps, args.save_total_limit, args.loss_scale) == (1000, 1, 65536.0)
    assert config.model_config.seq_length == 192 == config.train.max_source_length + config.train.max_target_length + 1
    assert (config.eval.max_source_length, config.eval.max_target_length) == (256, 256)
    assert config.model_source == "THUDM/chatglm3-6b" and config.method == "full"
    assert config.parallel_config["data_parallel"] == 8


def test_every_seed_config_loads():
    methods = {}
    for path in sorted(CONFIGS.glob("run_glm3_6b*.yaml")) + sorted((CONFIGS / "tiny").glob("run_*.yaml")):
        methods[path.name] = load_finetune_config(path).method
    assert methods["run_glm3_6b_lora.yaml"] == "lora" and methods["run_glm3_tiny_ptuning.yaml"] == "ptuning"
    multiturn = load_finetune_config(CONFIGS / "run_glm3_6b_multiturn_finetune.yaml")
    assert multiturn.train.kind == "conversations" and multiturn.train.max_seq_length == 2048


def test_wrong_keys_and_values_name_their_place(tmp_path):
    good = (CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace("runner_config:\n  epochs: 1", "runner_config:\n  epoch: 1"))
    line = bad.read_text().splitlines().index("  epoch: 1") + 1
    with pytest.raises(ConfigError, match=rf"bad.yaml:{line}: runner_config.epoch: unknown key"):
        load_finetune_config(bad)
    bad.write_text(good.replace("type: polynomial", "type: exponential"))
    with pytest.raises(ConfigError, match=r"lr_schedule.type: unknown schedule 'exponential'"):
        load_finetune_config(bad)
    bad.write_text(good.replace("type: AdamW", "type: EvilOptimizer"))  # before: trained anyway
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: optimizer.type: unknown optimizer 'EvilOptimizer'; "
                                          r"use one of AdamW, AdamWeightDecay, FP32StateAdamWeightDecay"):
        load_finetune_config(bad)
    with pytest.raises(ConfigError, match=r"optimizer.type: unknown optimizer 'SGD'"):
        load_finetune_config(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml", ["optimizer.type=SGD"])
    with pytest.raises(ConfigError, match=r"lr_schedule.type: unknown schedule 'exponential'; use one of constant"):
        load_finetune_config(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml", ["lr_schedule.type=exponential"])
    bad.write_text(good + "\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: learning_rate: unknown key"):
        load_finetune_config(bad)
    with pytest.raises(ConfigError, match="training.learning_rat"):
        load_finetune_config(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml", ["training.learning_rat=1"])
    overridden = load_finetune_config(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml",
                                      ["runner_config.batch_size=3", "training.logging_steps=5"])
    assert overridden.args.per_device_train_batch_size == 3 and overridden.args.logging_steps == 5


def _finetune(tmp_path, config, *extra):
    out = tmp_path / "out"
    argv = ["finetune", "--config", str(CONFIGS / "tiny" / config), "--set", f"output_dir={out}",
            "--set", "lr_schedule.total_steps=4", "--set", "training.disable_tqdm=true",
            "--set", "callbacks=[]", "--set", "training.save_steps=2", *extra]
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_glm3_finetune_lora_then_evaluate_and_resume(tmp_path, capsys):
    out = _finetune(tmp_path, "run_glm3_tiny_lora.yaml", "--set", "evaluation.num_samples=2",
                    "--set", "evaluation.max_new_tokens=4")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # only the adapter is written
    assert "eval_rouge-l" in capsys.readouterr().out
    assert main(["evaluate", "--config", str(CONFIGS / "tiny" / "run_glm3_tiny_lora.yaml"), "--model", str(out),
                 "--num-samples", "2", "--max-new-tokens", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"eval_loss", "eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_bleu-4"}
    # resume: a longer schedule continues from checkpoint-4
    _finetune(tmp_path, "run_glm3_tiny_lora.yaml", "--set", "lr_schedule.total_steps=6", "--set", "resume_training=true")
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["trainer"]["global_step"] == 6


@pytest.mark.slow
def test_glm3_finetune_multiturn_full(tmp_path):
    out = _finetune(tmp_path, "run_glm3_tiny_multiturn.yaml")
    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration

    trained = ChatGLM3ForConditionalGeneration.from_pretrained(out, ms_dtype=ms.float32)
    base = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    changed = [n for (n, a), (_, b) in zip(trained.parameters_and_names(), base.parameters_and_names())
               if not np.array_equal(a.asnumpy(), b.asnumpy())]
    assert len(changed) > 10  # full fine-tuning moved the weights


# Loaded by the killed `python -m glm3_mindspore finetune` (PYTHONPATH): once checkpoint-4's model files are
# in its staging folder, and before it is committed, say so and hang there, so the test can kill -9 the process
# in the middle of the save.
HANG_IN_SAVE = textwrap.dedent("""
    import os, time
    from pathlib import Path
    from glm3_mindspore.training import checkpointing

    commit_checkpoint = checkpointing.commit_checkpoint

    def hang_before_committing_checkpoint_4(output_dir, staging, step, *args, **kwargs):
        if step == 4:
            Path(os.environ["IN_SAVE_MARKER"]).write_text(str(staging))
            time.sleep(600)
        return commit_checkpoint(output_dir, staging, step, *args, **kwargs)

    checkpointing.commit_checkpoint = hang_before_committing_checkpoint_4
""")


def _finetune_argv(out, *extra):
    return ["finetune", "--config", str(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml"), "--set", f"output_dir={out}",
            "--set", "lr_schedule.total_steps=6", "--set", "training.disable_tqdm=true", "--set", "callbacks=[]",
            "--set", "training.save_steps=2", "--set", "training.logging_steps=1", *extra]


@pytest.mark.slow
def test_glm3_finetune_killed_during_a_checkpoint_save_resumes_to_the_uninterrupted_result(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_IN_SAVE)
    marker, out = tmp_path / "in_save", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(hook), "IN_SAVE_MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "glm3_mindspore", *_finetune_argv(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the save of checkpoint-4"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)  # kill -9 in the middle of writing checkpoint-4
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert Path(marker.read_text()).is_dir()  # the half-written checkpoint-4 is still there, hidden

    assert main(_finetune_argv(out, "--set", "resume_training=true")) == 0
    assert not any(p.name.startswith(".checkpoint-") for p in out.iterdir())  # the partial one is cleaned up
    reference = tmp_path / "reference"
    assert main(_finetune_argv(reference)) == 0
    resumed_state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["trainer"]
    reference_state = json.loads((reference / "checkpoint-6" / "trainer_state.json").read_text())["trainer"]
    assert resumed_state["global_step"] == reference_state["global_step"] == 6
    losses = [[r["loss"] for r in state["log_history"] if "loss" in r] for state in (resumed_state, reference_state)]
    assert len(losses[0]) == 6  # steps 1-2 from checkpoint-2's history, 3-6 trained again after the kill
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=1e-6)
    from glm3_mindspore.checkpoints.safetensors_io import load_safetensors

    resumed_weights, reference_weights = (load_safetensors(d / "model.safetensors") for d in (out, reference))
    for name, array in reference_weights.items():
        np.testing.assert_allclose(resumed_weights[name], array, atol=1e-6, err_msg=name)


def test_finetune_refuses_to_clobber_an_output_dir(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    argv = ["finetune", "--config", str(CONFIGS / "tiny" / "run_glm3_tiny_finetune.yaml"), "--set", f"output_dir={out}"]
    assert main(argv) == 1
    assert "already has checkpoints" in capsys.readouterr().err
