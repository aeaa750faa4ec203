# syntax=docker/dockerfile:1
# refund-retry: the gRPC refund & payment-retry service.
#   docker build -t refund-retry .
#   docker run --rm -p 50051:50051 -p 8080:8080 \
#     -e REFUND_RETRY_DATABASE_URL=postgresql://user:pass@db:5432/refund_retry \
#     -e REFUND_RETRY_TOKENS_FILE=/run/secrets/tokens.json \
#     -e REFUND_RETRY_TLS_CERT_FILE=/run/secrets/tls.crt -e REFUND_RETRY_TLS_KEY_FILE=/run/secrets/tls.key \
#     -v "$PWD/secrets:/run/secrets:ro" \
#     refund-retry            # = refund-retry serve (gRPC over TLS; HTTP webhooks and probes on 8080)
#   (for a local try without certificates: -e REFUND_RETRY_PLAINTEXT=true instead of the TLS files)
#   docker run --rm -e REFUND_RETRY_DATABASE_URL=... refund-retry migrate
#   docker compose up --build   (docker-compose.yml: with PostgreSQL and RabbitMQ)

# ---- builder: the project's wheel plus wheels of all its dependencies -------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore): the packages, their SQL files and
# the generated protobuf package under protos/ (pyproject's packages.find and package-data).
COPY pyproject.toml README.md ./
COPY service/ service/
COPY repository/ repository/
COPY consumers/ consumers/
COPY protos/ protos/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/refund_retry-*.whl

# ---- runtime ------------------------------------------------------------------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1 \
    REFUND_RETRY_GRPC_HOST=0.0.0.0 REFUND_RETRY_GRPC_PORT=50051 \
    REFUND_RETRY_EMBEDDED_POSTGRES=never
# (never: a container without REFUND_RETRY_DATABASE_URL stops with a line saying so, rather
# than keeping refunds in an embedded database inside its own writable layer.)
# Install from the builder's wheels without copying them into a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels refund-retry \
 && groupadd --system --gid 10001 refundretry \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin refundretry
USER 10001:10001
WORKDIR /tmp
# gRPC, and HTTP for gateway webhooks and the probes (REFUND_RETRY_HTTP_PORT).
EXPOSE 50051 8080
# Liveness on the HTTP port (/healthz), whatever the gRPC port's transport security; /readyz
# (503 while PostgreSQL is unreachable) and the gRPC health service are for load balancers.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('REFUND_RETRY_HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["refund-retry"]
CMD ["serve"]
