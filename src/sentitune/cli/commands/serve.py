"""`sentitune serve`: load a run or exported folder and serve it with uvicorn until SIGINT/SIGTERM.

Example:
    $ sentitune serve --model exported/sst2-lora-int8 --port 8000
    $ curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"text": "great fun"}'
"""

from __future__ import annotations

import argparse
import sys

from sentitune.cli.options import runtime_kwargs
from sentitune.errors import DataError
from sentitune.inference import Predictor, available_cores
from sentitune.serve import LOOPBACK, check_address, create_app, run_server, serve_processes, serve_settings


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
    processes = getattr(args, "processes", 1)
    if processes < 1:
        raise DataError(f"--processes must be >= 1, got {processes}")
    runtime = runtime_kwargs(args)
    if args.host not in LOOPBACK and settings.api_key is None:
        print(
            f"sentitune serve: WARNING: listening on {args.host} with no API key; anyone who can reach "
            "this port can use the model (set --api-key or $SENTITUNE_API_KEY)",
            file=sys.stderr,
        )
    if getattr(args, "engine", "uvicorn") == "ray":
        return run_ray(args, settings, runtime)
    if processes > 1:
        # The cores are shared out among the processes: one ONNX session each, cores / processes threads.
        runtime["workers"] = runtime["workers"] or 1
        runtime["threads"] = runtime["threads"] or max(1, available_cores() // processes)
        print(
            f"sentitune serve: {processes} processes serving {args.model} on http://{args.host}:{args.port} "
            f"({runtime['workers']} session(s) x {runtime['threads']} thread(s) each, max batch "
            f"{settings.max_batch_size}, max wait {settings.max_wait_ms} ms)",
            file=sys.stderr,
        )
        if serve_processes(
            lambda: create_app(Predictor.load(args.model, **runtime), settings),
            processes,
            host=args.host,
            port=args.port,
            access_log=args.access_log,
        ):
            print("sentitune serve: stopped by SIGTERM after a graceful shutdown", file=sys.stderr)
        return 0
    predictor = Predictor.load(args.model, **runtime)
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


def run_ray(args: argparse.Namespace, settings, runtime: dict) -> int:
    """`--engine ray`: the same app on Ray Serve replicas; runs until SIGINT or SIGTERM."""
    from sentitune.scale.ray_predict import connect
    from sentitune.scale.ray_serve import application, serve_until_stopped

    app = application(
        args.model,
        settings,
        {k: v for k, v in runtime.items() if v is not None},
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
    )
    connect(args.address)
    print(
        f"sentitune serve: Ray Serve, {args.replicas} replica(s) of {args.model} on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    serve_until_stopped(app, args.host, args.port)
    return 0
