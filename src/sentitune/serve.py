"""HTTP serving: `create_app(predictor, settings)` -> a FastAPI app that micro-batches concurrent requests.

    POST /predict   {"text": "..."} -> {"label", "score", "probabilities"}
                    {"texts": ["...", ...]} -> {"predictions": [...]}
    POST /explain   the same bodies (at most EXPLAIN_MAX_TEXTS texts) -> each prediction plus per-word
                    attributions toward its label (sentitune.explain), computed one request at a time
    GET  /health    liveness + what model is loaded
    GET  /metrics   Prometheus text: requests, latency histogram, batch sizes, queue depth
    GET  /          a small self-contained page to try a sentence: probabilities as bars, words highlighted

Requests wait for one worker, which builds each model call fairly from what is waiting (up to
`max_batch_size` texts, at most one slice of each request, waiting at most `max_wait_ms` for more; see
MicroBatcher) and runs the predictor in a thread, so the event loop keeps accepting requests while the
model works, a burst of single-sentence requests costs one batched model call instead of many, and a
large request cannot hold up a small one. Clients are bounded too: headers and bodies have deadlines,
connections a cap (`uvicorn_options`). Nothing here is global: every app owns its queue, worker and
metrics. Requests carry texts only; no file path is ever taken from a request.

Example:
    >>> from sentitune.inference import Predictor
    >>> app = create_app(Predictor.load("exported/sst2-lora-int8"), ServeSettings(max_wait_ms=2))  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_options(app))
"""

import asyncio
import json
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from sentitune.config import ConfigError, ServeSettings
from sentitune.data import is_blank, is_unicode
from sentitune.errors import quote
from sentitune.inference import prediction_row
from sentitune.results import RunFolderError


LOOPBACK = ("127.0.0.1", "::1", "localhost")


# ---- metrics ----------------------------------------------------------------------------------


class ServeMetrics:
    """Prometheus metrics in the app's own registry (several apps in one process do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sentitune_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sentitune_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "sentitune_batch_size",
            "Texts per model call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.batch_requests = Histogram(
            "sentitune_batch_requests",
            "Requests merged into one model call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.model_seconds = Histogram(
            "sentitune_model_seconds",
            "Time of one model call",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.texts = Counter("sentitune_texts", "Texts predicted", registry=self.registry)
        self.queue_texts = Gauge("sentitune_queue_texts", "Texts waiting for the model", registry=self.registry)
        self.timeouts = Counter(
            "sentitune_timeouts",
            "Connections or requests cut off: slow headers (header), slow body (body), oversized headers "
            "(header_size) or request (request_size)",
            ["kind"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---- micro-batching ---------------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity: the fields hold numpy arrays
class _Job:
    """One request: its texts in length order, how far the model has got, and the answer so far."""

    texts: list[str]
    future: asyncio.Future
    seq: int
    order: np.ndarray
    """Indices of `texts`, shortest first: a slice of neighbours pads little (as `plan_batches` cuts)."""
    result: np.ndarray | None = None
    done: int = 0
    """Texts (of `order`) predicted so far."""
    slices: int = 0
    """Model calls this job has had a slice in."""
    skipped: int = 0
    """Model calls made since this job last had a slice (or arrived) that gave it none."""

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.done


class Overloaded(RuntimeError):
    """The queue holds `max_queue_texts` already."""


class MicroBatcher:
    """Fair micro-batching: one worker task, one predictor thread, requests split and interleaved.

    Each model call takes at most `max_batch_size` texts and at most one slice of each waiting
    request: requests that have had the fewest slices go first, the smallest first among equals; the
    first takes a slice of up to a whole call, and others join it only when all they have left fits
    in the room left. So a one-text request that arrives behind four 256-text requests is answered
    by the very next call, of its own size, instead of waiting for all of them (head-of-line
    blocking), while the large ones take turns. A request passed over for a whole round (the calls
    it would take to give every waiting request one slice) goes first, so a steady stream of small
    requests cannot starve a large one. A call made only of requests that have not started waits up
    to `max_wait_ms` for more to join it.

    Example:
        >>> batcher = MicroBatcher(predictor.predict_proba, ServeSettings(), ServeMetrics())  # doctest: +SKIP
        >>> await batcher.start(); probabilities = await batcher.submit(["great"])  # doctest: +SKIP
    """

    def __init__(self, predict_proba, settings: ServeSettings, metrics: ServeMetrics):
        self.predict_proba = predict_proba
        self.settings = settings
        self.metrics = metrics
        self.jobs: list[_Job] = []
        self.pending_texts = 0
        self.task: asyncio.Task | None = None
        self.wakeup: asyncio.Event | None = None
        # One thread: the predictor (and ONNX Runtime's own thread pool) gets the cores to itself.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentitune-predict")
        self.stopping = False
        self._seq = 0

    async def start(self) -> None:
        self.wakeup = asyncio.Event()
        self.task = asyncio.create_task(self._work(), name="sentitune-batcher")

    async def stop(self) -> None:
        """Finishes every queued request, then stops the worker and its thread."""
        self.stopping = True
        if self.task is not None:
            self.wakeup.set()
            await self.task
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        if self.task is None or self.stopping:
            raise Overloaded("server is shutting down")
        if self.pending_texts + len(texts) > self.settings.max_queue_texts:
            raise Overloaded(
                f"{self.pending_texts} texts already queued (max_queue_texts {self.settings.max_queue_texts})"
            )
        order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
        self._seq += 1
        job = _Job(list(texts), asyncio.get_running_loop().create_future(), self._seq, order)
        self.jobs.append(job)
        self._count(len(texts))
        self.wakeup.set()
        return await job.future

    def _count(self, texts: int) -> None:
        self.pending_texts += texts
        self.metrics.queue_texts.set(self.pending_texts)

    def _drop(self, job: _Job) -> None:
        self.jobs.remove(job)
        self._count(-job.remaining)

    def _plan(self) -> list[tuple[_Job, np.ndarray]]:
        """The next model call: (job, indices into job.texts) pairs, at most one per job."""
        for job in [job for job in self.jobs if job.future.done()]:
            self._drop(job)  # its client went away (timeout, disconnect): nobody waits for the rest
        room, call = self.settings.max_batch_size, []
        # A round, in which every waiting request would get one slice, takes this many calls; a request
        # passed over for a whole round goes first.
        round_calls = -(-sum(min(job.remaining, room) for job in self.jobs) // room)
        ranked = sorted(self.jobs, key=lambda job: (job.skipped < round_calls, job.slices, job.remaining, job.seq))
        for job in ranked:
            if room == 0:
                break
            # The first request takes a slice of up to a whole call; the others join only when all
            # they have left fits, so a small request never waits for a slice of a large one that rode
            # along in its call, and large requests take their turns one call each.
            take = min(room, job.remaining) if not call else job.remaining if job.remaining <= room else 0
            if take:
                call.append((job, job.order[job.done : job.done + take]))
                room -= take
        return call

    async def _gather(self) -> list[tuple[_Job, np.ndarray]]:
        """The next call; if it has room and no request in it has started, waits up to max_wait_ms
        for more requests to join."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.max_wait_ms / 1000
        while True:
            call = self._plan()
            size = sum(len(chunk) for _, chunk in call)
            remaining = deadline - loop.time()
            if (
                not call
                or size >= self.settings.max_batch_size
                or any(job.slices for job, _ in call)
                or self.stopping
                or remaining <= 0
            ):
                return call
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _work(self) -> None:
        while True:
            if not self.jobs:
                if self.stopping:
                    return
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            call = await self._gather()
            if call:
                await self._run(call)

    async def _run(self, call: list[tuple[_Job, np.ndarray]]) -> None:
        loop = asyncio.get_running_loop()
        texts = [job.texts[i] for job, chunk in call for i in chunk]
        self.metrics.batch_size.observe(len(texts))
        self.metrics.batch_requests.observe(len(call))
        served = {id(job) for job, _ in call}
        for job in self.jobs:
            job.skipped = 0 if id(job) in served else job.skipped + 1
        started = time.perf_counter()
        try:
            probabilities = np.asarray(await loop.run_in_executor(self.executor, self.predict_proba, texts))
        except Exception as exc:  # the worker keeps serving
            if len(call) == 1:
                self._fail(call[0][0], exc)
                return
            # One request's texts must not fail the others merged into its call: retry each alone.
            for job, chunk in call:
                try:
                    result = await loop.run_in_executor(
                        self.executor, self.predict_proba, [job.texts[i] for i in chunk]
                    )
                except Exception as single:
                    self._fail(job, single)
                else:
                    self._store(job, chunk, np.asarray(result))
            return
        self.metrics.model_seconds.observe(time.perf_counter() - started)
        self.metrics.texts.inc(len(texts))
        start = 0
        for job, chunk in call:
            self._store(job, chunk, probabilities[start : start + len(chunk)])
            start += len(chunk)

    def _store(self, job: _Job, chunk: np.ndarray, probabilities: np.ndarray) -> None:
        if job not in self.jobs:
            return
        if job.result is None:
            job.result = np.zeros((len(job.texts), probabilities.shape[1]), dtype=probabilities.dtype)
        job.result[chunk] = probabilities
        job.done += len(chunk)
        job.slices += 1
        self._count(-len(chunk))
        if job.remaining == 0:
            self.jobs.remove(job)
            if not job.future.done():  # a client that went away cancelled its future
                job.future.set_result(job.result)

    def _fail(self, job: _Job, exc: Exception) -> None:
        if job in self.jobs:
            self._drop(job)
        if not job.future.done():
            job.future.set_exception(exc)


# ---- the app ----------------------------------------------------------------------------------


def _json_by_default(scope):
    """The API speaks JSON only; `curl -d '{...}'` labels its body form-urlencoded (or nothing), which
    FastAPI would refuse to parse. Such bodies are read as the JSON they are. Any other declared type
    (text/plain, multipart/form-data, application/xml) gives None: the guard answers 415, where FastAPI
    would answer 422 as if the JSON itself were wrong."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    given = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    media = given.split(b";")[0].strip().lower()
    if media in (b"", b"application/x-www-form-urlencoded"):
        return {**scope, "headers": headers + [(b"content-type", b"application/json")]}
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return scope
    return None


def _header_text(scope, name: bytes) -> str:
    return next((v for k, v in scope["headers"] if k == name), b"").decode("latin-1")[:100]


class _Guard:
    """Pure ASGI middleware: body-size limit (413 before parsing), body timeout (408) and request metrics.

    Pure ASGI rather than `@app.middleware("http")`, whose per-request task and stream wrapping
    cost more than the model call of a small batch. uvicorn has no timeout for a request body (its
    keep-alive timeout runs only between requests), so a client that declares 100 bytes and sends 7
    would hold its request, and a connection, for ever; the body is read here against a deadline.
    """

    def __init__(self, app, max_bytes: int, body_timeout_s: float, metrics: ServeMetrics):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        unsupported = None
        if scope["method"] == "POST":
            converted = _json_by_default(scope)
            encoding = next((v for k, v in scope["headers"] if k == b"content-encoding"), b"identity")
            if converted is None:
                unsupported = "Content-Type " + repr(_header_text(scope, b"content-type")) + ": send application/json"
            elif encoding.strip().lower() not in (b"", b"identity"):
                # A compressed body would otherwise be read as JSON and refused as malformed (422).
                unsupported = (
                    f"Content-Encoding {_header_text(scope, b'content-encoding')!r}: send the body uncompressed"
                )
            else:
                scope = converted
        started = time.perf_counter()
        status = 500

        async def tracking_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if unsupported is not None:
                status = 415
                return await _send_json(
                    send,
                    415,
                    {"error": "unsupported_media_type", "detail": unsupported},
                )
            refused, receive = await self._read_body(scope, receive)
            if refused is not None:
                status, detail = refused if isinstance(refused, tuple) else (refused, None)
                if status == 422:
                    return await _send_json(send, 422, {"error": "invalid_request", "detail": detail})
                if status == 408:
                    self.metrics.timeouts.labels("body").inc()
                    error, detail = "body_timeout", f"the request body did not arrive within {self.body_timeout_s:g} s"
                else:
                    error, detail = "body_too_large", f"request body over {self.max_bytes} bytes"
                # The rest of the body is never read: the connection cannot carry another request.
                return await _send_json(send, status, {"error": error, "detail": detail}, close=True)
            await self.app(scope, receive, tracking_send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _read_body(self, scope, receive):
        """(None, a receive that replays the body read here), or (413 or 408, None) when the body is
        over the limit or has not fully arrived within body_timeout_s of the headers, or
        ((422, detail), None) when its JSON repeats a key."""
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        # The server enforces Content-Length framing, so the declared size is the real one.
        if declared is not None and not (declared.isdigit() and int(declared) <= self.max_bytes):
            return 413, None
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None, receive  # no route reads the body of other methods
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body, more = bytearray(), True
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                return 408, None
            if message["type"] != "http.request":
                return None, receive  # disconnected: let the app see it
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return 413, None
        repeated = _repeated_key(bytes(body))
        if repeated is not None:
            return (422, f"the JSON body names {quote(repeated)} twice"), None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return None, replay


class _Repeated(ValueError):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _Repeated(key)
        seen.add(key)
    return dict(pairs)


def _repeated_key(body: bytes) -> str | None:
    """A key some JSON object in `body` names twice (`{"text": "a", "text": "b"}`, where json.loads keeps
    the last and the client gets an answer about one text without a word); None when none does or the
    body is no valid JSON (FastAPI's parser reports that)."""
    try:
        json.loads(body, object_pairs_hook=_no_repeats)
    except _Repeated as exc:
        return str(exc)
    except (ValueError, RecursionError):
        pass
    return None


async def _send_json(send, status: int, body: dict, close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + ([(b"connection", b"close")] if close else []),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class PredictRequest(BaseModel):
    """One text or a list of texts; strict, so numbers or objects are not silently turned into text."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = None
    texts: list[str] | None = None


def create_app(predictor, settings: ServeSettings | None = None):
    """A FastAPI app serving `predictor` (anything with `predict_proba(texts)` and `label_names`).

    Args:
        predictor: a `sentitune.inference.Predictor` (or an object with the same surface).
        settings: limits, batching and the optional API key; defaults to `ServeSettings()`.

    Example:
        >>> from fastapi.testclient import TestClient
        >>> with TestClient(create_app(predictor)) as client:  # doctest: +SKIP
        ...     client.post("/predict", json={"text": "a gorgeous , witty film"}).json()["label"]
        'positive'
    """
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    if getattr(predictor, "thresholds", None) is not None:
        # /predict answers one label per text; a multi-label answer needs its own response schema.
        raise RunFolderError(
            f"{predictor.source}: a multi-label run; serve supports single-label runs only (use sentitune predict)"
        )
    metrics = ServeMetrics()
    label_names = list(predictor.label_names)

    def batched_predict(texts: list[str]) -> np.ndarray:
        return predictor.predict_proba(texts, settings.max_batch_size)

    batcher = MicroBatcher(batched_predict, settings, metrics)
    explain_pool = ThreadPoolExecutor(1, thread_name_prefix="sentitune-explain")
    explaining = [0]  # /explain requests running or waiting for explain_pool

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn has stopped accepting and waited for open requests
        explain_pool.shutdown(wait=False, cancel_futures=True)

    # The schema and Swagger UI are public like /health: they describe the routes, not the model or data.
    app = FastAPI(title="sentitune", lifespan=lifespan, docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.predictor = predictor
    app.add_middleware(
        _Guard, max_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s, metrics=metrics
    )

    def error(status: int, code: str, detail: Any) -> JSONResponse:
        return JSONResponse({"error": code, "detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # The input is not echoed back: it may be megabytes, and it is the client's own data.
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error(422, "invalid_request", details)

    # Starlette's class, not FastAPI's subclass: FastAPI itself raises the parent for an unparsable body
    # (e.g. invalid UTF-8), and the router for unknown routes; those answers get the same JSON shape.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code, detail = exc.detail if isinstance(exc.detail, tuple) else ("http_error", exc.detail)
        return JSONResponse(
            {"error": code, "detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(401, ("unauthorized", "missing or wrong X-API-Key header"))

    def refusal(body: PredictRequest, max_texts: int, max_chars: int) -> JSONResponse | None:
        """The error answer for a request /predict or /explain must not run; None for a good one."""
        if (body.text is None) == (body.texts is None):
            return error(422, "invalid_request", "give exactly one of 'text' (a string) or 'texts' (a list)")
        texts = [body.text] if body.text is not None else body.texts
        if not texts:
            return error(422, "invalid_request", "'texts' is empty")
        if len(texts) > max_texts:
            return error(413, "too_many_texts", f"{len(texts)} texts; at most {max_texts} per request")
        too_long = next((i for i, t in enumerate(texts) if len(t) > max_chars), None)
        if too_long is not None:
            return error(
                413,
                "text_too_long",
                f"text {too_long} has {len(texts[too_long])} characters; at most {max_chars}",
            )
        # JSON may escape lone surrogates ("\ud800"), which no tokenizer accepts; refused here, they
        # would fail the whole micro-batch they joined.
        broken = next((i for i, t in enumerate(texts) if not is_unicode(t)), None)
        if broken is not None:
            return error(422, "invalid_request", f"text {broken} is not valid Unicode (lone surrogate)")
        # Whitespace, NUL and other invisible characters only: the model would still answer, confidently,
        # about nothing.
        blank = next((i for i, t in enumerate(texts) if is_blank(t)), None)
        if blank is not None:
            return error(422, "empty_text", f"text {blank} holds no visible characters")
        return None

    @app.post("/predict", dependencies=[Depends(require_key)])
    async def predict(body: PredictRequest):
        refused = refusal(body, settings.max_texts, settings.max_chars)
        if refused is not None:
            return refused
        texts = [body.text] if body.text is not None else body.texts
        try:
            probabilities = await asyncio.wait_for(batcher.submit(texts), settings.request_timeout_s)
        except Overloaded as exc:
            return JSONResponse(
                {"error": "overloaded", "detail": str(exc)}, status_code=503, headers={"Retry-After": "1"}
            )
        except asyncio.TimeoutError:
            return error(503, "timeout", f"no prediction within {settings.request_timeout_s} s")
        rows = [prediction_row(label_names, p) for p in probabilities]
        return rows[0] if body.text is not None else {"predictions": rows}

    @app.post("/explain", dependencies=[Depends(require_key)])
    async def explain(body: PredictRequest):
        """Per-word attributions toward the predicted label (sentitune.explain): the /predict answer plus
        `method`, `target`, `unit` and `words` (word, start, end in characters, attribution)."""
        from sentitune.explain import explain_texts

        max_chars = min(settings.max_chars, EXPLAIN_MAX_CHARS)
        refused = refusal(body, EXPLAIN_MAX_TEXTS, max_chars)
        if refused is not None:
            return refused
        texts = [body.text] if body.text is not None else body.texts
        if explaining[0] >= EXPLAIN_MAX_WAITING:
            return JSONResponse(
                {"error": "overloaded", "detail": f"{explaining[0]} explanations are running or waiting; retry"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        explaining[0] += 1
        try:
            # One explanation at a time, in its own thread: the event loop and /predict's batcher go on.
            work = asyncio.get_running_loop().run_in_executor(explain_pool, explain_texts, predictor, texts)
            rows = await asyncio.wait_for(work, settings.request_timeout_s)
        except asyncio.TimeoutError:
            return error(503, "timeout", f"no explanation within {settings.request_timeout_s} s")
        finally:
            explaining[0] -= 1
        rows = [{key: value for key, value in row.items() if key != "text"} for row in rows]
        return rows[0] if body.text is not None else {"explanations": rows}

    # Monitors often probe with HEAD; it stays out of the schema, where it would repeat GET's operation.
    @app.head("/health", include_in_schema=False)
    @app.get("/health")
    async def health():
        info = predictor.describe() if hasattr(predictor, "describe") else {}
        info.pop("source", None)  # a filesystem path is nobody's business over HTTP
        status = "shutting_down" if batcher.stopping else "ok"
        return JSONResponse(
            {"status": status, "model": info, "queue_texts": batcher.pending_texts},
            status_code=200 if status == "ok" else 503,
        )

    @app.get("/metrics", dependencies=[Depends(require_key)])
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(
            render_page(label_names, settings.api_key is not None, settings.max_chars), headers=PAGE_HEADERS
        )

    return app


EXPLAIN_MAX_TEXTS = 8
"""Texts per /explain request: an explanation costs dozens of model calls (IG steps, or one per word)."""
EXPLAIN_MAX_CHARS = 2_000
"""Characters per /explain text (also capped by --max-chars): a review, not a book."""
EXPLAIN_MAX_WAITING = 4
"""/explain requests running or queued at once; more get 503 overloaded rather than a long wait."""

PAGE_HEADERS = {
    # Inline script and style only, requests only to this server: nothing else can load or run.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>sentitune</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
 textarea{width:100%;box-sizing:border-box;font:inherit;padding:.5rem}
 button{font:inherit;padding:.4rem 1.2rem;margin-top:.5rem}
 #result{margin-top:1rem;font-size:1.2rem;min-height:1.5em}
 .bar{height:.8rem;background:#4a7;display:inline-block;vertical-align:middle}
 .row{margin:.2rem 0} .name{display:inline-block;width:8rem} .err{color:#b00}
 #key{width:100%;box-sizing:border-box}
 #explanation{margin-top:1rem;line-height:1.9} .tok{padding:.1rem .15rem;border-radius:.2rem}
 #why{color:#555;font-size:.9rem}
</style></head><body>
<h1>sentitune</h1>
<p>Labels: __LABELS__. Type a sentence and press Predict (or Ctrl+Enter).</p>
__KEY_FIELD__
<textarea id="text" rows="4" maxlength="__MAX_CHARS__" placeholder="A gorgeous, witty film."></textarea>
<button id="predict" type="button">Predict</button>
<div id="result" aria-live="polite"></div>
<div id="bars"></div>
<div id="explanation"></div>
<p id="why"></p>
<script>
const text = document.getElementById('text'), result = document.getElementById('result'),
      bars = document.getElementById('bars'), button = document.getElementById('predict');
async function predict() {
  const value = text.value.trim();
  if (!value) { result.textContent = ''; return; }
  button.disabled = true; result.className = ''; result.textContent = '…';
  const headers = {'Content-Type': 'application/json'};
  const key = document.getElementById('key');
  if (key && key.value) headers['X-API-Key'] = key.value;
  try {
    const response = await fetch('predict', {method: 'POST', headers, body: JSON.stringify({text: value})});
    const body = await response.json();
    if (!response.ok) throw new Error(typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail));
    result.textContent = body.label + ' (' + (100 * body.score).toFixed(1) + '%)';
    result.dataset.label = body.label;
    bars.replaceChildren(...Object.entries(body.probabilities).map(([name, p]) => {
      const row = document.createElement('div'); row.className = 'row';
      const label = document.createElement('span'); label.className = 'name'; label.textContent = name;
      const bar = document.createElement('span'); bar.className = 'bar'; bar.style.width = (20 * p) + 'rem';
      const number = document.createElement('span'); number.textContent = ' ' + (100 * p).toFixed(1) + '%';
      row.append(label, bar, number); return row;
    }));
    await explain(value, headers);
  } catch (e) {
    result.className = 'err'; result.textContent = 'error: ' + e.message; bars.replaceChildren();
  } finally { button.disabled = false; }
}
const explanation = document.getElementById('explanation'), why = document.getElementById('why');
async function explain(value, headers) {
  explanation.replaceChildren(); why.textContent = 'explaining…';
  const response = await fetch('explain', {method: 'POST', headers, body: JSON.stringify({text: value})});
  const body = await response.json();
  if (!response.ok) {
    why.textContent = 'no explanation: ' + (typeof body.detail === 'string' ? body.detail : response.status);
    return;
  }
  // Offsets count Unicode code points (Python's str), as Array.from does; JS string indices would not.
  const chars = Array.from(value), parts = [];
  const scale = Math.max(1e-12, ...body.words.map(w => Math.abs(w.attribution)));
  let cursor = 0;
  for (const w of body.words) {
    parts.push(document.createTextNode(chars.slice(cursor, w.start).join('')));
    const span = document.createElement('span'); span.className = 'tok';
    span.textContent = chars.slice(w.start, w.end).join('');
    span.dataset.attribution = w.attribution;
    const alpha = (0.75 * Math.abs(w.attribution) / scale).toFixed(3);
    span.style.background = w.attribution >= 0 ? `rgba(40,160,80,${alpha})` : `rgba(210,50,50,${alpha})`;
    span.title = (w.attribution >= 0 ? '+' : '') + w.attribution.toPrecision(3);
    parts.push(span); cursor = w.end;
  }
  parts.push(document.createTextNode(chars.slice(cursor).join('')));
  explanation.replaceChildren(...parts);
  why.textContent = 'green: words pushing toward ' + body.target + ', red: against (' + body.method + ')';
}
button.addEventListener('click', predict);
text.addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) predict(); });
</script></body></html>
"""


def render_page(label_names: list[str], needs_key: bool, max_chars: int) -> str:
    """The HTML page (no external resources; labels escaped)."""
    import html

    key_field = (
        '<p><input id="key" type="password" placeholder="API key (X-API-Key)" autocomplete="off"></p>'
        if needs_key
        else ""
    )
    return (
        PAGE.replace("__LABELS__", html.escape(", ".join(label_names)))
        .replace("__KEY_FIELD__", key_field)
        .replace("__MAX_CHARS__", str(int(max_chars)))
    )


# ---- running a server --------------------------------------------------------------------------


def serve_settings(**values) -> ServeSettings:
    """ServeSettings from keyword values; a bad value is a ConfigError (one line, exit 2 in the CLI)."""
    try:
        return ServeSettings(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_address(host: str, port: int) -> None:
    """Refuses, before anything loads, a port outside 1-65535 and an address this process cannot
    listen on: a port another process holds, a host that does not resolve or is not this machine's,
    a privileged port. uvicorn would find out only after the model loaded, and exit 3 amid its INFO
    lines. (A port taken between this check and uvicorn's bind still fails there.)"""
    import errno
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({getattr(exc, 'strerror', None) or exc})") from None
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        probe.bind(address)
    except OSError as exc:
        reason = {
            errno.EADDRINUSE: f"port {port} is in use by another process; pick another --port or stop that process",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0",
            errno.EACCES: f"port {port} needs privileges (ports below 1024); pick --port 1024 or above",
        }.get(exc.errno, exc.strerror or str(exc))
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {reason}") from None
    finally:
        probe.close()


MAX_HEADER_BYTES = 64 * 2**10
"""Most bytes of a request line and headers; httptools alone would gather headers without bound."""


class _ConnectionLimits:
    """Mixed into uvicorn's HTTP protocol class (httptools, or h11 where httptools is absent).

    uvicorn's only read timeout is the keep-alive timeout between requests, and every byte received
    cancels it, so a client that sends a request line a byte at a time (slow loris) holds its
    connection for ever; httptools also gathers headers without a size limit. Here a connection has
    `header_timeout_s` from opening, and from the end of each response, to deliver a request's
    headers, else it is closed (with a 408 if part of a request came); bytes received while no request
    is being served are capped at MAX_HEADER_BYTES (431), and while one is, at that plus the body
    limit. The body's own deadline is the ASGI guard's (408). Only the protocol's public callbacks
    and its `cycle`, `transport` and `loop` attributes are used.
    """

    header_timeout_s: float = 10.0
    max_body_bytes: int = 4 * 2**20
    on_refused = staticmethod(lambda kind: None)

    def connection_made(self, transport) -> None:
        self._header_timer = None
        self._received = 0  # bytes since the connection opened or the last response ended
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        self._received += len(data)
        if self._serving():
            if self._received > MAX_HEADER_BYTES + self.max_body_bytes:
                self.on_refused("request_size")
                self.transport.close()  # more than any request may hold: pipelined floods
        elif self._received > MAX_HEADER_BYTES:
            self.on_refused("header_size")
            self._refuse(431, "request_headers_too_large", f"request line and headers over {MAX_HEADER_BYTES} bytes")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._received = 0
        self._arm_header_timer()

    def _serving(self) -> bool:
        """True while a request whose headers arrived has not had its whole response."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self._serving():
            return  # the headers came in time; the response ending re-arms the timer
        self.on_refused("header")
        if self._received:
            self._refuse(
                408, "header_timeout", f"the request headers did not arrive within {self.header_timeout_s:g} s"
            )
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _refuse(self, status: int, code: str, detail: str) -> None:
        from http import HTTPStatus

        payload = json.dumps({"error": code, "detail": detail}).encode()
        self.transport.write(
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        self.transport.close()


def uvicorn_options(app, base=None) -> dict:
    """uvicorn.Config keywords that apply `app`'s connection limits (`create_app`'s settings).
    `base` is uvicorn's HTTP protocol class to extend (default: httptools where installed, else h11,
    as uvicorn chooses).

    Example:
        >>> uvicorn.run(app, host="127.0.0.1", port=8000, **uvicorn_options(app))  # doctest: +SKIP
    """
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base

    settings, metrics = app.state.settings, app.state.metrics
    protocol = type(
        "SentituneHTTPProtocol",
        (_ConnectionLimits, base),
        {
            "header_timeout_s": settings.header_timeout_s,
            "max_body_bytes": settings.max_body_bytes,
            "on_refused": staticmethod(lambda kind: metrics.timeouts.labels(kind).inc()),
        },
    )
    return {
        "http": protocol,
        "ws": "none",  # no WebSocket routes: an upgrade request is an ordinary request
        # uvicorn answers 503 once it holds `limit_concurrency` connections, counting the new one.
        "limit_concurrency": settings.max_connections + 1,
    }


def run_server(
    app, *, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False, sockets: list | None = None
) -> bool:
    """Serves `app` (from `create_app`) with uvicorn until SIGINT/SIGTERM; True when a SIGTERM stopped it.

    uvicorn handles SIGINT/SIGTERM: stop accepting, finish open requests, run the lifespan exit (which
    drains the batch queue), then re-raise the signal. A SIGTERM is how service managers ask for a
    stop, so after that graceful shutdown the handler here swallows it and the caller can exit 0.

    Example:
        >>> run_server(create_app(Predictor.load("exported/sst2-lora-int8")), port=8000)  # doctest: +SKIP
    """
    import uvicorn

    if sockets is None:
        check_address(host, port)
    terminated = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    options = dict(log_level="info", access_log=access_log, timeout_graceful_shutdown=15, **uvicorn_options(app))
    try:
        if sockets is None:
            uvicorn.run(app, host=host, port=port, **options)
        else:  # a listening socket shared with other server processes (serve_processes)
            uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options)).run(sockets=sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(terminated)


def serve_processes(make_app, processes: int, *, host: str = "127.0.0.1", port: int = 8000, access_log=False) -> bool:
    """Serves with `processes` server processes that share one listening socket; the kernel hands each
    new connection to one of them. Each process calls `make_app()` itself (its own model, batcher and
    event loop), so JSON, validation and HTTP parsing, which hold Python's lock, run on every core
    instead of one. /metrics counts the process that answers it.

    SIGTERM or SIGINT to this (parent) process stops the children gracefully; True when a SIGTERM
    stopped it. A child that fails (say, its model does not load) stops the others, and the error is
    raised here.

    Example:
        >>> make_app = lambda: create_app(Predictor.load("exported/sst2-lora-int8", threads=1))
        >>> serve_processes(make_app, 2)  # doctest: +SKIP
    """
    import os
    import socket
    import sys

    check_address(host, port)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:  # the child: load, serve, and never return into the parent's code
            code = 0
            try:
                os.setpgrp()  # a terminal's Ctrl-C reaches the parent only, which stops each child once
                signal.signal(signal.SIGINT, signal.default_int_handler)
                run_server(make_app(), host=host, port=port, access_log=access_log, sockets=[listener])
            except BaseException as exc:  # any failure reaches the parent as the exit code
                if not isinstance(exc, KeyboardInterrupt):
                    print(f"sentitune serve: a server process failed: {exc}", file=sys.stderr, flush=True)
                    code = 2
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    listener.close()

    stopping: list[int] = []

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            for child in children:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = 0
    try:
        running = set(children)
        while running:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            running.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0 and not stopping:
                failed += 1
                stop(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise RunFolderError(f"{failed} of {processes} server processes failed (see the lines above); all stopped")
    return bool(stopping) and stopping[0] == signal.SIGTERM
