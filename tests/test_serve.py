"""Server: in-process through the app factory, one real uvicorn process on loopback, and the web page
driven in headless Chromium over the DevTools protocol."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from sentitune.inference import Predictor
from sentitune.serve import MicroBatcher, Overloaded, ServeMetrics, ServeSettings, create_app


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def tfidf_predictor(trained_run):
    return Predictor.load(trained_run("tfidf"))


@pytest.fixture(scope="module")
def head_run(trained_run):
    return trained_run("head")


class SlowRecorder:
    """Wraps a predictor: records every batch and takes a little time, so concurrent requests queue up."""

    def __init__(self, inner, delay_s=0.05):
        self.inner = inner
        self.label_names = inner.label_names
        self.delay_s = delay_s
        self.batches: list[list[str]] = []

    def predict_proba(self, texts, batch_size=None):
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        return self.inner.predict_proba(texts, batch_size)


# ---- in-process -------------------------------------------------------------------------------


def test_single_and_list_predictions_match_the_predictor(tfidf_predictor):
    # (An empty text is refused with 422: test_texts_without_visible_characters_get_a_clear_422_not_a_label.)
    texts = ["a gorgeous , witty film", "a dull , lifeless mess", "so-so"]
    expected = tfidf_predictor.predict_proba(texts)
    with TestClient(create_app(tfidf_predictor)) as client:
        one = client.post("/predict", json={"text": texts[0]})
        many = client.post("/predict", json={"texts": texts})
    assert one.status_code == 200 and many.status_code == 200
    assert one.json()["probabilities"]["positive"] == pytest.approx(expected[0, 1])
    rows = many.json()["predictions"]
    assert [r["label"] for r in rows] == [tfidf_predictor.label_names[i] for i in expected.argmax(1)]
    assert [r["probabilities"]["negative"] for r in rows] == pytest.approx(expected[:, 0].tolist())


def test_curl_style_form_labelled_json_is_read_as_json(tfidf_predictor):
    # `curl -d '{"texts": [...]}'` sends application/x-www-form-urlencoded; the README's example must work.
    body = '{"texts": ["great fun", "dull"]}'
    with TestClient(create_app(tfidf_predictor)) as client:
        form = client.post("/predict", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
        bare = client.post("/predict", content=body)
        other = client.post("/predict", content=body, headers={"content-type": "text/plain"})
    assert form.status_code == 200 and len(form.json()["predictions"]) == 2
    assert bare.status_code == 200
    # Another declared type is refused as such (415), not as if its JSON were wrong (422).
    assert other.status_code == 415 and other.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({}, 422, "invalid_request"),
        ({"text": "a", "texts": ["b"]}, 422, "invalid_request"),
        ({"text": 3}, 422, "invalid_request"),
        ({"texts": "not a list"}, 422, "invalid_request"),
        ({"texts": []}, 422, "invalid_request"),
        ({"text": "a", "path": "/etc/passwd"}, 422, "invalid_request"),
        ([1, 2], 422, "invalid_request"),
        ({"texts": ["a"] * 4}, 413, "too_many_texts"),
        ({"text": "x" * 41}, 413, "text_too_long"),
    ],
)
def test_invalid_and_oversized_requests_get_json_errors(tfidf_predictor, body, status, code):
    with TestClient(create_app(tfidf_predictor, ServeSettings(max_texts=3, max_chars=40))) as client:
        response = client.post("/predict", json=body)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert "passwd" not in response.text.replace("path", "")  # inputs are not echoed back


def test_body_size_limit_by_header_and_while_streaming(tfidf_predictor):
    settings = ServeSettings(max_body_bytes=200)
    big = json.dumps({"text": "a" * 300}).encode()

    def chunks():
        yield big[:100]
        yield big[100:]

    with TestClient(create_app(tfidf_predictor, settings)) as client:
        declared = client.post("/predict", content=big, headers={"content-type": "application/json"})
        streamed = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        small = client.post(
            "/predict", content=iter([b'{"text": ', b'"fine"}']), headers={"content-type": "application/json"}
        )
        not_json = client.post("/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["error"] == "body_too_large"
    assert streamed.status_code == 413
    assert small.status_code == 200
    assert not_json.status_code == 422 and not_json.json()["error"] == "invalid_request"


def test_api_key_guards_predict_and_metrics_only(tfidf_predictor):
    with TestClient(create_app(tfidf_predictor, ServeSettings(api_key="s3cret"))) as client:
        assert client.post("/predict", json={"text": "hi"}).status_code == 401
        wrong = client.post("/predict", json={"text": "hi"}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        assert client.post("/predict", json={"text": "hi"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200
        assert 'id="key"' in client.get("/").text  # the page asks for the key


def test_concurrent_requests_are_micro_batched(tfidf_predictor):
    slow = SlowRecorder(tfidf_predictor)
    app = create_app(slow, ServeSettings(max_batch_size=64, max_wait_ms=30))
    texts = [f"request {i} {'great' if i % 2 else 'awful'}" for i in range(16)]
    expected = tfidf_predictor.predict_proba(texts)
    answers: dict[int, dict] = {}
    with TestClient(app) as client:
        start = threading.Barrier(len(texts))

        def call(i):
            start.wait()
            answers[i] = client.post("/predict", json={"text": texts[i]}).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = client.get("/metrics").text
    assert max(len(batch) for batch in slow.batches) > 1, slow.batches
    assert len(slow.batches) < len(texts)
    # Each request got its own text's answer back, not a neighbour's from the same batch.
    for i in range(len(texts)):
        assert answers[i]["probabilities"]["positive"] == pytest.approx(expected[i, 1])
    assert 'sentitune_requests_total{endpoint="/predict",status="200"} 16.0' in metrics
    assert "sentitune_batch_size_bucket" in metrics and "sentitune_request_latency_seconds_bucket" in metrics


def test_batches_respect_max_batch_size(tfidf_predictor):
    slow = SlowRecorder(tfidf_predictor, delay_s=0.02)
    with TestClient(create_app(slow, ServeSettings(max_batch_size=4, max_wait_ms=20))) as client:
        threads = [
            threading.Thread(target=client.post, args=("/predict",), kwargs={"json": {"texts": ["a", "b"]}})
            for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(len(batch) for batch in slow.batches) == 12
    assert max(len(batch) for batch in slow.batches) <= 4


def test_batcher_drains_on_stop_and_refuses_overload(tfidf_predictor):
    async def scenario():
        slow = SlowRecorder(tfidf_predictor, delay_s=0.01)
        batcher = MicroBatcher(slow.predict_proba, ServeSettings(max_queue_texts=3, max_wait_ms=1), ServeMetrics())
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([f"text {i}"])) for i in range(3)]
        await asyncio.sleep(0)  # let the three enqueue
        with pytest.raises(Overloaded):
            await batcher.submit(["one too many"])
        await batcher.stop()
        results = [task.result() for task in pending]
        with pytest.raises(Overloaded):
            await batcher.submit(["after stop"])
        return results

    results = asyncio.run(scenario())
    assert all(r.shape == (1, 2) for r in results)


def test_health_metrics_and_page(tfidf_predictor):
    with TestClient(create_app(tfidf_predictor)) as client:
        health = client.get("/health").json()
        page = client.get("/")
        client.post("/predict", json={"text": "x"})
        metrics = client.get("/metrics")
    assert health["status"] == "ok" and health["model"]["backend"] == "tfidf"
    assert "source" not in health["model"]
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'id="text"' in page.text and 'id="predict"' in page.text and "<script src" not in page.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "sentitune_texts_total 1.0" in metrics.text


def test_apps_do_not_share_state(tfidf_predictor):
    first, second = create_app(tfidf_predictor), create_app(tfidf_predictor)
    with TestClient(first) as client:
        client.post("/predict", json={"text": "x"})
    with TestClient(second) as client:
        assert "sentitune_texts_total 0.0" in client.get("/metrics").text


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeSettings(max_batch_size=0)


# ---- a real uvicorn process ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, model: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sentitune",
                "serve",
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--max-wait-ms",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"server did not come up: {self.log()}")

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.stderr.close()


@pytest.fixture(scope="module")
def live_server(head_run):
    """A `sentitune serve` process; restarted if a test has stopped it."""
    servers = []

    def get() -> LiveServer:
        if not servers or servers[-1].process.poll() is not None:
            servers.append(LiveServer(head_run))
        return servers[-1]

    yield get
    for server in servers:
        server.close()


def test_page_in_headless_chromium_shows_the_prediction(live_server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    server = live_server()
    expected = httpx.post(f"{server.url}/predict", json={"text": "a gorgeous , witty film"}).json()
    with Chromium(tmp_path / "profile") as browser:
        session = browser.open(f"{server.url}/")
        browser.wait_for(session, "document.readyState === 'complete' && !!document.getElementById('text')")
        browser.call("Runtime.evaluate", {"expression": "document.getElementById('text').focus()"}, session)
        browser.call("Input.insertText", {"text": "a gorgeous , witty film"}, session)
        x, y = browser.center_of(session, "#predict")
        for kind in ("mousePressed", "mouseReleased"):
            browser.call(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}, session
            )
        shown = browser.wait_for(
            session,
            "(document.getElementById('result').dataset.label || '') && document.getElementById('result').textContent",
        )
        screenshot = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    assert shown.startswith(expected["label"] + " (")
    assert f"{100 * expected['score']:.1f}%" in shown
    assert len(screenshot) > 1000


def test_real_uvicorn_process_serves_and_exits_cleanly_on_sigterm(live_server):
    server = live_server()
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"]["backend"] == "torch"
    response = httpx.post(f"{server.url}/predict", json={"texts": ["great fun", "a dull mess"]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    # Requests in flight when SIGTERM arrives still get their answers.
    with httpx.Client(base_url=server.url) as client:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(client.post("/predict", json={"text": "x " * 20}).status_code)
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert server.process.wait(30) == 0, server.log()
    assert all(status == 200 for status in results), (results, server.log())
    assert "Finished server process" in server.log()


# ---- a minimal DevTools-protocol client over --remote-debugging-pipe ---------------------------


class Chromium:
    """Headless Chromium driven over its DevTools pipe (fd 3 in, fd 4 out): no port, no extra package."""

    FLAGS = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-pipe",
    ]

    def __init__(self, profile: Path):
        self.profile = profile
        self.next_id = 0
        self.buffer = b""

    def __enter__(self):
        self.profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # bash moves the pipe ends onto the descriptors Chromium expects (3 = commands, 4 = replies).
        command = " ".join(
            [shutil.which("chromium") or CHROMIUM, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        )
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f"exec {command} 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-",
            ],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self.to_browser)
        os.close(self.from_browser)

    def call(self, method, params=None, session=None, timeout=30.0):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline):
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_browser], [], [], remaining)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url) -> str:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(self, session, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result.get("result", {}).get("value")

    def wait_for(self, session, expression, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(session, expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied: {expression}")

    def center_of(self, session, selector):
        box = self.evaluate(session, f"JSON.stringify(document.querySelector('{selector}').getBoundingClientRect())")
        box = json.loads(box)
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


@pytest.mark.parametrize("text", ["", "   ", "\x00\x00", "\u200b\u200b", "\u00a0\ufeff", "\t\n"])
def test_texts_without_visible_characters_get_a_clear_422_not_a_label(tfidf_predictor, text):
    with TestClient(create_app(tfidf_predictor)) as client:
        response = client.post("/predict", json={"texts": ["fine film", text]})
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("empty_text", "invalid_request")
    assert "text 1" in json.dumps(response.json()) or response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_refused_rather_than_turning_authentication_off(trained_run, key, monkeypatch, capsys):
    from sentitune.cli import main

    with pytest.raises(ValueError, match="api_key is empty"):
        ServeSettings(api_key=key)
    monkeypatch.setenv("SENTITUNE_API_KEY", key)
    assert main(["serve", "--model", str(trained_run("tfidf")), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "api_key is empty" in err[0]
