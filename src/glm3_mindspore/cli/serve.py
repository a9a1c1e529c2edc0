"""``glm3 serve``: an OpenAI-compatible HTTP server for a ChatGLM3 model (see ``docs/serving.md``).

    glm3 serve --model THUDM/chatglm3-6b --dtype float16 --port 8000 --api-key "$KEY"
"""

from __future__ import annotations

import os

from . import CliError
from .common import add_model_arguments, load_model_and_tokenizer


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible API server (tool calls, continuous batching)")
    add_model_arguments(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    group.add_argument("--port", type=int, default=8000)
    group.add_argument("--served-model-name", default="chatglm3-6b", help="the model id clients ask for")
    group.add_argument("--api-key", default=os.environ.get("GLM3_API_KEY"),
                       help="require 'Authorization: Bearer KEY' (default $GLM3_API_KEY; none: no key)")
    group.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    group.add_argument("--max-model-len", type=int, default=None,
                       help="prompt + reply tokens per request at most (default the model's seq_length)")
    group.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="request body size limit")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        from ..serving import ServerSettings, serve
    except ImportError as exc:
        raise CliError(f"glm3 serve needs the server extra: pip install \"glm3-mindspore[server]\" ({exc})") from None
    if args.max_batch < 1:
        raise CliError(f"--max-batch must be >= 1, got {args.max_batch}")
    model, tokenizer = load_model_and_tokenizer(args)
    settings = ServerSettings(model_name=args.served_model_name, api_key=args.api_key,
                              max_body_bytes=args.max_body_bytes)
    print(f"glm3 serve: {args.served_model_name} on http://{args.host}:{args.port}/v1 "
          f"(max batch {args.max_batch}{', API key required' if args.api_key else ''})", flush=True)
    serve(model, tokenizer, host=args.host, port=args.port, settings=settings, max_batch=args.max_batch,
          max_model_len=args.max_model_len, compiled=not args.no_compile)
    return 0
