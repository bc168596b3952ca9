"""The server under hostile and heavy traffic: schemathesis fuzzes the app's OpenAPI schema in-process,
hypothesis throws raw bytes at /predict, and a real uvicorn process on loopback takes a bounded load
while its memory is watched. Pass criteria: zero 5xx, zero crashes, RSS growth under 50 MiB.

Figures printed here (run with -s) are summarised in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from sentitune.inference import Predictor
from sentitune.serve import ServeSettings, create_app


LIMITS = {"max_texts": 8, "max_chars": 300, "max_body_bytes": 8192, "max_wait_ms": 1.0}
API_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def torch_predictor(trained_run):
    # The torch backend: its tokenizer is what rejects odd strings, so it is the one worth fuzzing.
    return Predictor.load(trained_run("head"))


# ---- schemathesis -----------------------------------------------------------------------------


def test_schemathesis_fuzz_finds_no_server_errors(torch_predictor):
    import schemathesis
    from schemathesis.generation import GenerationMode
    from schemathesis.python import asgi

    app = create_app(torch_predictor, ServeSettings(**LIMITS, api_key=API_KEY))
    # The app serves no /openapi.json (nothing to leak); the schema is built from its routes.
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    statuses: Counter = Counter()
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            has_input = operation.method.upper() == "POST"
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):

                @settings(
                    max_examples=100 if has_input else 5,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def fuzz(case):
                    response = case.call(headers={"X-API-Key": API_KEY})
                    statuses[(operation.method.upper(), operation.path, response.status_code)] += 1
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code}")

                fuzz()
    finally:
        asgi.shutdown_lifespans()
    total = sum(statuses.values())
    print(f"schemathesis: {total} requests; statuses {dict(sorted(statuses.items()))}")
    assert failures == []
    # 100 positive and 100 negative cases per POST route (/predict, /explain), 5 per GET route
    assert 100 <= total <= 450, total
    for route in ("/predict", "/explain"):
        assert any(code == 200 for (_, path, code) in statuses if path == route), route
        assert any(code in (413, 422) for (_, path, code) in statuses if path == route), route


# ---- raw bytes --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["text", "texts", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    # Escapes JSON allows but UTF-8 text cannot hold, and long runs of text.
    st.sampled_from(
        [
            b'{"text": "\\ud800"}',
            b'{"texts": ["fine", "\\udfff x"]}',
            b'{"text": "\\u0000"}',
            b'{"text": "' + b"a" * 400 + b'"}',
            b'{"texts": [' + b'"a",' * 20 + b'"a"]}',
            b'{"text": "x", "text": 1}',
            b"[" * 5000,
            b'{"text": ' + b"9" * 5000 + b"}",
        ]
    ),
)


def test_raw_bodies_never_cause_server_errors(torch_predictor):
    statuses: Counter = Counter()
    with TestClient(create_app(torch_predictor, ServeSettings(**LIMITS))) as client:

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @example(body=b'{"texts": ["a fine film", "awful"]}', content_type="application/json")
        @given(
            body=bodies,
            content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
        )
        def fuzz(body, content_type):
            headers = {"content-type": content_type} if content_type else {}
            response = client.post("/predict", content=body, headers=headers)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (body[:200], response.status_code, response.text[:200])
            assert response.headers["content-type"].startswith("application/json")
            if response.status_code != 200:
                assert "error" in response.json()

        fuzz()
        assert client.get("/health").json()["status"] == "ok"
    print(f"raw bodies: {sum(statuses.values())} requests; statuses {dict(sorted(statuses.items()))}")
    assert statuses[200] > 0 and statuses[422] > 0


def test_lone_surrogate_is_a_422_not_a_500(torch_predictor):
    with TestClient(create_app(torch_predictor), raise_server_exceptions=False) as client:
        for body in (b'{"text": "\\ud800"}', b'{"texts": ["fine", "a\\udfffb"]}'):
            response = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422 and "surrogate" in response.json()["detail"], response.text


class Poisoned:
    """Fails on one text, slowly enough that concurrent requests share its batch."""

    def __init__(self, inner):
        self.inner = inner
        self.label_names = inner.label_names
        self.calls: list[int] = []

    def predict_proba(self, texts, batch_size=None):
        self.calls.append(len(texts))
        time.sleep(0.05)
        if "poison" in texts:
            raise ValueError("cannot predict this text")
        return self.inner.predict_proba(texts, batch_size)


def test_one_failing_request_does_not_fail_its_batch(torch_predictor):
    poisoned = Poisoned(torch_predictor)
    texts = ["poison"] + [f"neighbour {i}" for i in range(7)]
    statuses: dict[str, int] = {}
    with TestClient(create_app(poisoned, ServeSettings(max_wait_ms=50)), raise_server_exceptions=False) as client:
        start = threading.Barrier(len(texts))

        def call(text):
            start.wait()
            statuses[text] = client.post("/predict", json={"text": text}).status_code

        threads = [threading.Thread(target=call, args=(t,)) for t in texts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert max(poisoned.calls) > 1, "the requests were never batched; the test proves nothing"
    assert statuses.pop("poison") == 500
    assert set(statuses.values()) == {200}, statuses


# ---- bounded load on a real uvicorn process ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _load(url: str, seconds: float, workers: int, seed: int) -> tuple[Counter, list[float]]:
    rng = random.Random(seed)
    words = "a gorgeous witty film dull lifeless mess great acting moving story boring far too long".split()
    statuses: Counter = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def body() -> dict | bytes:
        kind = rng.random()
        if kind < 0.65:
            return {"text": " ".join(rng.choices(words, k=rng.randint(1, 60)))}
        if kind < 0.9:
            return {"texts": [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(rng.randint(2, 8))]}
        return rng.choice(
            [
                b"{not json",
                b'{"texts": []}',
                b'{"text": "' + b"x" * 400 + b'"}',
                b'{"texts": [' + b'"a",' * 12 + b'"a"]}',
            ]
        )

    async def worker(client: httpx.AsyncClient):
        while time.monotonic() < deadline:
            payload = body()
            started = time.perf_counter()
            if isinstance(payload, bytes):
                response = await client.post("/predict", content=payload, headers={"content-type": "application/json"})
            else:
                response = await client.post("/predict", json=payload)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return statuses, latencies


@pytest.mark.slow  # about 35 s: start-up, 5 s warm-up, 20 s measured (SENTITUNE_LOAD_SECONDS)
def test_bounded_load_keeps_memory_flat_and_answers_everything(trained_run):
    import psutil

    seconds = float(os.environ.get("SENTITUNE_LOAD_SECONDS", "20"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sentitune",
            "serve",
            "--model",
            str(trained_run("head")),
            "--port",
            str(port),
            "--max-texts",
            "8",
            "--max-chars",
            "300",
            "--max-wait-ms",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "server exited early"
            assert time.monotonic() < deadline, "server did not come up in 90 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        process = psutil.Process(server.pid)
        warm_statuses, _ = asyncio.run(_load(url, 5, workers=16, seed=1))
        rss_warm = process.memory_info().rss / 2**20
        samples: list[float] = []
        sampling = threading.Event()

        def sample():
            while not sampling.wait(1.0):
                samples.append(process.memory_info().rss / 2**20)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses, latencies = asyncio.run(_load(url, seconds, workers=16, seed=2))
        sampling.set()
        sampler.join()
        rss_end = process.memory_info().rss / 2**20
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(30)
        log.seek(0)
        server_log = log.read().decode(errors="replace")
        log.close()
    latencies.sort()
    total = sum(statuses.values())
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(
        f"load: {total} requests in {seconds:.0f} s ({total / seconds:.0f}/s) from 16 concurrent clients; "
        f"statuses {dict(sorted(statuses.items()))}; latency p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms; "
        f"RSS after warm-up {rss_warm:.1f} MiB, peak {max(samples + [rss_end]):.1f} MiB, end {rss_end:.1f} MiB "
        f"(growth {rss_end - rss_warm:+.1f} MiB)"
    )
    assert not [code for code in list(statuses) + list(warm_statuses) if code >= 500], (statuses, server_log[-3000:])
    assert statuses[200] > 0 and total >= 100
    assert rss_end - rss_warm < 50, (rss_warm, samples, rss_end)
    assert "Traceback" not in server_log, server_log[-3000:]
    assert 'sentitune_requests_total{endpoint="/predict",status="200"}' in metrics
