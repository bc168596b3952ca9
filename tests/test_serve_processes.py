"""`sentitune serve --processes N`: N server processes share one port, each answers /predict, and a
SIGTERM to the parent stops them all gracefully."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model: Path, port: int, *extra: str) -> tuple[subprocess.Popen, object]:
    log = tempfile.TemporaryFile()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "sentitune", "serve", "--model", str(model), "--port", str(port), *extra]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env), log


def read(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_two_processes_share_the_port_and_stop_together(trained_run):
    port = free_port()
    process, log = start(trained_run("head"), port, "--processes", "2", "--max-wait-ms", "1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, read(log)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"server did not come up: {read(log)}")
        workers = children(process.pid)
        assert len(workers) == 2, workers
        # Fresh connections: the kernel gives each to whichever process accepts first; all must answer.
        for text in ["a gorgeous , witty film", "a dull mess", "x"] * 4:
            response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": text}, timeout=30)
            assert response.status_code == 200 and response.json()["label"] in ("negative", "positive")
        batch = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["fine", "awful"]}, timeout=30)
        assert len(batch.json()["predictions"]) == 2
        assert "2 processes serving" in read(log)

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, read(log)
        assert "stopped by SIGTERM" in read(log)
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def test_a_process_that_cannot_load_its_model_stops_the_server(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    process, log = start(empty, free_port(), "--processes", "2")
    try:
        code = process.wait(120)
        assert code != 0
        assert "server processes failed" in read(log)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_processes_must_be_positive(trained_run, capsys):
    from sentitune.cli import main

    assert main(["serve", "--model", str(trained_run("head")), "--port", str(free_port()), "--processes", "0"]) == 2
    assert "--processes must be >= 1" in capsys.readouterr().err
