"""``SemiAutoParallel`` on this CPU under ``msrun``, the device check bypassed: everything up to MindSpore's compile.

    msrun --worker_num=2 ... python tests/msrun_semi_auto_worker.py SPEC.json

``SPEC.json`` holds ``shape`` (``[dp, mp, pp]``), ``lora`` (bool) and ``out``. Each rank builds the
tiny model under the layout (strategies, pipeline stages, the fused step in
``Pipeline`` / ``PipelineGradReducer`` / ``AutoParallel``), runs one training
step and writes ``out/outcome-rank{r}.json``: its data share, its stage, and how
the step ended ("trained", or the first line of MindSpore's error; on CPU the
compiler's refusal of the CPU backend).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    import glm3_mindspore.parallel.semi_auto as semi_auto
    import glm3_mindspore.parallel.strategy as strategy
    from glm3_mindspore.configuration import ChatGLM3Config
    from glm3_mindspore.parallel.layout import ParallelConfig
    from conftest import TINY

    semi_auto.require_parallel_device = strategy.require_parallel_device = lambda *args, **kwargs: "CPU"
    dp, mp, pp = spec["shape"]
    layout = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=2)
    peft = {"pet_type": "lora", "lora_rank": 8, "lora_alpha": 32, "target_modules": ".*query_key_value.*"}
    peft = peft if spec.get("lora") else None
    parallel = semi_auto.SemiAutoParallel(layout, ChatGLM3Config.from_pretrained(TINY), peft)  # scheduler ends here

    import mindspore as ms
    import numpy as np

    from glm3_mindspore.modeling import ChatGLM3ForConditionalGeneration
    from glm3_mindspore.training import Trainer
    from test_trainer import fixture_rows, upstream_args

    out = Path(spec["out"])
    rows = fixture_rows(dict(np.load(Path(TINY).parent / "expected_train.npz")))
    model = ChatGLM3ForConditionalGeneration.from_pretrained(TINY, ms_dtype=ms.float32)
    if peft:
        from glm3_mindspore.training.finetune import apply_tuning_method

        model = apply_tuning_method(model, peft)
    trainer = Trainer(model, upstream_args(out, max_steps=1, max_grad_norm=1.0), train_dataset=rows, parallel=parallel)
    try:
        trainer.train()
        outcome = "trained"
    except RuntimeError as exc:
        outcome = str(exc).strip().splitlines()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"outcome-rank{parallel.rank}.json").write_text(json.dumps({
        "data": [parallel.data_rank, parallel.data_world_size], "stage": parallel.stage, "outcome": outcome}))


if __name__ == "__main__":
    main(sys.argv[1])
