"""Serving under load: a naive server (one HF pipeline call per request) vs `sentitune serve`.

    python bench/serve_load.py runs/sst2-lora                     # 32 clients, 30 s per server
    python bench/serve_load.py runs/sst2-lora --seconds 3 --limit 64   # a smoke run

Both servers run as separate uvicorn processes on loopback, one after the other, each under the same
bounded load: `--concurrency` clients, each sending single-sentence POST requests back to back for
`--seconds` (after a short warm-up). sentitune serves `--model` (default: the run exported to ONNX
int8 in a temp folder) and then takes a second load shape: the same clients, each request carrying
`--batch-texts` sentences (`{"texts": [...]}`). Output ends with exactly three lines:

    ratio serve_vs_naive: R     (requests/s of sentitune over the naive server, single sentences)
    p99_ms: P                   (sentitune's 99th-percentile latency, single sentences)
    sentences_per_s batched: X  (sentences/s of sentitune under the batched load shape)

Targets: R >= 4, P <= 200, zero errors. The load generator shares the machine with the server, so
run it on an otherwise idle machine.
"""

# No `from __future__ import annotations`: FastAPI must resolve the naive server's local body model.
import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sentitune.runtime import machine_line


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BATCHED = "sentitune serve, batched requests"


# ---- the naive server (run in its own process by this script) -------------------------------------


def naive_server(model_dir: str, port: int) -> None:
    """What most tutorials deploy: a FastAPI endpoint that calls the HF pipeline once per request."""
    import uvicorn
    from fastapi import FastAPI
    from inference import naive_pipeline  # bench/inference.py, beside this script
    from pydantic import BaseModel

    pipe = naive_pipeline(model_dir)
    app = FastAPI()

    class Body(BaseModel):
        text: str

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: Body):  # sync: FastAPI runs it in its thread pool, one pipeline call each
        result = pipe(body.text, truncation=True)[0]
        return {"label": result["label"], "score": result["score"]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- load ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int, timeout_s: float = 180) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server on port {port} did not start within {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the status and body.

    The load generator shares the 2 cores with the server it measures, so it must cost as little CPU
    as possible: httpx spent about 9 ms of CPU per request here (0.5 of a core at 60 requests/s),
    taken from the server under test. This client writes prepared bytes and parses only the status
    line and Content-Length (servers under test answer with plain Content-Length bodies).
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
        )
        await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(
    url: str, texts: list[str], concurrency: int, seconds: float, warmup_s: float, per_request: int = 1
) -> dict:
    """`concurrency` clients sending requests back to back, each of one sentence (`{"text"}`) or of
    `per_request` sentences (`{"texts"}`); latencies of the timed part."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if per_request == 1:
        bodies = [json.dumps({"text": text}).encode() for text in texts]
    else:
        # Every request a different run of neighbours, wrapping round: real batches mix lengths.
        bodies = [
            json.dumps({"texts": [texts[(start + j) % len(texts)] for j in range(per_request)]}).encode()
            for start in range(0, len(texts), per_request)
        ]
    connections = [_Connection(parts.hostname, parts.port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0

    async def client_loop(worker: int, until: float, record: bool):
        nonlocal errors
        i = worker
        connection = connections[worker]
        while time.perf_counter() < until:
            body = bodies[i % len(bodies)]
            i += concurrency
            started = time.perf_counter()
            try:
                ok = await asyncio.wait_for(connection.post("/predict", body), 30) == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, StopIteration):
                connection.close()
                ok = False
            if record:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    warm_until = time.perf_counter() + warmup_s
    await asyncio.gather(*(client_loop(w, warm_until, False) for w in range(concurrency)))
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(client_loop(w, until, True) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "requests_per_second": len(latencies) / elapsed,
        "sentences_per_second": len(latencies) * per_request / elapsed,
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished minilm-l6 run folder (full, lora or head)")
    parser.add_argument("--model", help="what sentitune serves (default: the run exported to ONNX int8)")
    parser.add_argument("--data", help="sentences: GLUE SST-2 dev.tsv (default $SENTITUNE_DATA_DIR/sst2/dev.tsv)")
    parser.add_argument("--limit", type=int, help="only the first N sentences")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed load per server")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="sentitune serve --max-wait-ms")
    parser.add_argument(
        "--batch-texts", type=int, default=32, help="sentences per request of the batched load shape (0: skip it)"
    )
    parser.add_argument("--processes", type=int, default=1, help="sentitune serve --processes (server processes)")
    parser.add_argument("--export-dir", help="keep the exports here (default: a temp folder)")
    parser.add_argument("--naive-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Figures mean little without the hardware: CPU model, cores and the ISA flags that decide them.
    print(machine_line(), flush=True)
    if args.naive_server:
        naive_server(args.naive_server[0], int(args.naive_server[1]))
        return 0

    from sentitune.data import read_table
    from sentitune.export import export_run

    data = Path(args.data) if args.data else Path(os.environ.get("SENTITUNE_DATA_DIR", "data")) / "sst2" / "dev.tsv"
    texts = read_table(data, "sentence", None).texts[: args.limit or None]
    workdir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="sentitune-serve-bench-"))
    hf_dir = workdir / "hf"
    model = Path(args.model) if args.model else workdir / "onnx-int8"
    print(f"exporting {args.run} -> {workdir} ...", file=sys.stderr, flush=True)
    if not (hf_dir / "sentitune.json").exists():
        export_run(args.run, hf_dir, fmt="hf", parity=False)
    if not args.model and not (model / "sentitune.json").exists():
        export_run(args.run, model, fmt="onnx", quantize="int8", parity=False)

    servers = {
        "naive (pipeline per request)": lambda port: [
            sys.executable,
            __file__,
            args.run,
            "--naive-server",
            str(hf_dir),
            str(port),
        ],
        "sentitune serve": lambda port: [
            sys.executable,
            "-m",
            "sentitune",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--processes",
            str(args.processes),
        ],
    }
    rows = {}
    for name, command in servers.items():
        port = free_port()
        process = start(command(port), port)
        try:
            print(f"loading {name}: {args.concurrency} clients x {args.seconds:g} s ...", file=sys.stderr, flush=True)
            rows[name] = asyncio.run(
                load(f"http://127.0.0.1:{port}", texts, args.concurrency, args.seconds, args.warmup_seconds)
            )
            if name == "sentitune serve" and args.batch_texts > 1:  # the naive server takes one text per request
                print(
                    f"loading {name}: {args.concurrency} clients x {args.batch_texts} sentences per request ...",
                    file=sys.stderr,
                    flush=True,
                )
                rows[BATCHED] = asyncio.run(
                    load(
                        f"http://127.0.0.1:{port}",
                        texts,
                        args.concurrency,
                        args.seconds,
                        args.warmup_seconds,
                        per_request=args.batch_texts,
                    )
                )
        finally:
            stop(process)

    print()
    print(
        f"{'server':<36} {'requests/s':>11} {'sentences/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} "
        f"{'errors':>7}"
    )
    for name, row in rows.items():
        print(
            f"{name:<36} {row['requests_per_second']:>11.1f} {row['sentences_per_second']:>12.1f} "
            f"{row['latency_p50_ms']:>8.1f} {row['latency_p99_ms']:>8.1f} {row['requests']:>9} {row['errors']:>7}"
        )
    naive, ours = rows["naive (pipeline per request)"], rows["sentitune serve"]
    ratio = ours["requests_per_second"] / naive["requests_per_second"] if naive["requests_per_second"] else float("nan")
    print(f"ratio serve_vs_naive: {ratio:.2f}")
    print(f"p99_ms: {ours['latency_p99_ms']:.1f}")
    if BATCHED in rows:
        print(f"sentences_per_s batched: {rows[BATCHED]['sentences_per_second']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
