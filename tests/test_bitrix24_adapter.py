"""Bitrix24 adapter end to end over HTTP against the sandbox portal: the mirror equals the portal and the
user field equals the tagged segments, through edits, deletions, token expiry and injected faults."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.bitrix24.client import BitrixError
from connector.config import load_config
from connector.pipeline import open_store, sync, today_in
from connector.store import membership
from tests.conftest import mirror, named_select
from sandbox.bitrix24 import running_portal

FIELD = "UF_CRM_LIFECYCLE"
TODAY = today_in("Europe/Moscow").isoformat()
TAGGED = ("lifecycle.", "status.")


def next_second() -> None:
    """Let the wall clock (which stamps DATE_MODIFY, to the second) pass the last run's start."""
    time.sleep(1.1)


def write_config(folder: Path, portal, *, oauth: bool = False, extra: str = "") -> Path:
    info = portal.info
    if oauth:
        auth = (
            f'client_endpoint = "{info["client_endpoint"]}"\nclient_id = "{info["client_id"]}"\n'
            f'client_secret = "{info["client_secret"]}"\nrefresh_token = "{info["refresh_token"]}"\n'
            f'oauth_token_url = "{info["oauth_token_url"]}"\n'
        )
    else:
        auth = f'webhook_url = "{portal.webhook_url}"\n'
    path = folder / "lifecycle.toml"
    path.write_text(
        f"""
[crm]
kind = "bitrix24"
{auth}requests_per_second = 500
reconcile_hours = 0
overlap_minutes = 0  # the sandbox clock runs 50x: the default 10 minutes would re-read every write
[state]
url = "sqlite:///state.db"
[writeback]
tag_segments = ["lifecycle.*", "status.*"]
[labels]
"lifecycle.regular_asleep" = "Regular, asleep"
{extra}
""",
        encoding="utf-8",
    )
    return path


def stored_tags(config) -> dict[int, set[str]]:
    store = open_store(config)
    with store.engine.connect() as conn:
        named = named_select(membership).subquery()
        rows = conn.execute(sa.select(named.c.segment, named.c.customer_id)).all()
    store.close()
    out: dict[int, set[str]] = {}
    for segment, cid in rows:
        if segment.startswith(TAGGED):
            out.setdefault(cid, set()).add(segment)
    return out


def portal_tags(state: dict) -> dict[int, set[str]]:
    field = next(f for f in state["userfields"]["contact"] if f["FIELD_NAME"] == FIELD)
    by_id = {str(o["ID"]): o["XML_ID"] for o in field["LIST"]}
    out = {}
    for contact in state["contacts"]:
        values = contact.get(FIELD) or []
        names = {by_id.get(str(v), f"foreign:{v}") for v in (values if isinstance(values, list) else [values])}
        if names:
            out[int(contact["ID"])] = names
    return out


def assert_mirror_equals_portal(config, portal) -> dict:
    state = portal.state()
    cust, deal = mirror(config)
    assert sorted(cust) == sorted(int(c["ID"]) for c in state["contacts"])
    assert sorted(deal) == sorted(int(d["ID"]) for d in state["deals"])
    for d in state["deals"]:
        mine = deal[int(d["ID"])]
        status = {"S": "won", "F": "lost"}.get(d["STAGE_SEMANTIC_ID"], "open")
        assert (mine["status"], mine["amount"]) == (status, float(d["OPPORTUNITY"] or 0))
        assert mine["contact_id"] == (int(d["CONTACT_ID"]) if d["CONTACT_ID"] else None)
    assert portal_tags(state) == {cid: tags for cid, tags in stored_tags(config).items() if tags}
    return state


@pytest.fixture
def portal():
    with running_portal(generate=(240, 720), time_scale=50) as handle:
        yield handle


def test_first_and_incremental_sync_keep_mirror_and_field_equal_to_the_portal(tmp_path, portal):
    config = load_config(write_config(tmp_path, portal))
    first = sync(config)
    summary = first.summary()
    # 240 contacts + 720 deals: per chain one first page plus one batch of 2,500, and the user-field list.
    assert summary["pull_requests"] == 5
    assert summary["tags_updated"] == len(stored_tags(config))
    state = assert_mirror_equals_portal(config, portal)
    next_second()  # scheduled runs are minutes apart; DATE_MODIFY has one-second resolution
    sync(config)  # re-reads the contacts whose field it just wrote (their DATE_MODIFY moved), once
    next_second()
    field = next(f for f in state["userfields"]["contact"] if f["FIELD_NAME"] == FIELD)
    assert field["MULTIPLE"] == "Y" and field["USER_TYPE_ID"] == "enumeration"
    labels = {o["XML_ID"]: o["VALUE"] for o in field["LIST"]}
    assert labels["lifecycle.regular_asleep"] == "Regular, asleep" and labels["status.current"] == "status.current"

    # Edits in the CRM: a prospect buys, a name changes, a contact and a deal are deleted.
    prospect = next(cid for cid, tags in stored_tags(config).items() if "status.prospect" in tags)
    portal.call("crm.deal.add", {"fields": {"TITLE": "won today", "CONTACT_ID": prospect, "STAGE_ID": "WON", "OPPORTUNITY": 500, "CLOSEDATE": TODAY}})
    portal.call("crm.contact.update", {"id": 2, "fields": {"NAME": "Renamed"}})
    gone = next(int(c["ID"]) for c in state["contacts"] if int(c["ID"]) != prospect and int(c["ID"]) != 2)
    portal.call("crm.contact.delete", {"id": gone})
    portal.call("crm.deal.delete", {"id": 5})
    portal.reset_counters()

    second = sync(config)
    s2 = second.summary()
    assert s2["customers_deleted"] == 1 and s2["deals_deleted"] == 1
    assert "status.prospect" not in stored_tags(config)[prospect]
    assert mirror(config)[0][2]["name"] == "Renamed"
    # Incremental: only what changed is read (plus the id reconciliation), not the whole portal again.
    assert s2["customers_upserted"] < 10 and s2["deals_upserted"] < 10
    # user fields 1, changed contacts 1, changed deals 1, id reconciliation 2 + 2 (first page + one batch each)
    assert s2["pull_requests"] == 7
    assert_mirror_equals_portal(config, portal)

    # Nothing changed: nothing is written.
    next_second()
    sync(config)
    next_second()
    portal.reset_counters()
    third = sync(config).summary()
    assert third["tags_updated"] == 0 and third["entered"] == {} and third["left"] == {}
    assert "crm.contact.update" not in portal.counters()["methods"]


def test_values_the_connector_did_not_set_are_left_alone(tmp_path, portal):
    config = load_config(write_config(tmp_path, portal))
    sync(config)
    state = portal.state()
    field = next(f for f in state["userfields"]["contact"] if f["FIELD_NAME"] == FIELD)
    items = [{"ID": o["ID"], "VALUE": o["VALUE"], "XML_ID": o["XML_ID"]} for o in field["LIST"]]
    portal.call("crm.contact.userfield.update", {"id": field["ID"], "fields": {"LIST": items + [{"VALUE": "By hand", "XML_ID": "manual"}]}})
    field = next(f for f in portal.state()["userfields"]["contact"] if f["FIELD_NAME"] == FIELD)
    manual = next(str(o["ID"]) for o in field["LIST"] if o["XML_ID"] == "manual")
    contact = state["contacts"][0]
    values = [str(v) for v in contact.get(FIELD) or []]
    portal.call("crm.contact.update", {"id": contact["ID"], "fields": {FIELD: values + [manual]}})
    # Make the contact leave its segments: a fresh purchase today moves it.
    portal.call("crm.deal.add", {"fields": {"CONTACT_ID": contact["ID"], "STAGE_ID": "WON", "OPPORTUNITY": 10, "CLOSEDATE": TODAY}})
    sync(config)
    after = next(c for c in portal.state()["contacts"] if c["ID"] == contact["ID"])
    assert manual in [str(v) for v in after[FIELD]]
    assert_mirror_equals_portal_ignoring_foreign(config, portal)


def assert_mirror_equals_portal_ignoring_foreign(config, portal) -> None:
    tags = {cid: {t for t in names if not t.startswith("foreign:") and t != "manual"} for cid, names in portal_tags(portal.state()).items()}
    assert {k: v for k, v in tags.items() if v} == {k: v for k, v in stored_tags(config).items() if v}


def test_oauth_token_expiry_mid_run_refreshes_once_and_persists_the_rotation(tmp_path, portal):
    config = load_config(write_config(tmp_path, portal, oauth=True))
    sync(config)
    store = open_store(config)
    first = store.oauth_token()
    store.close()
    assert first is not None and first["refresh_token"] != portal.info["refresh_token"]
    # Expire every access token, then fail one call mid-run with expired_token as well.
    portal.expire_tokens()
    portal.faults(kind="expired_token", method="batch", count=1)
    portal.call("crm.contact.update", {"id": 3, "fields": {"NAME": "Changed"}})
    result = sync(config)
    store = open_store(config)
    second = store.oauth_token()
    store.close()
    assert second["refresh_token"] != first["refresh_token"]
    assert mirror(config)[0][3]["name"] == "Changed"
    assert result.summary()["tags_failed"] == 0
    assert_mirror_equals_portal(config, portal)
    # The old refresh token is dead: the stored one must be what the next run uses.
    assert portal.counters()["oauth_refreshes"] >= 2


def test_injected_faults_end_in_the_same_state_as_a_clean_run(tmp_path, portal):
    config = load_config(write_config(tmp_path, portal))
    portal.faults(kind="status", status=503, probability=0.1)
    portal.faults(kind="status", status=500, probability=0.05)
    portal.faults(kind="reset", probability=0.05)
    sync(config)
    portal.call("crm.deal.add", {"fields": {"CONTACT_ID": 7, "STAGE_ID": "WON", "OPPORTUNITY": 10, "CLOSEDATE": TODAY}})
    sync(config)
    portal.clear_faults()
    assert_mirror_equals_portal(config, portal)
    assert sum(portal.counters()["faults"].values()) > 0  # faults did fire


def test_a_wrong_webhook_is_a_clear_error_without_the_secret(tmp_path, portal):
    path = write_config(tmp_path, portal)
    secret = portal.info["webhook_code"]
    path.write_text(path.read_text().replace(secret, "wrongcode123"))
    config = load_config(path)
    with pytest.raises(BitrixError) as info:
        sync(config)
    assert "NO_AUTH_FOUND" in str(info.value) and "wrongcode123" not in str(info.value)
    store = open_store(config)
    run = store.last_runs(1)[0]
    store.close()
    assert run["status"] == "failed" and "wrongcode123" not in json.dumps(run, default=str)


def test_operating_time_limit_is_waited_out_and_the_pull_completes(tmp_path):
    # A tiny operating budget (0.3 portal-seconds per 10 minutes, the window 3000x faster than real time,
    # so it reopens every 0.2 s): the deal chain (120 pages) and the write-back both run into 429
    # OPERATION_TIME_LIMIT and must wait for the method to reopen, not fail or skip records.
    with running_portal(generate=(300, 6000), time_scale=3000, operating_limit=0.3) as portal:
        config = load_config(write_config(tmp_path, portal, extra=""))
        result = sync(config).summary()
        refused = portal.counters()["operation_time_limit_by_method"]
        # which list method runs into the budget first depends on how fast this machine answers (the
        # window reopens every 0.2 s of wall time); that the pull and the write-back both did is what counts
        assert refused.get("crm.deal.list", 0) + refused.get("crm.contact.list", 0) > 0, refused
        assert refused.get("crm.contact.update", 0) > 0, refused
        assert result["tags_failed"] == 0
        assert_mirror_equals_portal(config, portal)


def test_a_malformed_record_is_reported_and_its_stored_copy_kept(tmp_path, portal):
    config = load_config(write_config(tmp_path, portal))
    sync(config)
    before_cust, before_deal = mirror(config)
    next_second()
    # What a botched import leaves in a portal's database (the REST API itself refuses to write it).
    portal.call("crm.contact.update", {"id": 4, "fields": {"NAME": "Renamed"}})
    portal.corrupt("contact", 4, BIRTHDATE="31.02.2001")
    deal_id = min(int(d["ID"]) for d in portal.state("deals")["deals"])
    portal.call("crm.deal.update", {"id": deal_id, "fields": {"COMMENTS": "touched"}})
    portal.corrupt("deal", deal_id, OPPORTUNITY="12 500 rub")
    portal.call("crm.contact.update", {"id": 5, "fields": {"NAME": "Fine"}})
    result = sync(config)
    errors = sorted((e.file, e.record_id, e.message) for e in result.row_errors)
    assert [(f, i) for f, i, _ in errors] == [("crm.contact.list", 4), ("crm.deal.list", deal_id)]
    assert "31.02.2001" in errors[0][2] and "12 500 rub" in errors[1][2]
    assert result.summary()["rows_skipped"] == 2
    cust, deal = mirror(config)
    assert cust[4] == before_cust[4]  # the stored copy is kept as it was, not dropped or half-updated
    assert deal[deal_id] == before_deal[deal_id]
    assert cust[5]["name"].startswith("Fine")  # the good rows of the same pages still landed


def test_poisoned_records_are_reported_by_id_and_skipped_and_the_sync_goes_on(tmp_path, portal):
    # What a broken import or a hostile portal could serve: none of it may stop the run or reach the store.
    deals = sorted(int(d["ID"]) for d in portal.state("deals")["deals"])
    contacts = sorted(int(c["ID"]) for c in portal.state("contacts")["contacts"])
    portal.corrupt("contact", 4, ID="abc")
    portal.corrupt("contact", 6, BIRTHDATE="9999-01-01T00:00:00+03:00")
    portal.corrupt("deal", deals[0], CONTACT_ID="99999999999999999999")  # above int64
    portal.corrupt("deal", deals[1], OPPORTUNITY="1e999")
    portal.corrupt("deal", deals[2], CLOSEDATE="3000000-01-01T00:00:00+03:00")
    portal.corrupt("deal", deals[3], DATE_CREATE="2999-01-01T00:00:00+03:00")
    portal.corrupt("deal", deals[4], ID="-5")
    config = load_config(write_config(tmp_path, portal))
    result = sync(config)
    errors = sorted(((e.file, e.record_id, e.message) for e in result.row_errors), key=lambda e: (e[0], e[1] or 0))
    assert [(f, i) for f, i, _ in errors] == [
        ("crm.contact.list", None), ("crm.contact.list", 6),
        ("crm.deal.list", None), *(("crm.deal.list", d) for d in deals[:4])]
    text = " | ".join(m for _, _, m in errors)
    for shown in ("'abc'", "9999-01-01", "'-5'", "99999999999999999999", "1e999", "3000000-01-01", "2999-01-01"):
        assert shown in text, shown
    assert result.summary()["rows_skipped"] == 7
    cust, deal = mirror(config)
    assert sorted(cust) == [c for c in contacts if c not in (4, 6)]  # every other record is mirrored
    assert sorted(deal) == deals[5:]
    next_second()
    again = sync(config)  # incremental, with the id reconciliation that lists every ID (the "abc" too)
    assert again.summary()["pull"] == "incremental"
    assert sorted(mirror(config)[0]) == sorted(cust)
