"""The multi-role inference example of MindFormers' glm3 model card (a tour guide over four turns), on glm3-mindspore.

Only the import line differs from the model card: ``process_response`` is this
package's (the card's own version calls ``eval`` on model output; ours reads
tool calls with ``ast`` and never executes them). Paths come from the
environment, as in ``examples/infer.py``; the defaults run the tiny test model.
``GLM3_MAX_NEW_TOKENS`` bounds each reply (the tiny random model never stops by
itself, and four full-length replies would not fit its 512-token window).
"""

import os
from pathlib import Path

import mindspore as ms
from glm3_mindspore import AutoConfig, AutoModel, ChatGLM3Tokenizer, process_response

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

kwargs={"max_new_tokens": int(os.environ["GLM3_MAX_NEW_TOKENS"])} if "GLM3_MAX_NEW_TOKENS" in os.environ else {}
gen_kwargs = {"max_length": config.seq_length,"num_beams": 1, "do_sample": False, "top_p": 1,"top_k": 1,
              "temperature": 1,**kwargs}

role="system"
text = "假设你现在是一个导游，请尽可能贴近这个角色回答问题。"
history = []
inputs = tokenizer.build_chat_input(text, history=history, role=role)
inputs = inputs['input_ids']
history.append({'role':role, 'content':text}) # 第一个输入

outputs = model.generate(inputs, **gen_kwargs)
outputs =outputs[0][len(inputs[0]):-1]
response = tokenizer.decode(outputs)
print(response, flush=True)
response, history = process_response(response, history)
print('history:', flush=True)
print(history, flush=True)

role="user"
text="我打算1月份去海南玩，可以介绍一下海南有哪些好玩的，好吃的么？"
inputs = tokenizer.build_chat_input(text, history=history, role=role)
inputs = inputs['input_ids']
history.append({'role':role, 'content':text}) # 第二个输入
outputs = model.generate(inputs, **gen_kwargs) #, eos_token_id=eos_token_id)
outputs =outputs[0][len(inputs[0]):-1]
response = tokenizer.decode(outputs)
print(response, flush=True)
response, history = process_response(response, history)

role="user"
text="哪里适合冲浪和潜水呢？"
inputs = tokenizer.build_chat_input(text, history=history, role=role)

inputs = inputs['input_ids']
history.append({'role':role, 'content':text}) # 第三个输入

outputs = model.generate(inputs, **gen_kwargs)
outputs =outputs[0][len(inputs[0]):-1]
response = tokenizer.decode(outputs)
print(response, flush=True)
response, history = process_response(response, history)

role="user"
text="可以帮我做一份旅游攻略吗？"
inputs = tokenizer.build_chat_input(text, history=history, role=role)
inputs = inputs['input_ids']
history.append({'role':role, 'content':text}) # 第四个输入
outputs = model.generate(inputs, **gen_kwargs)
outputs =outputs[0][len(inputs[0]):-1]
response = tokenizer.decode(outputs)
print(response, flush=True)
response, history = process_response(response, history)
