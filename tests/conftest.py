"""Shared helpers: a CSV "CRM" folder and a config pointing at it, built per test in tmp_path, and
:func:`run_cli`, which runs ``lifecycle ...`` in this process (the fast way; a handful of tests still start
real processes where processes are the point: signals, concurrent syncs, the daemon, one smoke test)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.config import LoadedConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONTACT_HEADER = ["id", "name", "phone", "email", "birthday", "responsible_id", "created_at"]
DEAL_HEADER = ["id", "contact_id", "company_id", "status", "amount", "currency", "created_at", "closed_at"]

BASE_CONFIG = """\
[crm]
kind = "csv"
path = "crm"
timezone = "Europe/Moscow"

[state]
url = "sqlite:///state.db"
"""


@dataclass
class Result:
    """What one in-process ``lifecycle`` command did; the field names match subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None) -> Result:
    """Run ``lifecycle ARGV`` in this process: ``connector.cli.main`` with stdout and stderr captured.

    Like a fresh process it sees the current environment plus ``env`` (restored afterwards), runs in ``cwd``,
    starts with no registered secrets and no cancelled sync, and leaves the root logger as it found it.
    """
    from connector import cli, logs, pipeline

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    saved_cwd = os.getcwd()
    secrets = list(logs._secrets)
    logs._secrets.clear()  # each command redacts on its own, as a new process would
    pipeline.STOP.clear()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        logs._secrets[:] = secrets
    return Result(code, out.getvalue(), err.getvalue())


class Workspace:
    """A folder with crm/*.csv and lifecycle.toml, as a user would set it up."""

    def __init__(self, root: Path):
        self.root = root
        self.crm = root / "crm"
        self.crm.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "lifecycle.toml"

    def write_config(self, extra: str = "", base: str = BASE_CONFIG) -> Path:
        self.config_path.write_text(base + "\n" + extra, encoding="utf-8")
        return self.config_path

    def config(self, extra: str = "") -> LoadedConfig:
        self.write_config(extra)
        return load_config(self.config_path)

    def write_contacts(self, rows: list[dict], extra_columns: list[str] | None = None, name: str = "contacts.csv") -> None:
        header = CONTACT_HEADER + (extra_columns or [])
        self._write(name, header, rows)

    def write_deals(self, rows: list[dict]) -> None:
        self._write("deals.csv", DEAL_HEADER, rows)

    def _write(self, name: str, header: list[str], rows: list[dict]) -> None:
        with (self.crm / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in header})

    def cli(self, *args: str, check: bool = True, as_process: bool = False) -> Result | subprocess.CompletedProcess[str]:
        """``lifecycle ARGS --config lifecycle.toml`` in the workspace: in-process, or as a real process."""
        argv = [*args, "--config", str(self.config_path)]
        if as_process:
            proc = subprocess.run([sys.executable, "-m", "connector.cli", *argv], capture_output=True, text=True,
                                   cwd=self.root, timeout=120)
        else:
            proc = run_cli(argv, cwd=self.root)
        if check and proc.returncode != 0:
            raise AssertionError(f"lifecycle {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def report_json(self, *args: str) -> dict:
        return json.loads(self.cli("report", "--format", "json", *args).stdout)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def named_select(table):
    """SELECT of a membership table (``membership``, ``membership_events``) with the segment's name as
    ``segment`` next to its ``segment_id`` (the tables keep the id: connector.store.schema)."""
    import sqlalchemy as sa

    from connector.store import segments

    on = sa.and_(segments.c.portal_id == table.c.portal_id, segments.c.id == table.c.segment_id)
    return sa.select(table, segments.c.name.label("segment")).join_from(table, segments, on)


def mirror(config) -> tuple[dict[int, dict], dict[int, dict]]:
    """The state store's mirror of a CRM: (customers by id, deals by id), each row as a dict."""
    import sqlalchemy as sa

    from connector.pipeline import open_store
    from connector.store import customers, deals

    store = open_store(config)
    try:
        with store.engine.connect() as conn:
            cust = {r.id: dict(r._mapping) for r in conn.execute(sa.select(customers))}
            deal = {r.id: dict(r._mapping) for r in conn.execute(sa.select(deals))}
    finally:
        store.close()
    return cust, deal


def ledger(config) -> list:
    """Every row of the state store's action ledger (campaign tests)."""
    from connector.pipeline import open_store

    store = open_store(config)
    try:
        return store.ledger()
    finally:
        store.close()


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test, on the server `make test` starts
    (scripts/test-postgres.sh sets LIFECYCLE_TEST_POSTGRES_URL); dropped afterwards."""
    import os
    import uuid

    import sqlalchemy as sa

    base = os.environ.get("LIFECYCLE_TEST_POSTGRES_URL")
    if not base:
        message = (
            "LIFECYCLE_TEST_POSTGRES_URL is not set: run `make test`, or "
            "`scripts/test-postgres.sh run -- .venv/bin/python -m pytest`, which start a PostgreSQL server"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    admin_url = sa.make_url(base)
    name = f"lifecycle_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
