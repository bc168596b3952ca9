"""`serve --engine ray`: the app of `sentitune serve` (serve.create_app: same routes, error shapes,
micro-batcher and /metrics) behind Ray Serve, one copy per replica, with fixed or autoscaled replicas.

Each replica builds its own app after it starts (`__serve_build_asgi_app__`), so the model loads once
per replica, inside the replica's process; Ray Serve runs the app's lifespan, which starts the
micro-batcher. /metrics counts the requests of the replica that answers it (Ray Serve's own metrics
aggregate across replicas).

Example:
    >>> deploy("exported/sst2-lora-int8", replicas=2, port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import threading

from sentitune.config import ServeSettings
from sentitune.errors import ConfigError
from sentitune.scale import require


APP_NAME = "sentitune"


def application(
    model: str,
    settings: ServeSettings,
    load_kwargs: dict | None = None,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
):
    """The bound Ray Serve application: `replicas` fixed replicas, or autoscaling between
    `min_replicas` and `max_replicas` when either is given."""
    serve = require("ray.serve", "--engine ray")
    if replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    autoscaling = None
    if min_replicas is not None or max_replicas is not None:
        low, high = min_replicas if min_replicas is not None else 1, max_replicas or max(replicas, min_replicas or 1)
        if not 0 <= low <= high or high < 1:
            raise ConfigError(f"--min-replicas {low} and --max-replicas {high}: need 0 <= min <= max, max >= 1")
        autoscaling = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, min(replicas, high))}

    @serve.ingress()
    class SentituneReplica:
        def __init__(self, model: str, settings: ServeSettings, load_kwargs: dict):
            self.model, self.settings, self.load_kwargs = model, settings, load_kwargs

        def __serve_build_asgi_app__(self):
            from sentitune.inference import Predictor
            from sentitune.serve import create_app

            return create_app(Predictor.load(self.model, **self.load_kwargs), self.settings)

    options = {"name": APP_NAME, "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus}}
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    return serve.deployment(SentituneReplica, **options).bind(model, settings, load_kwargs or {})


def deploy(app, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Starts Ray Serve's HTTP proxy on host:port and runs `app` at route prefix /; returns once the
    replicas are ready."""
    serve = require("ray.serve", "--engine ray")
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def serve_until_stopped(app, host: str, port: int) -> None:
    """`deploy`, then wait for SIGINT or SIGTERM and shut Ray Serve down."""
    serve = require("ray.serve", "--engine ray")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deploy(app, host, port)
    try:
        stop.wait()
    finally:
        serve.shutdown()
