"""``glm3 tokenize``: show the ids and pieces of a text, or of a chat prompt."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenize", help="show token ids and pieces of a text")
    parser.add_argument("text", help="the text to tokenize")
    parser.add_argument("--tokenizer", required=True, help="folder, tokenizer.model file or hub repo id")
    parser.add_argument("--chat", action="store_true", help="wrap the text as a user turn of a chat prompt")
    parser.add_argument("--no-prefix", action="store_true", help="leave out the [gMASK] sop prefix")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..tokenization import ChatGLM3Tokenizer

    tokenizer = ChatGLM3Tokenizer.from_pretrained(args.tokenizer)
    if args.chat:
        ids = tokenizer.build_chat_input(args.text)["input_ids"][0].tolist()
    else:
        ids = tokenizer.encode(args.text, add_special_tokens=not args.no_prefix)
    print(json.dumps({"ids": ids, "pieces": tokenizer.convert_ids_to_tokens(ids)}, ensure_ascii=False))
    return 0
