# CPU image of `sentitune serve`: the locked dependency set (requirements.lock, hashes required, no
# resolver), ONNX Runtime included, run as a non-root user with a HEALTHCHECK on /health.
#
#   docker build -t sentitune .
#   docker run -p 8000:8000 -v "$PWD/exported/sst2-lora-int8:/model:ro" sentitune
#
# Serves the export (or run folder) mounted at /model. Not built here: no Docker on the machine that
# wrote it; `hadolint Dockerfile` runs in tests/test_deploy.py.
FROM python:3.11-slim

# DL3064 reads "TOKEN" in TOKENIZERS_PARALLELISM as a secret; nothing here is one.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

# torch is locked as 2.13.0+cpu: the CPU wheel lives on PyTorch's CPU index, the rest on PyPI.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.lock

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
    && useradd --create-home --uid 10001 sentitune

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]

ENTRYPOINT ["sentitune", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]
