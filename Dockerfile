# syntax=docker/dockerfile:1
# The edge install of edgecnn (`pip install edgecnn[serve]`: onnxruntime on CPU, no torch), run as `edgecnn serve`.
#   docker build -t edgecnn:0.1.0 .
#   docker run --rm -p 8001:8001 -p 8002:8002 -v "$PWD/models:/mnt/models:ro" edgecnn:0.1.0
# The GPU image is Dockerfile.cuda. Kubernetes and KServe manifests: serve/deploy/ (README.md there).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: install edgecnn[serve] and its dependencies into a venv ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# What `pip install .` needs: pyproject.toml maps these folders into the edgecnn namespace.
COPY pyproject.toml README.md ./
COPY train ./train
COPY export ./export
COPY serve ./serve
COPY protos ./protos
COPY benchmarks ./benchmarks
RUN pip install --upgrade pip \
 && pip install ".[serve]" \
 && pip check \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the serve image" >&2; exit 1; fi

# --- final: the venv on a clean slim image, as a non-root user -------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 edgecnn \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin edgecnn \
 && mkdir -p /mnt/models
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# The same smoke script CI runs on the edge install (tests/test_installs.py): a real `edgecnn serve` on the
# tiny model shipped in the package, ready, one inference, SIGTERM, exit 0; as the image's own user.
RUN python -m edgecnn.serve.smoke
# 8001: gRPC (Open Inference Protocol, grpc.health.v1, reflection); 8002: Prometheus metrics (HTTP).
EXPOSE 8001 8002
ENTRYPOINT ["edgecnn"]
CMD ["serve", "/mnt/models", "--host", "0.0.0.0", "--port", "8001", "--metrics-port", "8002"]
