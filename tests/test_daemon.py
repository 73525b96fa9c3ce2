"""`lifecycle run` as a subprocess against the Bitrix24 sandbox: scheduled syncs, a webhook for a won deal
moving its customer within the debounce window, wrong tokens and malformed bodies refused, the lock,
/metrics in Prometheus format, JSON logs without secrets, and SIGTERM mid-sync."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.campaigns import marker
from connector.config import load_config
from connector.pipeline import open_store, sync, today_in
from sandbox.bitrix24 import running_portal

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "app-token-3f9a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, portal, *, every: str = "1h", extra: str = "") -> Path:
    path = folder / "lifecycle.toml"
    path.write_text(
        f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
        f'overlap_minutes = 0\nreconcile_hours = 0\n[state]\nurl = "sqlite:///state.db"\n'
        f'[writeback]\ntag_segments = ["lifecycle.*", "status.*"]\n'
        f'[schedule]\nevery = "{every}"\n'
        f'[daemon]\nhost = "127.0.0.1"\ndebounce_seconds = 1\nbitrix24_application_token = "{TOKEN}"\n' + extra,
        encoding="utf-8",
    )
    return path


@contextmanager
def daemon(config_path: Path, port: int):
    log = open(config_path.parent / "daemon.log", "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "run", "--config", str(config_path), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, "the daemon never answered /healthz")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def post(port: int, path: str, fields: dict[str, str] | bytes) -> tuple[int, str]:
    data = fields if isinstance(fields, bytes) else urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(check, seconds: float, message: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def metric(port: int, name: str, **labels) -> float:
    _, text = get(port, "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def runs(config_dir: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(config_dir / "state.db") as conn:
        return conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()


def event(name: str, record: int, token: str = TOKEN) -> dict[str, str]:
    return {"event": name, "data[FIELDS][ID]": str(record), "ts": str(int(time.time())),
            "auth[domain]": "portal.bitrix24.ru", "auth[client_endpoint]": "https://portal.bitrix24.ru/rest/",
            "auth[member_id]": "abc", "auth[application_token]": token}


def test_schedule_metrics_health_and_logs(tmp_path):
    with running_portal(generate=(60, 180), time_scale=50) as portal:
        path = write_config(tmp_path, portal, every="2s")
        port = free_port()
        with daemon(path, port):
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 3, 60, "no scheduled syncs")
            assert get(port, "/readyz")[0] == 200
            _, text = get(port, "/metrics")
            names = {f.name for f in text_string_to_metric_families(text)}
            assert {"lifecycle_syncs", "lifecycle_sync_duration_seconds", "lifecycle_api_requests",
                    "lifecycle_segment_members", "lifecycle_actions_applied"} <= names
            assert metric(port, "lifecycle_segment_members", segment="status.prospect") > 0
            assert metric(port, "lifecycle_api_requests_total", purpose="pull") > 0
        assert [s for _, s in runs(tmp_path)].count("ok") >= 3
        lines = (tmp_path / "daemon.log").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records and all({"ts", "level", "msg"} <= r.keys() for r in records)
        assert any(r.get("run_id") and r.get("portal") == "default" for r in records)
        code = portal.info["webhook_code"]
        assert all(code not in line and TOKEN not in line for line in lines)


def test_a_webhook_for_a_won_deal_moves_its_customer_within_the_debounce_window(tmp_path):
    with running_portal(generate=(60, 180), time_scale=50) as portal:
        path = write_config(tmp_path, portal)  # hourly schedule: only the webhook can trigger the second sync
        port = free_port()
        with daemon(path, port):
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 1, 60, "no first sync")
            state = portal.state()
            buyers = {int(c) for d in state["deals"] for c in d.get("CONTACT_IDS") or []}
            prospect = next(int(c["ID"]) for c in state["contacts"] if int(c["ID"]) not in buyers)
            today = today_in("Europe/Moscow").isoformat()
            time.sleep(1.1)
            status, body = portal.call("crm.deal.add", {"fields": {"TITLE": "Won today", "CONTACT_IDS": [prospect],
                                                                   "STAGE_ID": "WON", "OPPORTUNITY": 5000, "CLOSEDATE": today}})
            deal_id = int(body["result"])
            # refused: wrong token, then a body that is not an outbound event
            assert post(port, "/webhooks/bitrix24", event("ONCRMDEALADD", deal_id, token="wrong"))[0] == 401
            assert post(port, "/webhooks/bitrix24", b"\xff\xfe garbage")[0] == 400
            assert post(port, "/webhooks/bitrix24", event("ONCRMLEADADD", deal_id))[0] == 400
            time.sleep(2)
            assert metric(port, "lifecycle_syncs_total") == 1  # nothing refused triggered a sync
            sent = time.time()
            assert post(port, "/webhooks/bitrix24", event("ONCRMDEALADD", deal_id))[0] == 200

            options = {}

            def moved_and_tagged() -> bool:
                with sqlite3.connect(f"file:{tmp_path / 'state.db'}?mode=ro", uri=True, timeout=1) as conn:
                    hit = conn.execute("SELECT 1 FROM membership m JOIN segments s ON s.portal_id = m.portal_id AND "
                                       "s.id = m.segment_id WHERE s.name = 'lifecycle.new_active' AND m.customer_id = ?",
                                       (prospect,)).fetchone()
                if not hit:
                    return False
                state = portal.state()
                field = next(f for f in state["userfields"]["contact"] if f["FIELD_NAME"] == "UF_CRM_LIFECYCLE")
                options.update({str(o["ID"]): o["XML_ID"] for o in field["LIST"]})
                contact = next(c for c in state["contacts"] if int(c["ID"]) == prospect)
                return "lifecycle.new_active" in {options.get(str(v)) for v in contact.get("UF_CRM_LIFECYCLE") or []}

            wait_for(moved_and_tagged, 60, "the customer did not move and get tagged after the webhook")
            assert time.time() - sent < 60
            assert metric(port, "lifecycle_webhooks_total", source="bitrix24", result="accepted") == 1
            assert metric(port, "lifecycle_webhooks_total", source="bitrix24", result="unauthorized") == 1
        config = load_config(path)
        store = open_store(config)
        try:
            members = store.membership_frame()
        finally:
            store.close()
        assert prospect in members.filter(members["segment"] == "lifecycle.new_active")["customer_id"].to_list()


def test_the_lock_keeps_a_second_process_from_syncing_the_same_portal(tmp_path):
    with running_portal(generate=(30, 90), time_scale=50) as portal:
        path = write_config(tmp_path, portal)
        config = load_config(path)
        store = open_store(config)
        assert store.try_lock("another-process", 120)
        try:
            port = free_port()
            with daemon(path, port):
                wait_for(lambda: metric(port, "lifecycle_syncs_skipped_locked_total") >= 1, 60, "the lock was not seen")
                assert runs(tmp_path) == []
        finally:
            store.release_lock("another-process")
            store.close()


def test_sigterm_mid_sync_exits_cleanly_and_the_next_run_completes_without_duplicates(tmp_path):
    campaign = """
[[campaign]]
name = "winback"
segment = "status.former"
auto_approve = true
on_enter = [{ action = "call_task", title = "Call {name}", description = "Script", due_in_days = 2 }]
[executor]
batch_size = 2
"""
    with running_portal(generate=(200, 600), time_scale=50) as portal:
        path = write_config(tmp_path, portal, extra=campaign)
        portal.faults(kind="slow_after", method="batch", probability=0.5, delay=0.2)
        port = free_port()
        with daemon(path, port) as proc:
            def in_flight() -> bool:
                try:
                    with sqlite3.connect(f"file:{tmp_path / 'state.db'}?mode=ro", uri=True, timeout=0.2) as conn:
                        return conn.execute("SELECT COUNT(*) FROM actions WHERE status IN ('sending', 'done')").fetchone()[0] > 4
                except sqlite3.Error:
                    return False

            wait_for(in_flight, 60, "the campaign never started")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        statuses = [s for _, s in runs(tmp_path)]
        assert statuses[-1] == "interrupted", statuses
        portal.clear_faults()
        config = load_config(path)
        store = open_store(config)
        try:
            rows = store.ledger()
            waiting = [r for r in rows if r["status"] in ("planned", "sending")]
        finally:
            store.close()
        assert waiting, "the interruption should leave work for the next run"
        sync(config)
        store = open_store(config)
        try:
            want = Counter(marker(r["key"]) for r in store.ledger() if r["status"] != "skipped" and not r["action"].startswith("close_"))
            assert not store.ledger(["planned", "sending", "failed"])
        finally:
            store.close()
        have = Counter(m for t in portal.state()["tasks"]  # the marker in XML_ID (earlier versions: in the description)
                       for m in __import__("re").findall(r"\[(lc[0-9a-f]{12})\]", t["DESCRIPTION"] + f"[{t.get('XML_ID') or ''}]"))
        assert have == want and all(n == 1 for n in have.values())


def test_amocrm_webhooks_need_the_secret_path_and_trigger_a_sync(tmp_path):
    from sandbox.amocrm import running_account

    with running_account(generate=(30, 90)) as acct:
        path = tmp_path / "lifecycle.toml"
        path.write_text(
            f'[crm]\nkind = "amocrm"\nbase_url = "{acct.info["base_url"]}"\naccess_token = "{acct.info["access_token"]}"\n'
            'overlap_minutes = 0\n[state]\nurl = "sqlite:///state.db"\n[schedule]\nevery = "1h"\n'
            '[daemon]\nhost = "127.0.0.1"\ndebounce_seconds = 1\namocrm_webhook_secret = "s3cr3t-path"\n',
            encoding="utf-8")
        port = free_port()
        with daemon(path, port):
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 1, 60, "no first sync")
            body = {"leads[update][0][id]": "5", "leads[update][0][status_id]": "142", "account[subdomain]": "demo",
                    "account[id]": "1"}
            assert post(port, "/webhooks/amocrm/wrong", body)[0] == 401
            assert post(port, "/webhooks/amocrm/s3cr3t-path", {"hello": "world"})[0] == 400
            assert post(port, "/webhooks/bitrix24", event("ONCRMDEALADD", 5))[0] == 404  # not this CRM
            time.sleep(2)
            assert metric(port, "lifecycle_syncs_total") == 1
            assert post(port, "/webhooks/amocrm/s3cr3t-path", body)[0] == 200
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 2, 60, "the webhook did not trigger a sync")
        lines = (tmp_path / "daemon.log").read_text(encoding="utf-8")
        assert "s3cr3t-path" not in lines and acct.info["access_token"] not in lines


def test_a_steady_stream_of_webhooks_cannot_postpone_the_sync_past_max_wait(tmp_path):
    with running_portal(generate=(30, 90), time_scale=50) as portal:
        path = write_config(tmp_path, portal)  # hourly schedule: only webhooks trigger the second sync
        path.write_text(path.read_text(encoding="utf-8").replace(
            "debounce_seconds = 1\n", "debounce_seconds = 2\nmax_wait_seconds = 4\n"), encoding="utf-8")
        port = free_port()
        with daemon(path, port):
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 1, 60, "no first sync")
            sent: list[float] = []
            deadline = time.monotonic() + 30
            while metric(port, "lifecycle_syncs_total") < 2 and time.monotonic() < deadline:
                assert post(port, "/webhooks/bitrix24", event("ONCRMDEALUPDATE", 1))[0] == 200
                sent.append(time.monotonic())
                time.sleep(0.5)
            assert metric(port, "lifecycle_syncs_total") >= 2, "the webhook stream postponed the sync for 30 s"
            gaps = [b - a for a, b in zip(sent, sent[1:])]
            assert gaps and max(gaps) < 2, gaps  # never quiet for debounce_seconds: only max_wait could start it
            assert sent[-1] - sent[0] >= 3.5  # not before max_wait (4 s after the first webhook, give or take a post)
        records = [json.loads(line) for line in (tmp_path / "daemon.log").read_text(encoding="utf-8").splitlines()
                   if line.startswith("{")]
        assert any("max_wait_seconds" in r["msg"] for r in records)
        assert any(r["msg"] == "sync (webhook) started" for r in records)
