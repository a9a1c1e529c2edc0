"""One data-parallel training run of the tiny fixture model, as ``msrun`` starts it on every rank.

    msrun --worker_num=2 --local_worker_num=2 --master_addr=127.0.0.1 --master_port=PORT \
        --log_dir=DIR --join=True python tests/msrun_dp_worker.py SPEC.json

``SPEC.json`` holds ``TrainingArguments`` overrides (``args``), an optional
``resume`` (a checkpoint path or ``"latest"``), ``stop_at`` (a step at which a
callback on rank 0 only asks to stop) and ``out`` (a folder). Each rank writes
its final parameters to ``out/params-rank{r}.npz`` and its log history to
``out/history-rank{r}.json``; every call of ``Trainer.write_model`` appends the
writing rank to ``out/writers.txt``. Without msrun (``python
tests/msrun_dp_worker.py SPEC.json``) the same run happens in one process.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    from glm3_mindspore.parallel import parallel_from_environment

    parallel = parallel_from_environment()  # the msrun scheduler process ends inside this call

    import mindspore as ms
    import numpy as np

    from conftest import TINY
    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.training import Trainer, TrainerCallback
    from test_trainer import fixture_rows, upstream_args

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    rank = parallel.rank

    class StopOnRankZero(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if rank == 0 and state.global_step == spec.get("stop_at"):
                control.should_stop = True

    class RecordingTrainer(Trainer):
        def write_model(self, folder):
            with open(out / "writers.txt", "a") as handle:
                handle.write(f"{rank}\n")
            super().write_model(folder)

    rows = fixture_rows(dict(np.load(Path(TINY).parent / "expected_train.npz")))
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    args = upstream_args(Path(spec["run_root"]), **spec["args"])
    trainer = RecordingTrainer(model, args, train_dataset=rows, callbacks=[StopOnRankZero()], parallel=parallel)
    trainer.train(resume_from_checkpoint=spec.get("resume"))
    np.savez(out / f"params-rank{rank}.npz", **{n: p.asnumpy() for n, p in model.parameters_and_names()})
    (out / f"history-rank{rank}.json").write_text(json.dumps(
        {"world_size": parallel.world_size, "global_step": trainer.state.global_step,
         "log_history": trainer.state.log_history}))


if __name__ == "__main__":
    main(sys.argv[1])
