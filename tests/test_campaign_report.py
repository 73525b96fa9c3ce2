"""Issue 18, measured results, over HTTP against both sandboxes: a campaign with a holdout group on a synthetic
portal where the test itself drives the purchases after the campaign acted. Where the contacted customers buy
more, ``lifecycle report --campaigns`` shows the uplift with a 95 % interval above zero; where both groups buy
alike, the interval covers zero."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from connector.campaign_report import newcombe, welch, Arm, wilson
from connector.config import load_config
from connector.pipeline import open_store, sync
from tests.test_campaigns_e2e import CRMS

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[[campaign]]
name = "effect"
segment = "status.former"
auto_approve = true
holdout_percent = 50
on_enter = [{ action = "call_task", title = "Call {name}", description = "Script", due_in_days = 2 }]

[[campaign]]
name = "noeffect"
segment = "status.current"
auto_approve = true
holdout_percent = 50
attribution_days = 14
on_enter = [{ action = "call_task", title = "Call {name}", description = "Script", due_in_days = 2 }]
"""


def buy(crm, handle, purchases: list[tuple[int, float]], day: date) -> None:
    """Won deals (Bitrix24) / won leads (amoCRM) closed on ``day`` for these (customer, amount), through the API."""
    if crm.name == "bitrix24":
        handle.limits(enabled=False)  # the test's own writes, not the connector's, so the bucket is not theirs
        try:
            for customer_id, amount in purchases:
                status, answer = handle.call("crm.deal.add", {"fields": {
                    "TITLE": "Order", "STAGE_ID": "WON", "CONTACT_ID": customer_id, "OPPORTUNITY": amount,
                    "CLOSEDATE": day.isoformat()}})
                assert status == 200 and int(answer["result"]) > 0, answer
        finally:
            handle.limits(enabled=True)
        return
    for start in range(0, len(purchases), 50):
        for _ in range(20):  # the account's rate limit counts the connector's requests too: wait out a 429
            status, body = handle.api("POST", "/api/v4/leads", json=[{
                "name": "Order", "price": int(amount), "status_id": 142, "closed_at": int(time.time()),
                "_embedded": {"contacts": [{"id": customer_id, "is_main": True}]}}
                for customer_id, amount in purchases[start:start + 50]])
            if status != 429:
                break
            time.sleep(0.5)
        assert status == 200, body


def report(path: Path, fmt: str = "json") -> str:
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "report", "--campaigns", "--config", str(path),
                           "--format", fmt], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_report_shows_the_uplift_where_contacted_customers_buy_more_and_covers_zero_where_not(tmp_path, crm):
    with crm.start(generate=(400, 1200)) as handle:
        path = tmp_path / "lifecycle.toml"
        path.write_text("[crm]\n" + crm.crm_section(handle) + 'overlap_minutes = 0\n[state]\nurl = "sqlite:///state.db"\n'
                        + CONFIG, encoding="utf-8")
        config = load_config(path)
        result = sync(config)
        store = open_store(config)
        rows = store.ledger()
        store.close()
        arms: dict[tuple[str, str], list[int]] = {}
        for r in rows:
            if r.status in ("done", "holdout"):
                arms.setdefault((r.campaign, r.status), []).append(r.customer_id)
        for key in (("effect", "done"), ("effect", "holdout"), ("noeffect", "done"), ("noeffect", "holdout")):
            assert len(arms.get(key, [])) >= 25, (key, {k: len(v) for k, v in arms.items()})
        today = result.as_of
        # the test drives the portal: contacted former customers buy far more often than their holdout group ...
        purchases = [(cid, 1000.0) for i, cid in enumerate(sorted(arms[("effect", "done")])) if i % 10 < 6]
        purchases += [(cid, 1000.0) for i, cid in enumerate(sorted(arms[("effect", "holdout")])) if i % 10 < 1]
        # ... and current customers buy alike in both groups
        for arm in ("done", "holdout"):
            purchases += [(cid, 500.0) for i, cid in enumerate(sorted(arms[("noeffect", arm)])) if i % 3 == 0]
        buy(crm, handle, purchases, today)
        if crm.name == "amocrm":  # a rep closes one of the call tasks
            task_id = int(next(r.result["id"] for r in rows if r.campaign == "effect" and r.status == "done"))
            for _ in range(20):  # wait out a 429
                status, body = handle.api("PATCH", "/api/v4/tasks", json=[{"id": task_id, "is_completed": True}])
                if status != 429:
                    break
                time.sleep(0.5)
            assert status == 200, body
        time.sleep(1.1)
        sync(config)  # pulls the purchases
        results = {r["campaign"]: r for r in json.loads(report(path))}
        effect, none = results["effect"], results["noeffect"]
        assert effect["contacted"]["customers"] == len(arms[("effect", "done")])
        assert effect["holdout"]["customers"] == len(arms[("effect", "holdout")])
        s = effect["share_difference"]
        assert 0.35 < s["difference"] < 0.65 and s["ci95_low"] > 0  # the uplift, its interval above zero
        assert effect["revenue_difference"]["ci95_low"] > 0
        assert effect["contacted"]["revenue_per_customer"] > effect["holdout"]["revenue_per_customer"]
        n = none["share_difference"]
        assert n["ci95_low"] < 0 < n["ci95_high"]  # no effect: the interval covers zero
        assert none["revenue_difference"]["ci95_low"] < 0 < none["revenue_difference"]["ci95_high"]
        closed = effect["call_tasks_closed"]
        assert closed is not None and closed["created"] == len(arms[("effect", "done")])
        assert closed["closed"] == (1 if crm.name == "amocrm" else 0)
        table = list(csv.DictReader(io.StringIO(report(path, "csv"))))
        assert {r["campaign"] for r in table} == {"effect", "noeffect"} and float(table[0]["share_ci95_low"]) > 0
        assert "Newcombe" in report(path, "table")


def test_interval_formulas_match_known_values():
    # Newcombe (1998), table II example: 56/70 vs 48/80 -> difference 0.2, hybrid score CI 0.0524 .. 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert abs(d - 0.2) < 1e-9 and abs(lo - 0.0524) < 5e-4 and abs(hi - 0.3339) < 5e-4
    lo1, hi1 = wilson(0, 10)
    assert lo1 == 0 and 0.27 < hi1 < 0.28
    a, b = Arm(customers=4, bought=0, revenue=10.0, revenue_sq=30.0), Arm(customers=4, bought=0, revenue=10.0, revenue_sq=30.0)
    d2, lo2, hi2 = welch(a, b)
    assert d2 == 0 and lo2 < 0 < hi2
