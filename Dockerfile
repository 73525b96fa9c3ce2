# crm-lifecycle connector image. Two targets:
#
#   docker build -t crm-lifecycle .                          # production (the default, last stage): `lifecycle run`
#   docker build --target demo --build-arg EXTRAS=demo -t crm-lifecycle:demo .   # `lifecycle demo`
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
#
# The final image is FROM scratch ("distroless"): the builder assembles a root file system holding only
# the Python interpreter the venv runs, its standard library (less tests, IDLE, tkinter, ...), the venv,
# the shared libraries these load, CA certificates, the time zone database and the user `lifecycle`
# (uid 10001) (scripts/image-rootfs.sh, which imports the app inside it before the build goes on).
# There is no shell and no package manager in it: CMD, ENTRYPOINT and HEALTHCHECK are exec form, and
# `docker exec -it <container> python` is the way in. EXTRAS (a build argument) names extras of the
# project to install as well, e.g. `demo` or `fast` (connectorx and pyarrow for PostgreSQL bulk reads).

# -- builder: the project and its runtime dependencies in a venv at /opt/venv, slimmed; the image's root
#    file system in /rootfs -------------------------------------------------------------------------
FROM python:3.11-slim AS builder
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_COMPILE=1 \
    PIP_DEFAULT_TIMEOUT=180
# binutils for `strip` (scripts/slim-venv.sh; the build goes on without it if apt has no network);
# tzdata and ca-certificates for the image (scripts/image-rootfs.sh stops if either is missing)
RUN (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       binutils ca-certificates tzdata \
     && rm -rf /var/lib/apt/lists/*) >/dev/null 2>&1 || echo "apt-get failed: shared libraries stay unstripped"
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY scripts/slim-venv.sh scripts/image-rootfs.sh ./scripts/
COPY connector ./connector
COPY adapters ./adapters
COPY rules ./rules
COPY sandbox ./sandbox
# The system CA bundle (when present) rather than pip's own: builds behind a TLS-inspecting proxy work.
RUN if [ -f /etc/ssl/certs/ca-certificates.crt ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi; \
    /opt/venv/bin/python -m pip install -q --no-compile -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
 && sh scripts/slim-venv.sh /opt/venv \
 && /opt/venv/bin/lifecycle --help >/dev/null
RUN sh scripts/image-rootfs.sh /opt/venv /rootfs \
 && mkdir -p /rootfs/config /rootfs/opt/lifecycle /empty \
 && ln -s /opt/lifecycle/examples /rootfs/config/examples

# -- runtime: the root file system, the examples, user and environment ----------------------------------
FROM scratch AS runtime
COPY --from=builder /rootfs /
COPY --from=builder --chown=10001:10001 /empty /data
COPY config.example.toml /opt/lifecycle/
COPY examples /opt/lifecycle/examples
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    LIFECYCLE_STATE__URL=sqlite:////data/lifecycle.db
VOLUME ["/data"]
WORKDIR /config
# the user `lifecycle` (in the image's /etc/passwd), by number so that runAsNonRoot can check it
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# -- demo: `lifecycle demo` (generated sandboxes, nothing to configure) ----------------------------------
FROM runtime AS demo
CMD ["lifecycle", "demo"]

# -- production (default): `lifecycle run`, without test and demo dependencies ---------------------------
FROM runtime AS production
CMD ["lifecycle", "run"]
