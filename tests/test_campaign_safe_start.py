"""Issue 18 over HTTP against both sandboxes: a new campaign's first batch waits for approval;
include_current_members acts once on the members already in the segment; max_actions_per_run caps a run
(oldest entry first, the rest next run); ``sync --dry-run`` pulls and plans but writes nothing to the CRM;
holdout members get no action and are recorded as such."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from connector.campaigns import in_holdout
from connector.cli import main
from connector.config import load_config
from connector.pipeline import open_store, sync
from tests.test_campaigns_e2e import CRMS
from tests.conftest import ledger

ROOT = Path(__file__).resolve().parents[1]

WINBACK = """
[[campaign]]
name = "winback"
segment = "status.former"
on_enter = [{{ action = "call_task", title = "Call {{name}}: win back", description = "Script", due_in_days = 2 }}]
{extra}
"""


def write(folder: Path, crm, handle, campaigns: str, tail: str = "") -> Path:
    path = folder / "lifecycle.toml"
    path.write_text("[crm]\n" + crm.crm_section(handle) + 'overlap_minutes = 0\n[state]\nurl = "sqlite:///state.db"\n'
                    + campaigns + tail, encoding="utf-8")
    return path


def writes(crm, handle) -> list[str]:
    counters = handle.counters()
    if crm.name == "amocrm":
        return [r for r in counters["by_route"] if not r.startswith("GET")]
    return [m for m in counters["methods"] if m.endswith((".add", ".update", ".delete", ".complete", ".start"))]


def tasks_in_crm(crm, handle) -> int:
    return sum(1 for kind, _ in crm.objects(handle) if kind == "task")


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_a_new_campaign_waits_for_approval_then_sends_its_first_batch(tmp_path, crm, capsys):
    with crm.start(generate=(80, 240)) as handle:
        path = write(tmp_path, crm, handle, WINBACK.format(extra=""))
        config = load_config(path)
        summary = sync(config).summary()
        rows = ledger(config)
        assert rows and {r.status for r in rows} <= {"waiting", "skipped"}
        waiting = [r for r in rows if r.status == "waiting"]
        assert waiting and summary["actions_awaiting_approval"] == len(waiting) and summary["actions_created"] == 0
        assert crm.objects(handle) == Counter()  # nothing sent on its own
        # plan shows what waits (a process: no connectorx in this test process)
        plan = subprocess.run([sys.executable, "-m", "connector.cli", "plan", "--config", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert plan.returncode == 0, plan.stderr
        assert "waiting for approval" in plan.stdout and "lifecycle campaigns approve winback" in plan.stdout
        assert main(["campaigns", "approve", "nosuch", "--config", str(path)]) == 2
        assert "campaign 'nosuch' is not in the config" in capsys.readouterr().err
        assert main(["campaigns", "approve", "winback", "--config", str(path)]) == 0
        assert f"{len(waiting)} waiting actions" in capsys.readouterr().out
        time.sleep(1.1)
        after = sync(config).summary()
        assert after["actions_created"] == len(waiting)
        assert tasks_in_crm(crm, handle) == len(waiting)
        assert {r.status for r in ledger(config)} <= {"done", "skipped"}


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_include_current_members_acts_once_on_the_existing_members_and_never_again(tmp_path, crm):
    with crm.start(generate=(80, 240)) as handle:
        path = write(tmp_path, crm, handle, "")
        sync(load_config(path))  # the portal syncs without the campaign: everyone is already a member
        store = open_store(load_config(path))
        members = store.membership_frame()
        store.close()
        former = set(members.filter(members["segment"] == "status.former")["customer_id"].to_list())
        assert former
        # added without include_current_members: the current members get nothing
        path = write(tmp_path, crm, handle, WINBACK.format(extra="auto_approve = true"))
        time.sleep(1.1)
        assert sync(load_config(path)).summary()["actions_created"] == 0
        # the same campaign with include_current_members (under a new name: added now)
        path = write(tmp_path, crm, handle, WINBACK.replace('"winback"', '"winback2"').format(
            extra="auto_approve = true\ninclude_current_members = true"))
        plan = subprocess.run([sys.executable, "-m", "connector.cli", "plan", "--config", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert plan.returncode == 0, plan.stderr
        assert f"include_current_members = true, {len(former)} actions for customers already in" in plan.stdout
        time.sleep(1.1)
        first = sync(load_config(path)).summary()
        acted = {r.customer_id for r in ledger(load_config(path)) if r.campaign == "winback2" and r.status == "done"}
        assert first["actions_created"] == len(former) and acted == former
        time.sleep(1.1)
        again = sync(load_config(path)).summary()
        assert again["actions_planned"] == 0 and again["actions_created"] == 0
        assert tasks_in_crm(crm, handle) == len(former)  # once each


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_a_capped_run_sends_exactly_the_cap_and_the_rest_next_time(tmp_path, crm):
    with crm.start(generate=(80, 240)) as handle:
        path = write(tmp_path, crm, handle, WINBACK.format(extra="auto_approve = true\nmax_actions_per_run = 5"))
        config = load_config(path)
        sync(config)
        owed = [r for r in ledger(config) if r.status != "skipped"]
        assert len(owed) > 10
        assert tasks_in_crm(crm, handle) == 5
        done = sorted(r.key for r in ledger(config) if r.status == "done")
        assert done == sorted(r.key for r in owed)[:5]  # same entry day: oldest first, then by key
        time.sleep(1.1)
        sync(config)
        assert tasks_in_crm(crm, handle) == 10
        # the global cap applies over all campaigns
        path = write(tmp_path, crm, handle, WINBACK.format(extra="auto_approve = true"), "[executor]\nmax_actions_per_run = 3\n")
        time.sleep(1.1)
        sync(load_config(path))
        assert tasks_in_crm(crm, handle) == 13


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_sync_dry_run_pulls_and_plans_but_writes_nothing_to_the_crm(tmp_path, crm):
    with crm.start(generate=(80, 240)) as handle:
        path = write(tmp_path, crm, handle, WINBACK.format(extra="auto_approve = true"))
        handle.reset_counters()
        proc = subprocess.run([sys.executable, "-m", "connector.cli", "sync", "--dry-run", "--config", str(path),
                               "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert rows and {r["campaign"] for r in rows} == {"winback"}
        assert writes(crm, handle) == []  # the CRM's write counters stay at zero
        config = load_config(path)
        assert ledger(config) == []
        store = open_store(config)
        try:
            assert store.membership_frame().height == 0  # no membership stored: the next sync still owes them
            assert store.user_names()  # the CRM's users, for names in the plan
        finally:
            store.close()
        # the first plan of a portal never pulled pulls too; its table names reps
        table = subprocess.run([sys.executable, "-m", "connector.cli", "plan", "--config", str(path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert table.returncode == 0, table.stderr
        names = ("Sandbox",) if crm.name == "bitrix24" else tuple(u["name"] for u in handle.state()["users"])
        assert any(n in table.stdout for n in names)
        assert writes(crm, handle) == []


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_holdout_members_get_no_action_and_are_recorded(tmp_path, crm):
    with crm.start(generate=(120, 360)) as handle:
        path = write(tmp_path, crm, handle, WINBACK.format(extra="auto_approve = true\nholdout_percent = 40"))
        config = load_config(path)
        sync(config)
        rows = ledger(config)
        held = {r.customer_id for r in rows if r.status == "holdout"}
        done = {r.customer_id for r in rows if r.status == "done"}
        assert held and done and not held & done
        assert all(in_holdout(c, "winback", 40) for c in held) and not any(in_holdout(c, "winback", 40) for c in done)
        assert tasks_in_crm(crm, handle) == len(done)
        assert all(r.skip_reason == "holdout group" for r in rows if r.status == "holdout")


def test_holdout_is_deterministic_and_near_its_share():
    ids = range(1, 20001)
    share = sum(in_holdout(i, "c", 20) for i in ids) / 20000
    assert 0.18 < share < 0.22
    assert [in_holdout(i, "c", 20) for i in ids] == [in_holdout(i, "c", 20) for i in ids]
    assert [in_holdout(i, "c", 20) for i in ids] != [in_holdout(i, "d", 20) for i in ids]
    assert not any(in_holdout(i, "c", 0) for i in ids)
