"""The server under hostile clients (issue 19, section 5): slow-loris sockets, bodies that never
arrive, header floods, more connections than the cap, malformed framing, and requests so large they
would block everyone behind them.

Socket tests talk raw HTTP/1.1 to a real uvicorn server on loopback, configured by
`serve.uvicorn_options` exactly as `sentitune serve` configures it (one test runs the command itself).
Fair-scheduling tests drive `MicroBatcher` with a fake model whose calls are gated, so they check
order, not timing against a loaded CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import pytest

from sentitune.serve import MAX_HEADER_BYTES, MicroBatcher, ServeMetrics, ServeSettings, create_app, uvicorn_options


class FakeModel:
    """A predictor whose probabilities are a function of each text alone (so answers can be checked
    after any split or merge) and whose calls are recorded."""

    label_names = ["negative", "positive"]

    def __init__(self):
        self.calls: list[list[str]] = []

    @staticmethod
    def expected(texts) -> np.ndarray:
        p = np.array([(len(t) * 7919 % 97) / 97 for t in texts], dtype=np.float64)
        return np.stack([1 - p, p], axis=1)

    def predict_proba(self, texts, batch_size=None):
        self.calls.append(list(texts))
        return self.expected(texts)


# ---- a real uvicorn server on loopback ----------------------------------------------------------


class ThreadServer:
    """uvicorn in a thread of this process, with `uvicorn_options(app)` as `sentitune serve` uses."""

    def __init__(self, settings: ServeSettings, model=None, base=None):
        import uvicorn

        self.model = model or FakeModel()
        self.app = create_app(self.model, settings)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="error", **uvicorn_options(self.app, base)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def healthy(self) -> bool:
        response = httpx.get(f"{self.url}/health", timeout=10)
        predicted = httpx.post(f"{self.url}/predict", json={"text": "still fine"}, timeout=10)
        return response.status_code == 200 and predicted.json()["label"] in FakeModel.label_names

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server():
    running = ThreadServer(
        ServeSettings(header_timeout_s=HEADER_TIMEOUT, body_timeout_s=BODY_TIMEOUT, max_body_bytes=10_000)
    )
    yield running
    running.stop()


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"connection still open after {limit} s; got {data[:200]!r}") from None
    return data, time.monotonic() - started


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def json_of(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> threading.Thread:
    """Sends `data` a byte at a time, one byte every `every` seconds, until done, stopped or closed."""

    def run():
        for byte in data:
            if stop.wait(every):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# Slow-loris variants: what a client sends, then holds; (bytes, trickled?, expected status: 0 = closed
# without an answer).
SLOW_HEADERS = {
    "connect and send nothing": (b"", False, 0),
    "half a request line": (b"POST /pre", False, 408),
    "request line, no headers": (b"POST /predict HTTP/1.1\r\n", False, 408),
    "headers without the blank line": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n", False, 408),
    "request line a byte every 0.2 s": (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 40, True, 408),
    "header value a byte every 0.2 s": (b"GET /health HTTP/1.1\r\nHost: " + b"x" * 60, True, 408),
}


@pytest.mark.parametrize("name", list(SLOW_HEADERS))
def test_slow_loris_connection_is_closed_after_the_header_timeout(server, name):
    payload, trickled, expected = SLOW_HEADERS[name]
    stop = threading.Event()
    with server.connect() as sock:
        if trickled:
            # A byte every 0.2 s would reset an idle timer for ever; the deadline counts from the start.
            trickle(sock, payload, 0.2, stop)
        else:
            sock.sendall(payload)
        reply, took = read_until_closed(sock, limit=HEADER_TIMEOUT + 5)
        stop.set()
    assert HEADER_TIMEOUT * 0.8 <= took, f"closed after {took:.2f} s, before the timeout"
    assert status_of(reply) == expected, reply[:200]
    if expected:
        assert json_of(reply)["error"] == "header_timeout"
        assert b"connection: close" in reply.lower()
    assert server.healthy()


def test_many_slow_loris_sockets_are_all_dropped_and_the_server_answers(server):
    socks = [server.connect() for _ in range(40)]
    for i, sock in enumerate(socks):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")
    # While they are held, a real client is still answered.
    assert server.healthy()
    time.sleep(HEADER_TIMEOUT + 0.5)
    closed = 0
    for sock in socks:
        sock.settimeout(3)
        try:
            while sock.recv(65536):
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        except socket.timeout:
            pass
        sock.close()
    assert closed == len(socks)
    assert 'sentitune_timeouts_total{kind="header"}' in server.metrics()


def test_an_idle_keep_alive_connection_with_a_partial_second_request_is_closed(server):
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert status_of(first) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # the second request stops half-way
        reply, took = read_until_closed(sock, limit=HEADER_TIMEOUT + 5)
    assert status_of(reply) == 408 and took >= HEADER_TIMEOUT * 0.5


# Bodies that never fully arrive: (headers, body sent, trickled?).
SHORT_BODIES = {
    "declares 100 bytes, sends 7": (b"Content-Length: 100\r\nContent-Type: application/json\r\n", b'{"text"', False),
    "declares 100 bytes, sends none": (b"Content-Length: 100\r\n", b"", False),
    "chunked, a chunk cut short": (b"Transfer-Encoding: chunked\r\n", b'20\r\n{"text": "a', False),
    "chunked, no last chunk": (b"Transfer-Encoding: chunked\r\n", b'6\r\n{"text\r\n', False),
    "declared body a byte every 0.2 s": (
        b"Content-Length: 60\r\n",
        b'{"text": "a fine film", "pad": "' + b"x" * 27,
        True,
    ),
}


@pytest.mark.parametrize("name", list(SHORT_BODIES))
def test_a_body_that_never_arrives_gets_408_and_the_connection_closed(server, name):
    headers, body, trickled = SHORT_BODIES[name]
    stop = threading.Event()
    with server.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        if trickled:
            trickle(sock, body, 0.2, stop)
        else:
            sock.sendall(body)
        reply, took = read_until_closed(sock, limit=BODY_TIMEOUT + 5)
        stop.set()
    assert status_of(reply) == 408, reply[:300]
    assert json_of(reply)["error"] == "body_timeout"
    assert b"connection: close" in reply.lower()
    assert BODY_TIMEOUT * 0.8 <= took
    assert server.healthy()
    assert 'sentitune_timeouts_total{kind="body"}' in server.metrics()


@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Flood: " + b"a" * 8000 + b"\r\n", 431),  # repeated
        (b"GET /" + b"a" * (MAX_HEADER_BYTES + 10) + b" HTTP/1.1\r\n", 431),
    ],
    ids=["header flood", "request line over the limit"],
)
def test_a_header_flood_is_cut_off_at_the_limit(server, request_head, status):
    with server.connect() as sock:
        sent = 0
        try:
            while sent < 20 * MAX_HEADER_BYTES:
                sock.sendall(request_head)
                sent += len(request_head)
        except OSError:
            pass  # the server closed while we were still sending
        reply, took = read_until_closed(sock, limit=5)
    # httptools alone gathered 160 MB of headers without a word; here the connection ends at the limit.
    assert status_of(reply) in (status, 400) or reply == b"", reply[:200]
    assert server.healthy()


def post(body: bytes, headers: bytes = b"") -> bytes:
    return b"POST /predict HTTP/1.1\r\nHost: x\r\n" + headers + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


# Malformed framing and odd requests: each gets one answer, never a 5xx, and the server stays up.
RAW_REQUESTS = {
    "HEAD /health": (b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", {200}),
    "OPTIONS /predict": (b"OPTIONS /predict HTTP/1.1\r\nHost: x\r\n\r\n", {405}),
    "TRACE /": (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", {405}),
    "unknown method": (b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n", {400, 405}),
    "HTTP/1.0 without Host": (b"GET /health HTTP/1.0\r\n\r\n", {200}),
    "HTTP/2 preface on plain HTTP": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 404, 405}),
    "negative Content-Length": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", {400, 413}),
    "Content-Length not a number": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", {400, 413}),
    "two different Content-Lengths": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n{}{}",
        {400, 413, 422},
    ),
    "Content-Length and chunked together (smuggling)": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        {400, 422},
    ),
    "chunk size not hex": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        {400},
    ),
    "Expect 100-continue with a body over the limit": (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
        {413},
    ),
    "NUL in a header value": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", {200, 400}),
    "path traversal": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
    "percent-encoded NUL in the path": (b"GET /health%00 HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
    "WebSocket upgrade": (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        {200, 400, 404},
    ),
    "JSON repeating a key": (post(b'{"text": "good", "text": "bad"}'), {422}),
    "JSON behind a UTF-8 BOM": (post(b'\xef\xbb\xbf{"text": "a film"}'), {200}),
    "JSON in UTF-16": (post('{"text": "a film"}'.encode("utf-16")), {200}),
    "gzip Content-Encoding the server does not decode": (
        post(b"\x1f\x8b\x08\x00", b"Content-Encoding: gzip\r\n"),
        {415},
    ),
    "a JSON string, not an object": (post(b'"a fine film"'), {422}),
    "JSON numbers past any float": (post(b'{"text": 1e999999}'), {422}),
    "pipelined requests": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{"text": "fine"}',
        {200},
    ),
}


@pytest.mark.parametrize("name", list(RAW_REQUESTS))
def test_malformed_or_odd_requests_get_a_clear_answer_and_no_5xx(server, name):
    raw, allowed = RAW_REQUESTS[name]
    with server.connect() as sock:
        sock.sendall(raw)
        reply, _ = read_until_closed(sock, limit=HEADER_TIMEOUT + BODY_TIMEOUT + 8)
    statuses = [int(part[:3]) for part in reply.split(b"HTTP/1.1 ")[1:] if part[:3].isdigit()]
    assert statuses, reply[:300]
    assert statuses[0] in allowed, (statuses, reply[:300])
    assert all(status < 500 or status in (503,) for status in statuses), reply[:300]
    assert server.healthy()


def test_repeated_json_key_is_refused_not_silently_the_last_one(server):
    body = b'{"text": "a gorgeous film", "text": "a dull mess"}'
    response = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_request", "detail": "the JSON body names 'text' twice"}


# ---- the connection cap ---------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_503_and_the_server_recovers():
    cap = 3
    capped = ThreadServer(ServeSettings(max_connections=cap, header_timeout_s=10, body_timeout_s=10))
    try:
        held = [capped.connect() for _ in range(cap - 1)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        time.sleep(0.2)
        # The cap-th connection is still served: --max-connections N means N, not N - 1.
        with capped.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            inside, _ = read_until_closed(sock, limit=5)
        held.append(capped.connect())
        time.sleep(0.2)
        with capped.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            beyond, _ = read_until_closed(sock, limit=5)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        after = httpx.get(f"{capped.url}/health", timeout=10)
    finally:
        capped.stop()
    assert status_of(inside) == 200, inside[:200]
    assert status_of(beyond) == 503, beyond[:200]
    assert b"connection: close" in beyond.lower()
    assert after.status_code == 200


def test_the_h11_fallback_applies_the_same_limits():
    """Where httptools is not installed uvicorn parses with h11; the limits sit on either."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    h11 = ThreadServer(ServeSettings(header_timeout_s=1, body_timeout_s=1, max_connections=2), base=H11Protocol)
    try:
        replies = []
        for raw in (b"GET /hea", b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"te'):
            with h11.connect() as sock:
                sock.sendall(raw)
                replies.append(read_until_closed(sock, limit=6))
        held = [h11.connect() for _ in range(2)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.2)
        with h11.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            beyond, _ = read_until_closed(sock, limit=5)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        healthy = h11.healthy()
    finally:
        h11.stop()
    (slow, slow_took), (short, short_took) = replies
    assert status_of(slow) == 408 and json_of(slow)["error"] == "header_timeout" and slow_took < 5
    assert status_of(short) == 408 and json_of(short)["error"] == "body_timeout" and short_took < 5
    assert status_of(beyond) == 503
    assert healthy


# ---- fair scheduling --------------------------------------------------------------------------


class GatedModel(FakeModel):
    """Model calls wait until the test opens the gate: the test decides what is queued meanwhile."""

    def __init__(self):
        super().__init__()
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()

    def predict_proba(self, texts, batch_size=None):
        self.calls.append(list(texts))
        self.started.release()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return self.expected(texts)


async def _in_thread(function, *args):
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def test_a_small_request_after_big_ones_finishes_first():
    """Four maximal requests, then a one-word one: it joins the next model call instead of waiting
    for all of them (before: it waited for every text ahead of it)."""

    async def scenario():
        model = GatedModel()
        batcher = MicroBatcher(model.predict_proba, ServeSettings(max_batch_size=8, max_wait_ms=0), ServeMetrics())
        await batcher.start()
        finished: list[str] = []
        big_texts = {f"big{i}": [f"big {i} text {j} " * (j % 5 + 1) for j in range(32)] for i in range(4)}

        async def run(name, texts):
            result = await batcher.submit(texts)
            finished.append(name)
            return result

        tasks = {name: asyncio.ensure_future(run(name, texts)) for name, texts in big_texts.items()}
        assert await _in_thread(model.started.acquire, True, 30)  # the first model call is running
        tasks["small"] = asyncio.ensure_future(run("small", ["fun"]))
        await asyncio.sleep(0)  # the small request is queued while the big call runs
        calls_before_small = len(model.calls)
        model.gate.set()
        await asyncio.gather(*tasks.values())
        await batcher.stop()
        return model, finished, calls_before_small, {name: task.result() for name, task in tasks.items()}, big_texts

    model, finished, calls_before, results, big_texts = asyncio.run(scenario())
    assert finished[0] == "small", finished
    small_call = next(i for i, call in enumerate(model.calls) if "fun" in call)
    assert small_call == calls_before, "the small request waited for more than the call in progress"
    assert all(len(call) <= 8 for call in model.calls)
    # Every big request was split, and each answer is its own texts', in input order.
    for name, texts in big_texts.items():
        np.testing.assert_allclose(results[name], FakeModel.expected(texts))
        assert sum(1 for call in model.calls if texts[0] in call or texts[-1] in call) >= 1
    np.testing.assert_allclose(results["small"], FakeModel.expected(["fun"]))
    assert len(model.calls) >= 4 * 32 // 8


def test_big_requests_take_turns_one_slice_per_call():
    async def scenario():
        model = FakeModel()
        batcher = MicroBatcher(model.predict_proba, ServeSettings(max_batch_size=4, max_wait_ms=0), ServeMetrics())
        await batcher.start()
        jobs = {name: [f"{name}-{j}" for j in range(12)] for name in "abc"}
        results = await asyncio.gather(*(batcher.submit(texts) for texts in jobs.values()))
        await batcher.stop()
        return model, jobs, results

    model, jobs, results = asyncio.run(scenario())
    owners = [sorted({text.split("-")[0] for text in call}) for call in model.calls]
    # Round robin, one request per call: a, b and c in turn, not a three times.
    assert owners[:6] == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]], owners
    assert all(len(call) <= 4 for call in model.calls)
    for name, texts in jobs.items():
        np.testing.assert_allclose(results["abc".index(name)], FakeModel.expected(texts))


def test_a_stream_of_small_requests_cannot_starve_a_big_one():
    class Busy(FakeModel):
        """Four new one-text requests arrive during every model call: alone they would fill every call."""

        def predict_proba(self, texts, batch_size=None):
            if len(self.calls) < 40:
                self.loop.call_soon_threadsafe(self.arrive, len(self.calls))
            return super().predict_proba(texts, batch_size)

    async def scenario():
        model = Busy()
        model.loop = asyncio.get_running_loop()
        batcher = MicroBatcher(model.predict_proba, ServeSettings(max_batch_size=4, max_wait_ms=0), ServeMetrics())
        smalls = []
        model.arrive = lambda n: smalls.extend(
            asyncio.ensure_future(batcher.submit([f"small {n} {k}"])) for k in range(4)
        )
        await batcher.start()
        await batcher.submit([f"big {j}" for j in range(16)])
        while len(model.calls) < 40 or not all(small.done() for small in smalls):
            await asyncio.sleep(0.01)
        await batcher.stop()
        return model

    model = asyncio.run(scenario())
    big_calls = [n for n, call in enumerate(model.calls) if any(t.startswith("big") for t in call)]
    assert sum(sum(t.startswith("big") for t in model.calls[n]) for n in big_calls) == 16
    # New requests always come first and alone fill every call, yet the big request, passed over for
    # a whole round each time, got all four of its slices while they kept coming (calls 0-39).
    assert len(big_calls) == 4 and big_calls[-1] < 39, big_calls
    # A round grows with the backlog: each wait is at most the calls then needed to serve every waiting
    # request once (the backlog of small requests grows by the 4 texts the big slice displaced).
    assert all(gap <= 3 + n for n, gap in enumerate(np.diff(big_calls), start=1)), big_calls


def test_a_request_whose_client_left_is_not_computed_further():
    async def scenario():
        model = GatedModel()
        batcher = MicroBatcher(model.predict_proba, ServeSettings(max_batch_size=2, max_wait_ms=0), ServeMetrics())
        await batcher.start()
        request = asyncio.ensure_future(batcher.submit([f"text {j}" for j in range(20)]))
        assert await _in_thread(model.started.acquire, True, 30)
        request.cancel()  # as the request timeout or a closed connection does
        model.gate.set()
        await asyncio.sleep(0.05)
        pending = batcher.pending_texts
        await batcher.stop()
        return model, pending

    model, pending = asyncio.run(scenario())
    assert len(model.calls) == 1, "slices of a cancelled request were still computed"
    assert pending == 0


def test_a_failing_slice_fails_its_request_only():
    class Failing(FakeModel):
        def predict_proba(self, texts, batch_size=None):
            self.calls.append(list(texts))
            if any("poison" in t for t in texts):
                raise ValueError("cannot predict this text")
            return self.expected(texts)

    async def scenario():
        model = Failing()
        batcher = MicroBatcher(model.predict_proba, ServeSettings(max_batch_size=4, max_wait_ms=20), ServeMetrics())
        await batcher.start()
        bad = [f"ok {j}" for j in range(6)] + ["poison"] + [f"ok {j}" for j in range(6, 10)]
        outcomes = await asyncio.gather(
            batcher.submit(bad), batcher.submit(["fine"]), batcher.submit(["also fine", "x"]), return_exceptions=True
        )
        left = batcher.pending_texts
        await batcher.stop()
        return outcomes, left

    (failed, fine, also), left = asyncio.run(scenario())
    assert isinstance(failed, ValueError)
    np.testing.assert_allclose(fine, FakeModel.expected(["fine"]))
    np.testing.assert_allclose(also, FakeModel.expected(["also fine", "x"]))
    assert left == 0


def test_a_slow_model_call_does_not_block_small_requests_end_to_end():
    """Through HTTP: while a maximal request is being computed slice by slice, a one-word request sent
    after it is answered before it."""

    class Slow(FakeModel):
        def predict_proba(self, texts, batch_size=None):
            self.calls.append(list(texts))
            time.sleep(0.05 * len(texts) / 8)  # cost grows with the texts in the call
            return self.expected(texts)

    slow = ThreadServer(ServeSettings(max_batch_size=8, max_wait_ms=0), model=Slow())
    done: dict[str, float] = {}
    try:

        def post(name, texts):
            response = httpx.post(f"{slow.url}/predict", json={"texts": texts}, timeout=60)
            assert response.status_code == 200
            done[name] = time.monotonic()

        bigs = [
            threading.Thread(target=post, args=(f"big{i}", [f"long text {i} {j}" * 20 for j in range(64)]))
            for i in range(4)
        ]
        for thread in bigs:
            thread.start()
        deadline = time.monotonic() + 30
        while len(slow.model.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        post("small", ["fun"])
        for thread in bigs:
            thread.join(60)
    finally:
        slow.stop()
    assert len(done) == 5
    assert all(done["small"] < done[f"big{i}"] for i in range(4)), done


# ---- the command itself --------------------------------------------------------------------------


def test_sentitune_serve_applies_the_timeouts_and_the_cap(trained_run):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "sentitune", "serve", "--model", str(trained_run("tfidf")), "--port", str(port)]
    argv += ["--header-timeout", "2", "--body-timeout", "2", "--max-connections", "2"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None and time.monotonic() < deadline, "server did not come up"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            loris = socket.create_connection(("127.0.0.1", port))
            loris.sendall(b"GET /health HTTP/1.1\r\n")
            short = socket.create_connection(("127.0.0.1", port))
            short.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"text"')
            time.sleep(0.2)
            # Two connections are open: a third is beyond --max-connections 2.
            with socket.create_connection(("127.0.0.1", port)) as third:
                third.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                beyond, _ = read_until_closed(third, limit=5)
            slow_reply, slow_took = read_until_closed(loris, limit=8)
            short_reply, short_took = read_until_closed(short, limit=8)
            loris.close()
            short.close()
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        finally:
            process.terminate()
            process.wait(30)
            log.seek(0)
            output = log.read().decode(errors="replace")
    assert status_of(beyond) == 503, (beyond[:200], output)
    assert status_of(slow_reply) == 408 and slow_took < 7
    assert status_of(short_reply) == 408 and json_of(short_reply)["error"] == "body_timeout" and short_took < 7
    assert health.status_code == 200
    assert "Traceback" not in output, output
