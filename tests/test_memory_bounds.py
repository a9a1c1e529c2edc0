"""Generation needs memory for the weights and little more: 16-bit weights are never widened for a whole graph.

The full-size 6B in bfloat16 once failed with "Memory not enough" on a 24 GB
machine: the compiled prompt graph widened every layer's weights to float32
and kept all the copies (and every intermediate) until the graph ended. Here a
bfloat16 model whose widened layer weights alone would take 1.4 GB generates
from a 512-token prompt in a fresh process, and its peak memory over the built
model (prompt activations, KV cache, MindSpore's compiled decode step) must
stay under half of that.
"""

import json
import subprocess
import sys
import textwrap

import pytest

WIDENED_BYTES = 8 * 44_040_192 * 4  # float32 copies of the 8 layers' linear weights below

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from glm3_mindspore import ChatGLM3Config, ChatGLM3ForConditionalGeneration
    from glm3_mindspore.modeling.pretrained import uninitialized_parameters
    from glm3_mindspore.parameter_io import write_parameter

    def rss(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))

    config = ChatGLM3Config(num_layers=8, hidden_size=2048, ffn_hidden_size=5632, kv_channels=128,
                            num_attention_heads=16, multi_query_attention=True, multi_query_group_num=2,
                            add_qkv_bias=True, seq_length=2048)
    with uninitialized_parameters():
        model = ChatGLM3ForConditionalGeneration(config, dtype="bfloat16")
    pool = (np.random.default_rng(0).standard_normal(1 << 20) * 0.02).astype(np.float32)
    for _, param in model.parameters_and_names():
        write_parameter(param, np.resize(pool, param.shape))
    model.set_train(False)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak restarts from here: what generation itself needs
    built = rss("VmRSS:")
    prompt = np.random.default_rng(1).integers(100, 60000, (1, 512))
    out = model.generate(prompt, max_new_tokens=4, eos_token_id=[])
    print(json.dumps({"built": built, "peak": rss("VmHWM:"), "new": out.shape[1] - 512}))
""")


@pytest.mark.slow
def test_a_bf16_model_generates_without_widening_its_weights_for_a_graph():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["new"] == 4
    grown = figures["peak"] - figures["built"]
    assert grown < WIDENED_BYTES / 2, f"generation took {grown / 1e6:.0f} MB over the built model"
