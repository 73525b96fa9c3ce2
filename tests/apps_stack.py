"""Plumbing of the app-handler tests (tests/test_apps_*.py): the many-portal web service in-process on
loopback over a real PostgreSQL, its environment (the app's credentials, the public URL, a secret key and
a portal template that keeps syncs fast), a `lifecycle worker` subprocess, and HTTP helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa

from tests.conftest import ROOT
from tests.test_workers import WORKER_ENV, free_port, wait_for

B24_CLIENT_ID = "local.lifecycle0test.00000001"
B24_CLIENT_SECRET = "b24-app-secret-0123456789abcdefghijklmnopqrstuvwxyz"
TEMPLATE = """[crm]
requests_per_second = 500
overlap_minutes = 0
[schedule]
every = "1h"
[daemon]
debounce_seconds = 1
"""


def app_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    template = tmp_path / "portal-template.toml"
    template.write_text(TEMPLATE, encoding="utf-8")
    return {"LIFECYCLE_PUBLIC_URL": f"http://127.0.0.1:{port}", "LIFECYCLE_BITRIX24_CLIENT_ID": B24_CLIENT_ID,
            "LIFECYCLE_BITRIX24_CLIENT_SECRET": B24_CLIENT_SECRET, "LIFECYCLE_APPS_PORTAL_TEMPLATE": str(template),
            "LIFECYCLE_SECRET_KEY": Fernet.generate_key().decode(), **extra}


@contextmanager
def web_service(url: str, env: dict[str, str], port: int, monkeypatch) -> Iterator[Any]:
    """The many-portal service (status, webhooks, /apps/...) in this process on ``port``."""
    from connector import crypto
    from connector.portals_web import PortalService
    from connector.worker import ensure_schema

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    crypto.configure(None)
    ensure_schema(url)
    service = PortalService(url, host="127.0.0.1", port=port, token="status-token-for-app-tests")
    service.workers.registry()
    service.push_app_secrets()  # as PortalService.run does at start
    service.workers.app.open()
    service.server.start()
    try:
        yield service
    finally:
        service.server.stop()
        service._defer_pool.shutdown(wait=False, cancel_futures=True)
        service.workers.app.close()
        service.workers.close()
        crypto.configure(None)


@contextmanager
def worker(url: str, env: dict[str, str], folder: Path) -> Iterator[subprocess.Popen]:
    log = open(folder / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "worker", "--state-url", url, "--concurrency", "2",
                             "--tick", "1", "--stalled-after", "5", "--name", "apps"],
                            cwd=ROOT, env={**os.environ, **WORKER_ENV, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def http(verb: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, data=body, method=verb, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode("utf-8", "replace")


def form_post(url: str, form: dict[str, str] | list[tuple[str, str]]) -> tuple[int, dict, str]:
    from urllib.parse import urlencode

    return http("POST", url, urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded"})


def snapshot(engine, portal: str) -> dict[str, Any]:
    """Everything stored about ``portal`` that a refused request must leave alone."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT state, config, removed FROM portals WHERE name = %(n)s", {"n": portal}).first()
        tokens = conn.exec_driver_sql("SELECT access_token, refresh_token FROM oauth_tokens WHERE portal = %(n)s",
                                      {"n": portal}).first()
        jobs = conn.exec_driver_sql("SELECT count(*) FROM procrastinate_jobs WHERE args->>'portal' = %(n)s",
                                    {"n": portal}).scalar()
        portals = conn.exec_driver_sql("SELECT count(*) FROM portals").scalar()
    return {"portal": tuple(row) if row else None, "tokens": tuple(tokens) if tokens else None, "jobs": jobs,
            "portals": portals}


def sync_runs(engine, portal: str) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT status, id FROM runs WHERE kind = 'sync' AND portal = :p ORDER BY id"), {"p": portal})]


def _portal_rows(table, portal: str, customer_id: int) -> sa.Select:
    """The customer's rows of a membership table with the segment's name (the tables keep its id)."""
    from connector.store import portal_keys
    from tests.conftest import named_select

    named = named_select(table).subquery()
    return sa.select(named).join(portal_keys, portal_keys.c.id == named.c.portal_id).where(
        portal_keys.c.name == portal, named.c.customer_id == customer_id)


def segments_of(engine, portal: str, customer_id: int) -> set[str]:
    from connector.store import membership

    with engine.connect() as conn:
        return {r.segment for r in conn.execute(_portal_rows(membership, portal, customer_id))}


def history_of(engine, portal: str, customer_id: int) -> list[tuple[str, str, str]]:
    from connector.store import membership_events

    query = _portal_rows(membership_events, portal, customer_id).subquery()
    with engine.connect() as conn:  # a run's entries before its exits, as recorded
        return [(r.segment, r.event, str(r.on_date)[:10]) for r in conn.execute(
            sa.select(query).order_by(query.c.run_id, query.c.event.desc(), query.c.segment))]


__all__ = ["app_env", "form_post", "free_port", "history_of", "http", "segments_of", "snapshot", "sync_runs",
           "wait_for", "web_service", "worker", "time"]
