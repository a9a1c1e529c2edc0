"""``glm3 generate``: continue a prompt (or answer it as a chat turn) and print the text."""

from __future__ import annotations

import sys

from .common import add_model_arguments, add_sampling_arguments, load_model_and_tokenizer, sampling_kwargs


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate text from a prompt")
    parser.add_argument("prompt", help="the prompt text ('-' reads it from standard input)")
    parser.add_argument("--chat", action="store_true", help="answer the prompt as a user chat turn")
    add_model_arguments(parser)
    add_sampling_arguments(parser, chat_defaults=False)
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams (the answer is printed when the search ends)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..chat import chat_stop_ids
    from ..generation import TextStreamer

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model, tokenizer = load_model_and_tokenizer(args)
    kwargs = sampling_kwargs(args)
    if args.max_new_tokens is None and args.max_length is None:
        kwargs["max_new_tokens"] = 256
    if args.chat:
        inputs = tokenizer.build_chat_input(prompt)
        kwargs["eos_token_id"] = chat_stop_ids(tokenizer)
    else:
        inputs = tokenizer(prompt, return_tensors="np")
    if args.num_beams > 1:  # a beam search knows its answer only at the end
        out = model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                             num_beams=args.num_beams, **kwargs)
        print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        return 0
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    model.generate(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], streamer=streamer, **kwargs)
    return 0
