"""``infer.py`` of MindFormers' glm3 model card, running on glm3-mindspore.

Only the import line differs from the model card. Paths come from the
environment so the same script runs the real model or the tiny test model:

    GLM3_CONFIG=configs/glm3/predict_glm3_6b.yaml GLM3_TOKENIZER=/path/to/tokenizer.model python examples/infer.py

Defaults: the tiny random model of tests/fixtures (output is noise, the
pipeline is real). ``GLM3_DEVICE`` picks the device (default: CPU).
"""

import os
from pathlib import Path

import mindspore as ms
from glm3_mindspore import AutoConfig, AutoModel, ChatGLM3Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = os.environ.get("GLM3_CONFIG", str(ROOT / "configs/glm3/tiny/predict_glm3_tiny.yaml"))
TOKENIZER = os.environ.get("GLM3_TOKENIZER", str(ROOT / "tests/fixtures/tiny-chatglm3/tokenizer.model"))
DEVICE = os.environ.get("GLM3_DEVICE", "CPU")

# 指定图模式，指定使用训练卡id
ms.set_context(mode=ms.GRAPH_MODE, device_target=DEVICE)

# 本地加载方式，配置为权重下载章节的tokenizer文件
tokenizer = ChatGLM3Tokenizer(TOKENIZER)

# 自定义修改配置后实例化，配置为yaml文件路径，示例yaml文件为configs/glm3/predict_glm3_6b.yaml
config = AutoConfig.from_pretrained(CONFIG)
model = AutoModel.from_config(config)   # 从自定义配置项中实例化模型

role="user"

inputs_list=["你好", "请介绍一下华为"]

for input_item in inputs_list:
    history=[]
    inputs = tokenizer.build_chat_input(input_item, history=history, role=role)
    inputs = inputs['input_ids']
    # 首次调用model.generate()进行推理将包含图编译时间，推理性能显示不准确，多次重复调用以获取准确的推理性能
    outputs = model.generate(inputs, do_sample=False, top_k=1, max_length=config.seq_length)
    response = tokenizer.decode(outputs)
    for i, output in enumerate(outputs):
        output = output[len(inputs[i]):]
        response = tokenizer.decode(output)
        print(response)
