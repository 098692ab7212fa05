"""`athena serve`: the HTTP server (Athena's jobs API, ComfyUI's API and WebSocket, the web UI) on uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from athena.folders import default_dir


def config_from_args(args: argparse.Namespace) -> Any:
    from athena.server.state import ServerConfig

    data = Path(args.data_dir) if args.data_dir else default_dir("data", "ATHENA_DATA_DIR")
    return ServerConfig(
        models_dir=Path(args.models_dir) if args.models_dir else default_dir("models", "ATHENA_MODELS_DIR"),
        output_dir=Path(args.output_dir) if args.output_dir else default_dir("output", "ATHENA_OUTPUT_DIR"),
        input_dir=Path(args.input_dir) if args.input_dir else default_dir("input", "ATHENA_INPUT_DIR"),
        data_dir=data, host=args.host, port=args.port,
        token=args.token or os.environ.get("ATHENA_TOKEN") or None, insecure=args.insecure,
        allowed_origins=tuple(args.allow_origin or ()), max_queued=args.max_queued, device=args.device,
        dtype=args.dtype)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from athena.server.app import create_app

    config = config_from_args(args)
    app = create_app(config)  # refuses a non-loopback bind without a token before anything listens
    print(f"Athena on http://{config.host}:{config.port}/  (API docs: /docs; models: {config.models_dir})")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning" if args.quiet else "info")
    return 0


def add_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="the HTTP server: jobs API, ComfyUI's API and WebSocket, the web UI")
    s.add_argument("--host", default="127.0.0.1", help="any non-loopback address needs --token (or --insecure)")
    s.add_argument("--port", type=int, default=8188)
    s.add_argument("--token", help="access token (default: $ATHENA_TOKEN); required off loopback")
    s.add_argument("--insecure", action="store_true", help="serve a non-loopback address without a token")
    s.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                   help="a web origin (https://host:port) allowed to post to this server (repeatable)")
    s.add_argument("--max-queued", type=int, default=1000, help="queued jobs before POSTs get 429")
    s.add_argument("--models-dir")
    s.add_argument("--output-dir")
    s.add_argument("--input-dir")
    s.add_argument("--data-dir", help="job store, settings and temp files")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_serve)
