# syntax=docker/dockerfile:1
# parrot-gateway: OpenAI-compatible gateway (see charts/parrot-gateway for Kubernetes).
#   docker build -t parrot-gateway:0.1.0 .
#   docker run -p 8000:8000 parrot-gateway:0.1.0 --backend http://engine:30000 --redis redis://redis:6379/0
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# Build a wheel set in a throwaway stage so the runtime image has no build tools.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels parrot-gateway \
 && groupadd --system --gid 10001 parrot \
 && useradd --system --uid 10001 --gid parrot --home-dir /tmp --shell /usr/sbin/nologin parrot
# Runs as non-root with a read-only root filesystem in the chart; only /tmp is written.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PARROT_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["parrot-gateway", "serve", "--host", "0.0.0.0"]
CMD ["--port", "8000"]
