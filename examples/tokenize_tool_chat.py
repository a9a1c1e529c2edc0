"""Tokenize a multi-turn tool conversation the way ChatGLM3 sees it.

    python examples/tokenize_tool_chat.py [--tokenizer PATH_OR_HUB_ID]

Prints each turn's token ids and pieces, then the full prompt for the next
assistant turn. Runs offline with the tokenizer of the bundled tiny fixture.
"""

import argparse
from pathlib import Path

from glm3_mindspore import ChatGLM3Tokenizer

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny-chatglm3"

TOOLS = [{
    "name": "get_weather",
    "description": "查询城市天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]

HISTORY = [
    {"role": "system", "content": "Answer the following questions as best as you can. "
                                  "You have access to the following tools:", "tools": TOOLS},
    {"role": "user", "content": "北京今天天气怎么样？"},
    {"role": "assistant", "metadata": "get_weather", "content": "```python\ntool_call(city='北京')\n```"},
    {"role": "observation", "content": '{"temperature": 22, "weather": "晴"}'},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="folder, tokenizer.model file or hub id")
    args = parser.parse_args()
    tokenizer = ChatGLM3Tokenizer.from_pretrained(args.tokenizer)

    for message in HISTORY:
        ids = tokenizer.build_message_ids(message)
        pieces = tokenizer.convert_ids_to_tokens(ids)
        print(f"--- {message['role']} ({len(ids)} tokens)")
        print("ids:   ", ids[:24], "..." if len(ids) > 24 else "")
        print("pieces:", pieces[:24], "..." if len(pieces) > 24 else "")

    prompt = tokenizer.apply_chat_template(HISTORY, add_generation_prompt=True)
    print(f"--- prompt for the next assistant turn: {len(prompt)} tokens")
    print(tokenizer.apply_chat_template(HISTORY, tokenize=False))


if __name__ == "__main__":
    main()
