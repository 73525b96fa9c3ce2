"""The state gauges the alert rules read (deploy/prometheus-alerts.yml), from real syncs of the daemon
against the amoCRM sandbox, in-process: the daemon's own sync method, then its metrics text parsed with
prometheus_client's parser. Checked against the state store and the sandbox, not against themselves."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.config import load_config
from connector.daemon import Daemon
from connector.metrics import Metrics
from connector.pipeline import compute, open_store, today_in
from sandbox.amocrm import running_account

CAMPAIGN = """
[kpi]
active_share_target = 0.99
[[campaign]]
name = "winback"
segment = "status.former"
auto_approve = true
on_enter = [{ action = "call_task", title = "Call {name}", due_in_days = 2 }]
"""


def write_config(folder: Path, acct, *, oauth: bool, extra: str = "") -> Path:
    info = acct.info
    if oauth:
        auth = (f'client_id = "{info["client_id"]}"\nclient_secret = "{info["client_secret"]}"\n'
                f'redirect_uri = "{info["redirect_uri"]}"\nauthorization_code = "{info["authorization_code"]}"\n')
    else:
        auth = f'access_token = "{info["access_token"]}"\n'
    path = folder / "lifecycle.toml"
    # The sandboxes here run without limits: the client's own limiter at 70 instead of 7 a second (not what
    # is tested here) lets the ledger's ~200 look-ups take seconds instead of half a minute.
    path.write_text(f'[crm]\nkind = "amocrm"\nname = "shop"\nbase_url = "{info["base_url"]}"\n{auth}overlap_minutes = 0\n'
                    'requests_per_second = 70\n'
                    f'[state]\nurl = "sqlite:///state.db"\n{extra}', encoding="utf-8")
    return path


def bare_daemon(config) -> Daemon:
    """The daemon's sync machinery without its HTTP server (the server is not what is tested here)."""
    d = Daemon.__new__(Daemon)
    d.config, d.metrics = config, Metrics(config.crm.name, config.crm.kind)
    d.holder, d.stop, d.last_status = "test:1:1", threading.Event(), None
    d.changed_at, d.changed_lock = None, threading.Lock()
    return d


def samples(metrics: Metrics) -> list:
    text = metrics.render().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(metrics: Metrics, name: str, **labels) -> float | None:
    found = [s.value for s in samples(metrics) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def test_kpi_ledger_tokens_and_failed_syncs_follow_real_syncs(tmp_path):
    with running_account(generate=(200, 600), limits=False) as acct:
        config = load_config(write_config(tmp_path, acct, oauth=True, extra=CAMPAIGN))
        d = bare_daemon(config)
        m = d.metrics
        # Task creation fails (a 500 on every POST of tasks): the sync completes, its actions are failed.
        acct.faults(kind="status", status=500, path="/api/v4/tasks", method="POST")
        before = time.time()
        assert d.sync("start") == "ok"

        store = open_store(config)
        try:
            comp = compute(store, config, today_in(config.crm.timezone))
            failed = sum(1 for r in store.ledger() if r["status"] == "failed")
            token = store.oauth_token()
        finally:
            store.close()
        p = {"portal": "shop"}
        assert value(m, "lifecycle_customers", **p) == comp.customers == 200
        assert value(m, "lifecycle_buyers", **p) == comp.buyers > 0
        assert value(m, "lifecycle_active_share", **p) == pytest.approx(comp.active_share)
        assert value(m, "lifecycle_active_share_target", **p) == 0.99
        assert value(m, "lifecycle_active_share", **p) < 0.99  # the KPI alert's condition holds
        for segment, n in comp.counts.items():
            assert value(m, "lifecycle_segment_members", segment=segment, **p) == n
        assert failed > 0 and value(m, "lifecycle_ledger_actions", status="failed", **p) == failed
        assert value(m, "lifecycle_api_errors_total", kind="action", crm="amocrm", **p) == failed
        assert value(m, "lifecycle_ledger_actions", status="done", **p) == 0
        assert value(m, "lifecycle_ledger_actions", status="pending", **p) == 0
        # the OAuth pair from the code exchange: access 24 h, refresh 3 months from its rotation
        assert value(m, "lifecycle_token_expiry_timestamp_seconds", token="access", **p) == token["expires_at"]
        refresh = value(m, "lifecycle_token_expiry_timestamp_seconds", token="refresh", **p)
        assert before + 89 * 86400 < refresh < time.time() + 91 * 86400
        assert value(m, "lifecycle_consecutive_failed_syncs", **p) == 0
        assert not [s.name for s in samples(m) if s.name.endswith("_created")]
        acct.clear_faults()

        # The CRM refuses every read: syncs fail, counted in a row, also after a restart (the runs table).
        acct.faults(kind="expired_token", path="/api/v4/contacts")
        assert d.sync("schedule") == "failed"
        assert d.sync("schedule") == "failed"
        assert value(m, "lifecycle_consecutive_failed_syncs", **p) == 2
        restarted = Metrics("shop", "amocrm")
        restarted.refresh_state(config)
        assert value(restarted, "lifecycle_consecutive_failed_syncs", **p) == 2
        assert value(restarted, "lifecycle_ledger_actions", status="failed", **p) == failed
        acct.clear_faults()

        # The CRM is back: the failed actions are retried and created, the streak ends.
        assert d.sync("schedule") == "ok"
        assert value(m, "lifecycle_consecutive_failed_syncs", **p) == 0
        assert value(m, "lifecycle_ledger_actions", status="failed", **p) == 0
        assert value(m, "lifecycle_ledger_actions", status="done", **p) == failed


def test_a_long_lived_token_reports_its_own_expiry():
    import tempfile

    with running_account(generate=(20, 60), limits=False) as acct, tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp), acct, oauth=False))
        d = bare_daemon(config)
        assert d.sync("start") == "ok"
        payload = acct.info["access_token"].split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        assert value(d.metrics, "lifecycle_token_expiry_timestamp_seconds", portal="shop", token="long_lived") == exp
        assert value(d.metrics, "lifecycle_token_expiry_timestamp_seconds", portal="shop", token="access") is None


def test_audience_errors_count_the_last_sync_per_cabinet():
    m = Metrics("shop", "bitrix24")
    summary = {"customers": 5, "audiences": [
        {"cabinet": "yandex", "requests": 2, "message": "Yandex Audience answered 500; the rest waits for the next run"},
        {"cabinet": "yandex", "requests": 1, "message": None},
        {"cabinet": "vk", "requests": 1, "message": None}]}
    m.observe(summary)
    assert value(m, "lifecycle_audience_errors", portal="shop", cabinet="yandex") == 1
    assert value(m, "lifecycle_audience_errors", portal="shop", cabinet="vk") == 0
    m.observe({"customers": 5, "audiences": [{"cabinet": "yandex", "requests": 1, "message": None}]})
    assert value(m, "lifecycle_audience_errors", portal="shop", cabinet="yandex") == 0
    assert value(m, "lifecycle_audience_errors", portal="shop", cabinet="vk") is None  # no longer configured
    assert value(m, "lifecycle_api_errors_total", portal="shop", crm="yandex", kind="audience") == 1
