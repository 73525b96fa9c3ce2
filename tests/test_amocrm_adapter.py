"""amoCRM adapter end to end over HTTP against the sandbox account: the mirror equals the account and the
tags equal the tagged segments, through edits, deletions, token rotation, a crash right after a refresh,
injected 429/5xx/resets and a blocked account."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.amocrm.client import AmoError
from connector.config import load_config
from connector.pipeline import WritebackStopped, open_store, sync
from connector.store import membership
from tests.conftest import mirror, named_select
from sandbox.amocrm import running_account

ROOT = Path(__file__).resolve().parents[1]
TAGGED = ("lifecycle.", "status.")
LABELS = {"lifecycle.regular_asleep": "Regular, asleep", "status.former": "Former customer"}


def next_second() -> None:
    """updated_at has one-second resolution: let the clock pass the last run's start."""
    time.sleep(1.1)


def write_config(folder: Path, acct, *, oauth: bool = False, extra: str = "", crm_extra: str = "") -> Path:
    info = acct.info
    if oauth:
        auth = (
            f'client_id = "{info["client_id"]}"\nclient_secret = "{info["client_secret"]}"\n'
            f'redirect_uri = "{info["redirect_uri"]}"\nauthorization_code = "{info["authorization_code"]}"\n'
        )
    else:
        auth = f'access_token = "{info["access_token"]}"\n'
    labels = "\n".join(f'"{k}" = "{v}"' for k, v in LABELS.items())
    path = folder / "lifecycle.toml"
    path.write_text(
        f"""
[crm]
kind = "amocrm"
base_url = "{info["base_url"]}"
{auth}overlap_minutes = 0
{crm_extra}
[state]
url = "sqlite:///state.db"
[writeback]
tag_segments = ["lifecycle.*", "status.*"]
[labels]
{labels}
{extra}
""",
        encoding="utf-8",
    )
    return path


def wanted_tags(config) -> dict[int, set[str]]:
    """Labels of the tagged segments each customer is in, from the stored membership."""
    store = open_store(config)
    with store.engine.connect() as conn:
        named = named_select(membership).subquery()
        rows = conn.execute(sa.select(named.c.segment, named.c.customer_id)).all()
    store.close()
    out: dict[int, set[str]] = {}
    for segment, cid in rows:
        if segment.startswith(TAGGED):
            out.setdefault(cid, set()).add(LABELS.get(segment, segment))
    return out


def card_tags(state) -> dict[int, set[str]]:
    return {int(c["id"]): {t["name"] for t in (c.get("_embedded") or {}).get("tags") or []} for c in state["contacts"]}


MANAGED_PREFIXES = ("lifecycle.", "status.", *LABELS.values())


def managed(tags: set[str]) -> set[str]:
    return {t for t in tags if t.startswith(MANAGED_PREFIXES)}


def assert_mirror_equals_account(config, acct) -> dict:
    state = acct.state()
    cust, deal = mirror(config)
    assert sorted(cust) == sorted(int(c["id"]) for c in state["contacts"])
    assert sorted(deal) == sorted(int(d["id"]) for d in state["leads"])
    for lead in state["leads"]:
        mine = deal[int(lead["id"])]
        status = {142: "won", 143: "lost"}.get(int(lead["status_id"]), "open")
        assert (mine["status"], mine["amount"]) == (status, float(lead["price"] or 0)), lead["id"]
        contacts = (lead.get("_embedded") or {}).get("contacts") or []
        main = next((c for c in contacts if c.get("is_main")), contacts[0] if contacts else None)
        assert mine["contact_id"] == (int(main["id"]) if main else None), lead["id"]
        if status == "won":
            assert mine["closed_ts"] == int(lead["closed_at"]), lead["id"]
    tags = {cid: managed(t) for cid, t in card_tags(state).items()}
    wanted = wanted_tags(config)
    assert {k: v for k, v in tags.items() if v} == {k: v for k, v in wanted.items() if v}
    return state


@pytest.fixture
def acct():
    with running_account(generate=(200, 600)) as handle:
        yield handle


def test_first_and_incremental_sync_keep_mirror_and_tags_equal_to_the_account(tmp_path, acct):
    config = load_config(write_config(tmp_path, acct))
    first = sync(config).summary()
    # custom fields (1) + 200 contacts (1 page of 250) + 600 leads (3 pages): the lower bound plus one.
    assert first["pull_requests"] == 5
    assert first["tags_updated"] == len(wanted_tags(config)) > 0
    assert acct.counters()["http_status"].get("429", 0) == 0
    state = assert_mirror_equals_account(config, acct)

    next_second()
    sync(config)  # re-reads the contacts whose tags it just wrote (their updated_at moved), once
    next_second()
    acct.reset_counters()
    quiet = sync(config).summary()
    assert quiet["customers_upserted"] == 0 and quiet["deals_upserted"] == 0
    assert quiet["tags_updated"] == 0 and quiet["writeback_requests"] == 0
    # custom fields + one empty (204) page per list + the events page; no PATCH at all.
    assert quiet["pull_requests"] == 4
    assert not any(route.startswith("PATCH") for route in acct.counters()["by_route"])

    next_second()
    # A sleeping prospect buys, one contact is renamed, one contact and one lead are deleted in the UI.
    prospect = next(int(c["id"]) for c in state["contacts"]
                    if int(c["id"]) not in {int(x["id"]) for lead in state["leads"] for x in (lead.get("_embedded") or {}).get("contacts") or []})
    status, body = acct.api("POST", "/api/v4/leads", json=[{
        "name": "First order", "price": 4200, "status_id": 142, "closed_at": int(time.time()),
        "_embedded": {"contacts": [{"id": prospect, "is_main": True}]}}])
    assert status == 200, body
    new_lead = int(body["_embedded"]["leads"][0]["id"])
    renamed = int(state["contacts"][1]["id"])
    assert acct.api("PATCH", f"/api/v4/contacts/{renamed}", json={"name": "Renamed In UI"})[0] == 200
    gone_contact = int(state["contacts"][2]["id"])
    gone_lead = int(state["leads"][5]["id"])
    acct.delete("contacts", gone_contact)
    acct.delete("leads", gone_lead)
    acct.reset_counters()
    result = sync(config)
    summary = result.summary()
    assert summary["customers_deleted"] == 1 and summary["deals_deleted"] == 1
    assert summary["pull_requests"] <= 6
    cust, deal = mirror(config)
    assert new_lead in deal and deal[new_lead]["contact_id"] == prospect and deal[new_lead]["status"] == "won"
    assert cust[renamed]["name"] == "Renamed In UI"
    assert gone_contact not in cust and gone_lead not in deal
    assert_mirror_equals_account(config, acct)
    assert "lifecycle.new_active" in {s for s, _ in result.entered.filter(result.entered["customer_id"] == prospect).iter_rows()}


def test_tags_the_connector_did_not_set_are_never_removed(tmp_path, acct):
    state = acct.state()
    ids = [int(c["id"]) for c in state["contacts"][:30]]
    body = [{"id": i, "tags_to_add": [{"name": "VIP by hand"}, {"name": "lifecycle-ish"}]} for i in ids]
    assert acct.api("PATCH", "/api/v4/contacts", json=body)[0] == 200
    config = load_config(write_config(tmp_path, acct))
    sync(config)
    next_second()
    # Narrower columns move many customers between cells: managed tags are deleted and added.
    config = load_config(write_config(tmp_path, acct, extra="[segments.lifecycle]\nrecency_days = [5, 10]"))
    moved = sync(config).summary()
    assert moved["tags_updated"] > 0 and sum(moved["left"].values()) > 0
    after = card_tags(acct.state())
    for i in ids:
        assert {"VIP by hand", "lifecycle-ish"} <= after[i]
    assert_mirror_equals_account(config, acct)


def test_first_oauth_run_with_a_campaign_exchanges_the_code_once_for_every_client(tmp_path):
    # The campaign sink's client is made before the pull exchanges the single-use code; it must take the
    # stored pair instead of offering the spent code again (amoCRM: "Authorization code has been revoked").
    with running_account(generate=(60, 180), limits=False) as fresh:
        campaign = ('[[campaign]]\nname = "winback"\nsegment = "status.former"\nauto_approve = true\n'
                    'on_enter = [{ action = "call_task", title = "Call {name}", due_in_days = 2 }]\n')
        config = load_config(write_config(tmp_path, fresh, oauth=True, extra=campaign))
        result = sync(config)
        counters = fresh.counters()
        assert counters["by_route"]["POST /oauth2/access_token"] == 1
        assert result.summary()["actions_created"] > 0 and counters["by_route"]["POST /api/v4/tasks"] >= 1
        assert counters["http_status"].get("400") is None


def test_oauth_code_exchange_then_token_expiry_mid_run_rotates_and_persists(tmp_path, acct):
    config = load_config(write_config(tmp_path, acct, oauth=True))
    sync(config)
    store = open_store(config)
    first = store.oauth_token()
    store.close()
    assert first and first["refresh_token"]
    next_second()
    acct.expire_tokens()
    acct.reset_counters()
    sync(config)
    assert acct.counters()["oauth_refreshes"] == 1
    store = open_store(config)
    second = store.oauth_token()
    store.close()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert_mirror_equals_account(config, acct)
    # The code is single-use and was never needed again: a third run goes on with the rotated pair.
    next_second()
    acct.expire_tokens()
    sync(config)
    assert_mirror_equals_account(config, acct)


def test_a_crash_before_the_rotated_token_is_stored_loses_nothing(tmp_path, acct, monkeypatch):
    config = load_config(write_config(tmp_path, acct, oauth=True))
    sync(config)
    next_second()
    acct.expire_tokens()
    from connector.store import StateStore

    original = StateStore.save_oauth_token

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("killed between the token answer and the write")

    monkeypatch.setattr(StateStore, "save_oauth_token", crash)
    with pytest.raises(KeyboardInterrupt):
        sync(config)
    monkeypatch.setattr(StateStore, "save_oauth_token", original)
    # The old refresh token still works: the new pair was never used.
    sync(config)
    assert_mirror_equals_account(config, acct)


def test_a_process_killed_right_after_a_refresh_resumes_with_the_stored_token(tmp_path, acct):
    config_path = write_config(tmp_path, acct, oauth=True)
    config = load_config(config_path)
    sync(config)
    store = open_store(config)
    before = store.oauth_token()["refresh_token"]
    store.close()
    next_second()
    acct.expire_tokens()
    acct.faults(kind="slow", path="/api/v4/leads", delay=60)  # the run hangs after its refresh
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "sync", "--config", str(config_path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            store = open_store(config)
            now = store.oauth_token()["refresh_token"]
            store.close()
            if now != before:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run never refreshed its token")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    acct.clear_faults()
    acct.reset_counters()
    sync(config)
    assert acct.counters()["oauth_refreshes"] == 0  # the stored access token is used, not a new refresh
    assert_mirror_equals_account(config, acct)


def test_injected_faults_end_in_the_same_state_as_a_clean_run(tmp_path):
    with running_account(generate=(300, 900), seed=11) as clean, running_account(generate=(300, 900), seed=11) as faulty:
        (tmp_path / "clean").mkdir()
        (tmp_path / "faulty").mkdir()
        clean_config = load_config(write_config(tmp_path / "clean", clean))
        faulty_config = load_config(write_config(tmp_path / "faulty", faulty, oauth=True))
        sync(clean_config)
        faulty.faults(kind="status", status=500, probability=0.04)
        faulty.faults(kind="status", status=502, probability=0.02)
        faulty.faults(kind="reset", probability=0.02)
        faulty.faults(kind="too_many_requests", probability=0.02, retry_after=0.2)
        faulty.faults(kind="expired_token", probability=0.02)
        sync(faulty_config)
        counters = faulty.counters()
        assert sum(counters["faults"].values()) > 0
        faulty.clear_faults()
        assert_mirror_equals_account(faulty_config, faulty)
        assert card_tags(faulty.state()) == card_tags(clean.state())
        clean_m, faulty_m = mirror(clean_config), mirror(faulty_config)
        strip = lambda rows: {k: {c: v for c, v in r.items() if c not in ("updated_at", "fields")} for k, r in rows.items()}  # noqa: E731
        assert strip(clean_m[0]) == strip(faulty_m[0]) and strip(clean_m[1]) == strip(faulty_m[1])


def test_a_blocked_account_stops_the_run_at_once_with_a_clear_error(tmp_path):
    with running_account(generate=(20, 40), rate_limit=1, block_after=1) as acct:
        statuses = [acct.api("GET", "/api/v4/account")[0] for _ in range(5)]  # someone else hammered it
        assert statuses[-1] == 403
        config = load_config(write_config(tmp_path, acct))
        acct.reset_counters()
        with pytest.raises(AmoError, match="blocked"):
            sync(config)
        assert acct.counters()["http_requests"] == 1  # no retry: more requests would prolong the block
        store = open_store(config)
        run = store.last_runs(1)[0]
        store.close()
        assert run["status"] == "failed" and acct.info["access_token"] not in json.dumps(run, default=str)


def test_a_block_during_the_write_back_sends_no_further_batch_and_the_next_run_writes_the_rest(tmp_path, acct):
    path = write_config(tmp_path, acct)
    path.write_text(path.read_text(encoding="utf-8").replace(
        "[writeback]\n", "[writeback]\nbatches_in_flight = 1\n"), encoding="utf-8")
    config = load_config(path)
    acct.faults(kind="status", status=403, path="/api/v4/contacts", method="PATCH", count=1)
    acct.reset_counters()
    with pytest.raises(WritebackStopped, match="blocked") as stopped:
        sync(config)
    assert acct.info["access_token"] not in str(stopped.value)
    patches = {route: n for route, n in acct.counters()["by_route"].items() if route.startswith("PATCH")}
    assert sum(patches.values()) == 1, patches  # the refused batch only: no later batch was sent
    assert len(wanted_tags(config)) > 50  # more than one batch was planned
    store = open_store(config)
    run = store.last_runs(1)[0]
    store.close()
    assert run["status"] == "failed" and "blocked" in run["error"]
    assert acct.info["access_token"] not in json.dumps(run, default=str)

    acct.clear_faults()  # the block is over: the next run writes every card, nothing twice
    next_second()
    assert sync(config).summary()["tags_failed"] == 0
    assert_mirror_equals_account(config, acct)


def test_429_is_waited_out_using_the_body_retry_after(tmp_path, acct):
    config = load_config(write_config(tmp_path, acct))
    acct.faults(kind="too_many_requests", path="/api/v4/leads", count=3, retry_after=0.3)
    started = time.monotonic()
    sync(config)
    assert time.monotonic() - started >= 0.9  # three waits of retry_after, not an immediate retry
    assert acct.counters()["http_status"].get("429", 0) == 3
    assert_mirror_equals_account(config, acct)


def test_a_malformed_record_is_reported_and_its_stored_copy_kept(tmp_path, acct):
    config = load_config(write_config(tmp_path, acct))
    sync(config)
    before_cust, before_deal = mirror(config)
    state = acct.state()
    cid = int(state["contacts"][3]["id"])
    lid = int(state["leads"][4]["id"])
    next_second()
    acct.api("PATCH", f"/api/v4/contacts/{cid}", json={"name": "Touched"})
    acct.api("PATCH", f"/api/v4/leads/{lid}", json={"name": "Touched"})
    acct.corrupt("contacts", cid, responsible_user_id="nobody")
    acct.corrupt("leads", lid, price="12 500 rub")
    result = sync(config)
    errors = sorted((e.file, e.record_id, e.message) for e in result.row_errors)
    assert [(f, i) for f, i, _ in errors] == [("contacts", cid), ("leads", lid)]
    assert "nobody" in errors[0][2] and "12 500 rub" in errors[1][2]
    cust, deal = mirror(config)
    assert cust[cid] == before_cust[cid] and deal[lid] == before_deal[lid]


def test_no_429_under_the_real_limit(tmp_path):
    # 7 requests per second, enforced by the sandbox: a pull of 18 pages plus write-back batches.
    with running_account(generate=(1000, 3000)) as acct:
        config = load_config(write_config(tmp_path, acct))
        sync(config)
        counters = acct.counters()
        assert counters["http_status"].get("429", 0) == 0 and counters["too_many_requests"] == 0
        assert_mirror_equals_account(config, acct)


def test_poisoned_records_are_reported_by_id_and_skipped_and_the_sync_goes_on(tmp_path, acct):
    state = acct.state()
    contacts = sorted(int(c["id"]) for c in state["contacts"])
    leads = sorted(int(d["id"]) for d in state["leads"])
    far = 94_670_000_000_000  # unix seconds in the year 3,000,000
    acct.corrupt("contacts", contacts[3], created_at=far)
    acct.corrupt("contacts", contacts[4], id=-7)
    acct.corrupt("leads", leads[0], _embedded={"contacts": [{"id": 2**64, "is_main": True}]})  # above int64
    acct.corrupt("leads", leads[1], price=float("inf"))  # what a JSON 1e999 parses to
    acct.corrupt("leads", leads[2], price="1e999")
    acct.corrupt("leads", leads[3], status_id=142, closed_at=far)
    acct.corrupt("leads", leads[4], id=-5)
    config = load_config(write_config(tmp_path, acct))
    result = sync(config)
    errors = sorted(((e.file, e.record_id, e.message) for e in result.row_errors), key=lambda e: (e[0], e[1] or 0))
    assert [(f, i) for f, i, _ in errors] == [
        ("contacts", None), ("contacts", contacts[3]), ("leads", None), *(("leads", d) for d in leads[:4])]
    text = " | ".join(m for _, _, m in errors)
    for shown in ("'-7'", "'-5'", str(far), str(2**64), "'inf'", "'1e999'", "1900..2200"):
        assert shown in text, shown
    assert result.summary()["rows_skipped"] == 7
    cust, deal = mirror(config)
    assert sorted(cust) == [c for c in contacts if c not in contacts[3:5]]  # every other record is mirrored
    assert sorted(deal) == leads[5:]
