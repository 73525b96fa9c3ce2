# crm-lifecycle connector image. Two targets:
#
#   docker build -t crm-lifecycle .                          # production (the default, last stage): `lifecycle run`
#   docker build --target demo -t crm-lifecycle:demo .       # + the demo extra: `lifecycle demo`
#   docker run --rm crm-lifecycle:demo                       # the whole cycle against the built-in sandboxes
#
#   docker run -d -p 8080:8080 -v lifecycle-data:/data \
#     -v "$PWD/lifecycle.toml:/config/lifecycle.toml:ro" --env-file .env crm-lifecycle
#
# Configuration, in this order: `--config FILE`; the file named by LIFECYCLE_CONFIG; /config/lifecycle.toml
# (the working directory, so a file mounted there is read); else the environment alone
# (LIFECYCLE_CRM__KIND=... and LIFECYCLE_<SECTION>__<KEY>, no TOML file needed). Every secret can also be
# given as a file: LIFECYCLE_<SECTION>__<KEY>_FILE=/run/secrets/name (Docker secrets). With none of these
# the container prints one line saying what to set and exits with status 2 (no restart loop with
# `restart: on-failure:3`). An unedited config.example.toml works: its examples/sample resolves to
# /config/examples, a link to the examples shipped in the image.
# State: SQLite in the /data volume by default (LIFECYCLE_STATE__URL); PostgreSQL
# (postgresql+psycopg://user:password@host:5432/db) for production and for several replicas: the schema
# migrations at start take a PostgreSQL advisory lock, so replicas starting together migrate once.
# Port 8080: webhooks, /healthz, /readyz, /metrics. Dependency versions are pinned by constraints.txt.

# -- builder: the project and its runtime dependencies in a venv at /opt/venv, slimmed -------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_COMPILE=1 \
    PIP_DEFAULT_TIMEOUT=180
# binutils for `strip` (scripts/slim-venv.sh); the build goes on without it if apt has no network
RUN (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \
     && rm -rf /var/lib/apt/lists/*) >/dev/null 2>&1 || echo "binutils not installed: shared libraries stay unstripped"
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY scripts/slim-venv.sh ./scripts/
COPY connector ./connector
COPY adapters ./adapters
COPY rules ./rules
COPY sandbox ./sandbox
# The system CA bundle (when present) rather than pip's own: builds behind a TLS-inspecting proxy work.
RUN if [ -f /etc/ssl/certs/ca-certificates.crt ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/venv/bin/python -m pip install -q --no-compile -c constraints.txt . \
 && sh scripts/slim-venv.sh /opt/venv \
 && /opt/venv/bin/lifecycle --help >/dev/null

# -- demo-builder: the same plus the demo extra (numpy, cryptography) -------------------------------
FROM python:3.11-slim AS demo-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_COMPILE=1 PIP_DEFAULT_TIMEOUT=180
RUN (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \
     && rm -rf /var/lib/apt/lists/*) >/dev/null 2>&1 || echo "binutils not installed: shared libraries stay unstripped"
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY scripts/slim-venv.sh ./scripts/
COPY connector ./connector
COPY adapters ./adapters
COPY rules ./rules
COPY sandbox ./sandbox
RUN if [ -f /etc/ssl/certs/ca-certificates.crt ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/venv/bin/python -m pip install -q --no-compile -c constraints.txt '.[demo]' \
 && sh scripts/slim-venv.sh /opt/venv \
 && /opt/venv/bin/python -c 'import numpy, cryptography'

# -- runtime base: user, folders, environment --------------------------------------------------------
FROM python:3.11-slim AS runtime
# (useradd when the base has it; a minimal Debian base without the passwd package gets the lines directly)
RUN if command -v useradd >/dev/null; then \
      groupadd --system --gid 10001 lifecycle \
      && useradd --system --uid 10001 --gid lifecycle --home-dir /data --no-create-home --shell /usr/sbin/nologin lifecycle; \
    else \
      echo 'lifecycle:x:10001:' >>/etc/group \
      && echo 'lifecycle:x:10001:10001:crm-lifecycle:/data:/usr/sbin/nologin' >>/etc/passwd; \
    fi \
 && mkdir -p /data /config /opt/lifecycle \
 && chown lifecycle:lifecycle /data \
 && ln -s /opt/lifecycle/examples /config/examples
COPY config.example.toml /opt/lifecycle/
COPY examples /opt/lifecycle/examples
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    LIFECYCLE_STATE__URL=sqlite:////data/lifecycle.db
VOLUME ["/data"]
WORKDIR /config
USER lifecycle:lifecycle
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# -- demo: `lifecycle demo` (generated sandboxes, nothing to configure) ------------------------------
FROM runtime AS demo
COPY --from=demo-builder /opt/venv /opt/venv
CMD ["lifecycle", "demo"]

# -- production (default): `lifecycle run`, without test and demo dependencies -----------------------
FROM runtime AS production
COPY --from=builder /opt/venv /opt/venv
CMD ["lifecycle", "run"]
