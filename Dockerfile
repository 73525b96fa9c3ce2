# crm-lifecycle connector image.
#
#   docker build -t crm-lifecycle .
#   docker run -d -p 8080:8080 -v lifecycle-data:/data \
#     -v "$PWD/lifecycle.toml:/config/lifecycle.toml:ro" --env-file .env crm-lifecycle
#
# State: SQLite in the /data volume by default (LIFECYCLE_STATE__URL); point LIFECYCLE_STATE__URL at
# PostgreSQL (postgresql+psycopg://user:password@host:5432/db) for production / several workers.
# Config: /config/lifecycle.toml (mount it read-only); secrets come from the environment
# (LIFECYCLE_<SECTION>__<KEY>), never from the image. Port 8080: webhooks, /healthz, /readyz, /metrics.
# Try it without a CRM: docker run --rm crm-lifecycle lifecycle demo

# -- builder: the project and its dependencies in a venv at /opt/venv ------------------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY adapters ./adapters
COPY rules ./rules
COPY sandbox ./sandbox
# The system CA bundle (when present) rather than pip's own: builds behind a TLS-inspecting proxy work.
RUN if [ -f /etc/ssl/certs/ca-certificates.crt ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/venv/bin/python -m pip install --upgrade pip setuptools wheel \
 && /opt/venv/bin/python -m pip install . \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
 && /opt/venv/bin/lifecycle --help >/dev/null

# -- runtime ---------------------------------------------------------------------------------------
FROM python:3.11-slim
# (useradd when the base has it; a minimal Debian base without the passwd package gets the lines directly)
RUN if command -v useradd >/dev/null; then \
      groupadd --system --gid 10001 lifecycle \
      && useradd --system --uid 10001 --gid lifecycle --home-dir /data --no-create-home --shell /usr/sbin/nologin lifecycle; \
    else \
      echo 'lifecycle:x:10001:' >>/etc/group \
      && echo 'lifecycle:x:10001:10001:crm-lifecycle:/data:/usr/sbin/nologin' >>/etc/passwd; \
    fi \
 && mkdir -p /data /config /opt/lifecycle \
 && chown lifecycle:lifecycle /data
COPY --from=builder /opt/venv /opt/venv
COPY config.example.toml /opt/lifecycle/
COPY examples /opt/lifecycle/examples
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    LIFECYCLE_STATE__URL=sqlite:////data/lifecycle.db
VOLUME ["/data"]
WORKDIR /data
USER lifecycle:lifecycle
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["lifecycle", "run", "--config", "/config/lifecycle.toml"]
