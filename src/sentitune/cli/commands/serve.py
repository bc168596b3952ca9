"""`sentitune serve`: load a run or exported folder and serve it with uvicorn until SIGINT/SIGTERM.

Example:
    $ sentitune serve --model exported/sst2-lora-int8 --port 8000
    $ curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"text": "great fun"}'
"""

from __future__ import annotations

import argparse
import sys

from sentitune.cli.options import runtime_kwargs
from sentitune.inference import Predictor
from sentitune.serve import LOOPBACK, check_address, create_app, run_server, serve_settings


def run(args: argparse.Namespace) -> int:
    settings = serve_settings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )
    check_address(args.host, args.port)
    predictor = Predictor.load(args.model, **runtime_kwargs(args))
    if args.host not in LOOPBACK and settings.api_key is None:
        print(
            f"sentitune serve: WARNING: listening on {args.host} with no API key; anyone who can reach "
            "this port can use the model (set --api-key or $SENTITUNE_API_KEY)",
            file=sys.stderr,
        )
    app = create_app(predictor, settings)
    info = predictor.describe()
    print(
        f"sentitune serve: {info['backend']}{'/' + info['variant'] if info['variant'] else ''} model from "
        f"{args.model} on http://{args.host}:{args.port} (max batch {settings.max_batch_size}, "
        f"max wait {settings.max_wait_ms} ms)",
        file=sys.stderr,
    )
    if run_server(app, host=args.host, port=args.port, access_log=args.access_log):
        print("sentitune serve: stopped by SIGTERM after a graceful shutdown", file=sys.stderr)
    return 0
