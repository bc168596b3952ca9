"""The container files: the Dockerfile passes hadolint and installs exactly the locked set
(requirements.lock with --require-hashes, no resolver), and the compose example's Prometheus scrapes
the /metrics route the server has. Docker itself is not run here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    tool = hadolint()
    if tool is None:
        pytest.skip("hadolint is not installed")
    done = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_the_lock_with_hashes_and_runs_as_non_root():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    install = re.search(r"RUN pip install (.*?)-r (\S+)", text, re.S)
    assert install and install.group(2) == "requirements.lock"
    assert "--require-hashes" in install.group(1) and "--no-deps" in install.group(1)
    assert "COPY requirements.lock" in text
    # torch is locked as a +cpu build: the image needs PyTorch's CPU index for it.
    lock = (ROOT / "requirements.lock").read_text()
    torch = re.search(r"^torch==(\S+) ", lock, re.M)
    if torch and "+cpu" in torch.group(1):
        assert "download.pytorch.org/whl/cpu" in text
    # Every other pip install of the image adds nothing the lock lacks.
    for line in re.findall(r"pip install ([^\n\\]*)", text):
        assert "--no-deps" in line, line
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/health" in text
    assert re.search(r'^ENTRYPOINT \["sentitune", "serve"', text, re.M)


def test_prometheus_scrapes_the_servers_metrics_route():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert {"sentitune", "prometheus"} <= set(compose["services"])
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    port = compose["services"]["sentitune"]["ports"][0].split(":")[-1]
    assert job["static_configs"][0]["targets"] == [f"sentitune:{port}"]
    assert "/metrics" in (ROOT / "src" / "sentitune" / "serve.py").read_text()
