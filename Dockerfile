# seq2seq-serve: one inference service process per container (scale with replicas, not workers).
#
# Build (official slim image, CPU PyTorch from download.pytorch.org):
#   docker build -t seq2seq-serve .
# CUDA build: the CUDA wheels carry their own CUDA libraries, the host only needs the NVIDIA driver
# and container toolkit:
#   docker build --build-arg TORCH_VARIANT=cu128 -t seq2seq-serve:cuda .
# Offline / no access to download.pytorch.org: put torch-*.whl into deploy/wheels/ (or any folder
# inside the build context, named by TORCH_WHEEL_DIR) and it is installed from there instead.
# Without a registry: deploy/make-base-image.sh builds a local base, then
#   docker build --network host --build-arg BASE_IMAGE=seq2seq-base:bookworm -t seq2seq-serve .
# Only Dockerfile features the classic builder understands are used, so it builds without BuildKit.
# Metadata instructions come before the big COPY steps: with the classic builder each instruction
# snapshots the whole filesystem (slow on the vfs storage driver), and code changes only redo COPYs.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0 TORCH_VARIANT=cpu TORCH_WHEEL_DIR=deploy/wheels
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Lets cleanup find this stage's images: the classic builder keeps them, untagged, as its cache.
LABEL seq2seq-serve.stage=builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
# python3, not python: Debian's own python3 packages ship no `python`. The venv provides both.
RUN python3 -m venv /opt/venv
COPY ${TORCH_WHEEL_DIR}/ /tmp/wheels/
RUN if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install --no-deps --no-index --find-links /tmp/wheels "torch==${TORCH_VERSION}"; \
    else \
        pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"; \
    fi
# Dependencies first, from pyproject.toml alone (no packages copied yet, so none are found): this
# layer is rebuilt only when the dependencies change. torch is already there and stays. The otel
# extra lets a deployment turn traces on with OTEL_EXPORTER_OTLP_ENDPOINT alone.
COPY pyproject.toml README* ./
RUN pip install --find-links /tmp/wheels ".[otel]"
COPY . .
RUN pip install --no-deps --force-reinstall . \
    && pip check \
    && mkdir -p /src/model_store

FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQ2SEQ_MODEL_STORE=/app/model_store \
    SEQ2SEQ_HOST=0.0.0.0 \
    SEQ2SEQ_PORT=8000
RUN useradd --uid "${APP_UID}" --user-group --create-home --home-dir /home/app --shell /usr/sbin/nologin app
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# Ready, not just alive: a replica that is loading models or draining reports unhealthy. Python's
# urllib because slim images have no curl; urlopen raises (exit 1) on any non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('SEQ2SEQ_PORT', '8000'), timeout=4)"]
# The service drains on SIGTERM (new requests get 503, in-flight ones finish within
# SEQ2SEQ_SHUTDOWN_GRACE_S) and exits 0. Exec form keeps it PID 1, so it receives the signal itself;
# give `docker stop -t` / terminationGracePeriodSeconds more than the grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seq2seq-serve"]
# Files last (owned by root, read-only for the service user).
COPY --from=builder /opt/venv /opt/venv
# Baked-in models; mount a volume over /app/model_store to serve others without rebuilding.
COPY --from=builder /src/model_store /app/model_store
