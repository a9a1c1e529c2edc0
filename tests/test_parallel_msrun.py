"""Data parallelism under msrun on this CPU: 2 processes train the tiny model exactly like 1 process on the
combined batch; only rank 0 writes; a stop asked on one rank stops both; resume loads the same checkpoint on all.

Each msrun launch takes ~30 s here (cluster start-up, two compilations); the module runs two of them.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from glm3_mindspore.cli import main
from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
from glm3_mindspore.training import Trainer, TrainerCallback
from conftest import TINY
from test_trainer import fixture_rows, upstream_args

pytestmark = pytest.mark.msrun

HERE = Path(__file__).resolve().parent
WORKER = HERE / "msrun_dp_worker.py"
# Adam turns the rounding noise of near-zero gradients (the rotary half of the key bias) into updates of
# ~lr * noise / sqrt(v): at lr 1e-3 they reach 1.1e-5 after 3 steps, at 1e-4 ~1e-6. A wrong shard or a
# missing mean changes the updates by ~lr per element (>= 1e-4), which the 1e-5 tolerance catches.
ARGS = dict(learning_rate=1e-4, max_steps=4, save_strategy="steps", save_steps=2, report_to=["jsonl"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp: Path, spec: dict, name: str, use_glm3_launch: bool, worker: Path = WORKER) -> Path:
    out = tmp / name
    spec = {**spec, "out": str(out)}
    spec_file = tmp / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    logs = tmp / f"{name}-logs"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    if use_glm3_launch:
        command = [sys.executable, "-m", "glm3_mindspore", "launch", "--nproc", "2", "--master-port", str(free_port()),
                   "--log-dir", str(logs), "--cluster-time-out", "120", "--", str(worker), str(spec_file)]
    else:
        command = [str(Path(sys.executable).parent / "msrun"), "--worker_num=2", "--local_worker_num=2",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True",
                   "--cluster_time_out=120", "python", str(worker), str(spec_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    if result.returncode != 0:
        tails = "\n".join(f"--- {log.name}\n" + "\n".join(
            l for l in log.read_text(errors="replace").splitlines() if not l.startswith(("[WARNING]", "[INFO]")))[-3000:]
            for log in sorted(logs.glob("*.log")))
        pytest.fail(f"msrun failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n{tails}")
    return out


def history(out: Path, rank: int) -> dict:
    return json.loads((out / f"history-rank{rank}.json").read_text())


def params(out: Path, rank: int) -> dict:
    return dict(np.load(out / f"params-rank{rank}.npz"))


class Snapshot(TrainerCallback):
    def __init__(self, model):
        self.model, self.at = model, {}

    def on_step_end(self, args, state, control, **kw):
        self.at[state.global_step] = {n: p.asnumpy().copy() for n, p in self.model.parameters_and_names()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, expected_train):
    tmp = tmp_path_factory.mktemp("dp")
    # 2 processes x batch 2; a callback on rank 0 only asks to stop after step 3
    first = launch(tmp, {"run_root": str(tmp / "root"), "stop_at": 3,
                         "args": {**ARGS, "per_device_train_batch_size": 2}}, "first", use_glm3_launch=True)
    # 1 process x batch 4 (the same rows in the same order), parameters kept after every step
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    snapshot = Snapshot(model)
    single = Trainer(model, upstream_args(tmp / "single", **{**ARGS, "per_device_train_batch_size": 4,
                                                             "save_strategy": "no", "report_to": []}),
                     train_dataset=fixture_rows(expected_train), callbacks=[snapshot])
    single.train()
    return tmp, first, single, snapshot


def logged(records, key):
    return [r[key] for r in records if key in r and "eval_loss" not in r]


def test_two_processes_equal_one_process_on_the_combined_batch(runs):
    _, first, single, snapshot = runs
    rank0, rank1 = params(first, 0), params(first, 1)
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)  # replicas stay identical
    reference = snapshot.at[3]
    worst = max(float(np.abs(rank0[n] - reference[n]).max()) for n in reference)
    print(f"max |2-process - 1-process| parameter difference after 3 steps: {worst:.2e}")
    assert worst <= 1e-5, worst
    moved = max(float(np.abs(reference[n] - snapshot.at[1][n]).max()) for n in reference)
    assert moved > 1e-4  # the comparison is not trivially satisfied
    records = history(first, 0)["log_history"]
    np.testing.assert_allclose(logged(records, "loss"), logged(single.state.log_history, "loss")[:3], atol=1e-5)
    np.testing.assert_allclose(logged(records, "grad_norm"), logged(single.state.log_history, "grad_norm")[:3],
                               rtol=1e-5)  # the mean of the two ranks' gradients, not their sum


def test_only_rank_zero_writes_and_a_stop_on_one_rank_stops_both(runs):
    tmp, first, _, _ = runs
    assert history(first, 0)["world_size"] == 2
    assert history(first, 0)["global_step"] == history(first, 1)["global_step"] == 3  # stopped together
    assert (first / "writers.txt").read_text().split() == ["0", "0"]  # checkpoint-2 and the final one, by rank 0
    run = tmp / "root" / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["trainer"]["global_step"] == 3


def test_resume_under_msrun_continues_on_every_rank(runs):
    tmp, first, single, snapshot = runs
    resumed = launch(tmp, {"run_root": str(tmp / "root"), "resume": "latest",
                           "args": {**ARGS, "per_device_train_batch_size": 2}}, "resumed", use_glm3_launch=False)
    for rank in (0, 1):
        assert history(resumed, rank)["global_step"] == 4
    rank0, rank1 = params(resumed, 0), params(resumed, 1)
    final = {n: p.asnumpy() for n, p in single.model.parameters_and_names()}
    assert max(float(np.abs(rank0[n] - final[n]).max()) for n in final) <= 1e-5
    assert all(np.array_equal(rank0[n], rank1[n]) for n in rank0)
    assert (resumed / "writers.txt").read_text().split() == ["0"]  # checkpoint-4
    losses = logged(history(resumed, 0)["log_history"], "loss")
    assert len(losses) == 4  # three from the checkpoint's history, one new
    np.testing.assert_allclose(losses[-1], logged(single.state.log_history, "loss")[3], atol=1e-5)


def test_glm3_launch_builds_the_msrun_command(capsys):
    assert main(["launch", "--nproc", "2", "--master-port", "9123", "--dry-run", "--", "finetune", "--config",
                 "run.yaml"]) == 0
    command = capsys.readouterr().out.split()
    assert command[0].endswith("msrun")
    assert command[1:] == ["--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1", "--master_port=9123",
                           "--log_dir=output/msrun_log", "--join=True", "--cluster_time_out=600",
                           "python", "-m", "glm3_mindspore", "finetune", "--config", "run.yaml"]
    assert main(["launch", "--nproc", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
                 "--dry-run", "--", "glm3", "finetune", "--config", "run.yaml"]) == 0
    out = capsys.readouterr().out
    assert "--worker_num=8 --local_worker_num=4 --master_addr=10.0.0.1 --master_port=8118" in out
    assert "--node_rank=1" in out


def test_glm3_launch_without_msrun_says_so(monkeypatch, capsys, tmp_path):
    import glm3_mindspore.cli.launch as launch_cli

    monkeypatch.setattr(launch_cli.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["launch", "--nproc", "2", "--", "finetune", "--config", "run.yaml"]) == 1
    assert "msrun not found" in capsys.readouterr().err
    assert main(["launch", "--nproc", "2", "--dry-run", "--", "nonsense"]) == 1
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_msrun_launcher_script_takes_mindformers_arguments():
    script = HERE.parent / "scripts" / "msrun_launcher.sh"
    env = {**os.environ, "GLM3_LAUNCH_DRY_RUN": "1", "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(script), "finetune --config run.yaml", "16", "8", "10.0.0.1", "8118", "1",
                          "logs", "False", "300"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("--worker_num=16 --local_worker_num=8 --master_addr=10.0.0.1 --master_port=8118 --log_dir=logs "
            "--join=False --cluster_time_out=300 --node_rank=1 python -m glm3_mindspore finetune --config run.yaml"
            in out.stdout)
    usage = subprocess.run(["bash", str(script), "finetune", "3", "2"], env=env, capture_output=True, text=True)
    assert usage.returncode == 1 and "msrun_launcher.sh" in usage.stdout  # 3 arguments: the usage text
    uneven = subprocess.run(["bash", str(script), "finetune", "3", "2", "127.0.0.1", "8118", "0", "logs", "True", "60"],
                            env=env, capture_output=True, text=True)
    assert uneven.returncode == 1 and "must be a multiple of local_worker 2" in uneven.stderr


CPU_REFUSAL = "Invalid communication backend: CPU for semi_auto_parallel/auto_parallel mode"


@pytest.mark.parametrize("shape, lora", [((1, 2, 1), False), ((1, 1, 2), False), ((1, 2, 1), True)],
                         ids=["model-parallel", "pipeline", "model-parallel-lora"])
def test_model_and_pipeline_parallel_steps_reach_mindspores_parallel_compiler(tmp_path, shape, lora):
    """Everything of a model/pipeline-parallel step up to the compile (strategies, stages, the fused step in
    Pipeline/PipelineGradReducer/AutoParallel, graph mode) is accepted by MindSpore; on CPU its compiler then
    refuses the backend, which is why glm3 finetune checks the device first. (~15 s each)"""
    out = launch(tmp_path, {"shape": list(shape), "lora": lora}, "semi-auto", use_glm3_launch=False,
                 worker=HERE / "msrun_semi_auto_worker.py")
    outcomes = [json.loads((out / f"outcome-rank{r}.json").read_text()) for r in range(2)]
    for outcome in outcomes:
        assert outcome["outcome"] == "trained" or CPU_REFUSAL in outcome["outcome"], outcome["outcome"]
    assert [o["data"] for o in outcomes] == [[0, 1], [0, 1]]  # halves of one replica, or its two stages: same rows
    assert [o["stage"] for o in outcomes] == ([0, 1] if shape[2] == 2 else [0, 0])
