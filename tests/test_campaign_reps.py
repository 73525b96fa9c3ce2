"""Issue 18, clear to reps, over HTTP against both sandboxes: ``[labels] preset`` gives the preset segments
human labels on cards (tag write-back) and in templates; default task and deal texts say why; the markers
are out of what reps read (Bitrix24 task XML_ID, an amoCRM lead field) and the old markers are still found.
Plus the fidelity of the sandbox routes this needed (task completion and comments, lead custom fields)."""

from __future__ import annotations

import re
import time
from datetime import date

import pytest

from adapters.base import marker
from connector.config import ConfigError, load_config
from connector.pipeline import make_sink, open_store, resolve_sink, sync
from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal
from tests.test_campaigns_e2e import CRMS

MARK = re.compile(r"lc[0-9a-f]{12}")

CONFIG = """
[writeback]
tag_segments = ["status.*"]

[labels]
preset = "{preset}"

[[campaign]]
name = "winback"
segment = "status.former"
auto_approve = true
on_enter = [{{ action = "call_task", title = "{{segment_label}}: {{name}}", due_in_days = 2 }}]

[[campaign]]
name = "repeat"
segment = "status.former"
auto_approve = true
responsible = {users}
on_enter = [{{ action = "deal", title = "Repeat sale: {{name}}", pipeline = "{pipeline}", due_in_days = 3 }}]
"""


def amo(handle, verb: str, path: str, **kw):
    """An amoCRM request from the test, waiting out a 429 (the account's limit counts the connector's requests)."""
    for _ in range(40):
        status, body = handle.api(verb, path, **kw)
        if status != 429:
            return status, body
        time.sleep(0.5)
    return status, body


def write(tmp_path, crm, handle, preset: str):
    path = tmp_path / "lifecycle.toml"
    path.write_text("[crm]\n" + crm.crm_section(handle) + 'overlap_minutes = 0\n[state]\nurl = "sqlite:///state.db"\n'
                    + CONFIG.format(preset=preset, users=crm.users(handle)[:1], pipeline=crm.pipeline), encoding="utf-8")
    return path


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_labels_texts_and_markers_reps_read(tmp_path, crm):
    with crm.start(generate=(60, 180)) as handle:
        config = load_config(write(tmp_path, crm, handle, "ru"))
        sync(config)
        state = handle.state()
        # labels on cards
        if crm.name == "bitrix24":
            field = next(f for f in state["userfields"]["contact"] if f["FIELD_NAME"] == "UF_CRM_LIFECYCLE")
            shown = {o["VALUE"] for o in field["LIST"]}
        else:
            shown = {t["name"] for t in state.get("tags", {}).get("contacts", [])} if isinstance(state.get("tags"), dict) \
                else {t["name"] for t in state.get("contact_tags", [])}
            if not shown:  # the tags as they sit on the contacts
                shown = {t["name"] for c in state["contacts"] for t in ((c.get("_embedded") or {}).get("tags") or [])}
        assert "Бывшие клиенты" in shown and "status.former" not in shown
        store = open_store(config)
        rows = store.ledger(["done"])
        store.close()
        tasks = [r for r in rows if r.campaign == "winback"]
        deals = [r for r in rows if r.action == "deal"]
        assert tasks and deals
        # templates and default texts, in Russian; no marker in what reps read
        if crm.name == "bitrix24":
            by_id = {int(t["ID"]): t for t in state["tasks"]}
            for r in tasks:
                task = by_id[int(r.result["id"])]
                assert task["TITLE"].startswith("Бывшие клиенты: ")
                assert task["DESCRIPTION"].startswith("Почему: Бывшие клиенты.") and "Покупок: " in task["DESCRIPTION"]
                assert not MARK.search(task["DESCRIPTION"] + task["TITLE"]) and task["XML_ID"] == marker(r.key)
            leads = {int(d["ID"]): d for d in state["deals"]}
            for r in deals:
                assert not MARK.search(str(leads[int(r.result["id"])]["TITLE"]))
                assert str(leads[int(r.result["id"])]["COMMENTS"]).startswith("Почему: Бывшие клиенты.")
        else:
            by_id = {int(t["id"]): t for t in state["tasks"]}
            for r in tasks:
                assert by_id[int(r.result["id"])]["text"].startswith("Бывшие клиенты: ")
                assert "Почему: Бывшие клиенты." in by_id[int(r.result["id"])]["text"]
            leads = {int(d["id"]): d for d in state["leads"]}
            for r in deals:
                lead = leads[int(r.result["id"])]
                assert not MARK.search(lead["name"])
                values = [v["value"] for cf in lead["custom_fields_values"] or [] for v in cf["values"]]
                assert marker(r.key) in values


@pytest.mark.parametrize("crm", CRMS, ids=lambda c: c.name)
def test_old_markers_in_the_text_are_still_found(tmp_path, crm):
    """An object an earlier version created (marker at the end of the text or name) is found by find()."""
    with crm.start(generate=(30, 90)) as handle:
        config = load_config(write(tmp_path, crm, handle, "en"))
        sync(config)  # a first run creates the amoCRM key field and the Bitrix24 pipeline targets
        store = open_store(config)
        rows = store.ledger(["done"])
        task_row = next(r for r in rows if r.action == "call_task")
        deal_row = next(r for r in rows if r.action == "deal")
        old_task, old_deal = f"{task_row.key}-old", f"{deal_row.key}-old"
        cid = task_row.customer_id
        users = crm.users(handle)
        if crm.name == "bitrix24":
            status, body = handle.call("tasks.task.add", {"fields": {
                "TITLE": "Call", "DESCRIPTION": f"Script\n\n[{marker(old_task)}]", "RESPONSIBLE_ID": users[0],
                "UF_CRM_TASK": [f"C_{cid}"]}})
            assert status == 200, body
            old_id = int(body["result"]["task"]["id"])
        else:
            status, body = amo(handle, "POST", "/api/v4/tasks", json=[{
                "text": f"Call\n[{marker(old_task)}]", "complete_till": 2000000000, "entity_id": cid,
                "entity_type": "contacts", "task_type_id": 1}])
            assert status == 200, body
            old_id = int(body["_embedded"]["tasks"][0]["id"])
            status, body = amo(handle, "POST", "/api/v4/leads", json=[{"name": f"Repeat sale [{marker(old_deal)}]"}])
            assert status == 200, body
            old_lead = int(body["_embedded"]["leads"][0]["id"])
        sink = make_sink(config, store)
        try:
            resolve_sink(sink, config)
            fake = [task_row.__class__(**{**{k: getattr(task_row, k) for k in task_row.keys()}, "key": old_task})]
            found = sink.find(fake, {})
            assert found == {old_task: {"id": old_id}}
            found_new = sink.find([task_row], {})
            assert found_new == {task_row.key: {"id": int(task_row.result["id"])}}  # the XML_ID / text marker of today
            if crm.name == "amocrm":
                lead = deal_row.__class__(**{**{k: getattr(deal_row, k) for k in deal_row.keys()}, "key": old_deal})
                assert sink.find([lead], {}) == {old_deal: {"id": old_lead}}
                assert sink.find([deal_row], {}) == {deal_row.key: {"id": int(deal_row.result["id"])}}
        finally:
            sink.close()
            store.close()


def test_a_bad_label_preset_is_a_config_error(tmp_path):
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "csv"\npath = "."\n[labels]\npreset = "de"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match='preset must be "ru" or "en"'):
        load_config(path)


def test_without_a_preset_labels_stay_the_segment_names(tmp_path):
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "csv"\npath = "."\n[labels]\n"status.current" = "Now"\n', encoding="utf-8")
    config = load_config(path)
    assert config.label("status.former") == "status.former" and config.label("status.current") == "Now"
    path.write_text('[crm]\nkind = "csv"\npath = "."\n[labels]\npreset = "en"\n"status.current" = "Now"\n', encoding="utf-8")
    config = load_config(path)
    assert config.label("status.former") == "Former customers" and config.label("status.current") == "Now"
    assert config.label("lifecycle.regular_asleep") == "Regular asleep"


def test_bitrix24_sandbox_task_completion_and_comments_follow_the_docs():
    with running_portal(generate=(5, 10)) as portal:
        status, body = portal.call("tasks.task.add", {"fields": {"TITLE": "Call", "RESPONSIBLE_ID": 1, "XML_ID": "ext-1"}})
        tid = int(body["result"]["task"]["id"])
        status, body = portal.call("tasks.task.list", {"filter": {"XML_ID": "ext-1"}, "select": ["ID", "XML_ID", "STATUS"]})
        assert [(t["id"], t["xmlId"], t["status"]) for t in body["result"]["tasks"]] == [(str(tid), "ext-1", "2")]
        status, body = portal.call("task.commentitem.add", {"TASKID": tid, "FIELDS": {"POST_MESSAGE": "Why"}})
        assert status == 200 and isinstance(body["result"], int)
        status, body = portal.call("task.commentitem.add", {"TASKID": tid, "FIELDS": {"POST_MESSAGE": ""}})
        assert status == 400 and body["error"] == "ERROR_CORE"
        status, body = portal.call("task.commentitem.add", {"TASKID": 99999, "FIELDS": {"POST_MESSAGE": "x"}})
        assert status == 400 and body["error"] == "ERROR_CORE"
        status, body = portal.call("tasks.task.complete", {"taskId": tid})
        assert status == 200 and body["result"]["task"]["status"] == "5" and body["result"]["task"]["closedDate"]
        status, body = portal.call("tasks.task.complete", {"taskId": tid})
        assert status == 400 and body["error"] == "ERROR_CORE"
        status, body = portal.call("tasks.task.complete", {"taskId": 99999})
        assert status == 400 and body["error"] == "ERROR_CORE"
        status, body = portal.call("tasks.task.list", {"filter": {"ID": [tid], "STATUS": 5}, "select": ["ID"]})
        assert [t["id"] for t in body["result"]["tasks"]] == [str(tid)]


def test_amocrm_sandbox_lead_custom_fields_can_be_added_and_searched():
    with running_account(generate=(5, 10)) as acct:
        status, body = amo(acct, "POST", "/api/v4/leads/custom_fields", json=[{"name": "key", "type": "text", "code": "K1"}])
        assert status == 200
        field = body["_embedded"]["custom_fields"][0]
        assert field["name"] == "key" and field["type"] == "text" and field["request_id"] == "0"
        status, body = amo(acct, "POST", "/api/v4/leads/custom_fields", json=[{"name": "", "type": "text"}])
        assert status == 400
        status, body = amo(acct, "POST", "/api/v4/leads/custom_fields", json=[{"name": "x", "type": "nope"}])
        assert status == 400
        status, body = amo(acct, "GET", "/api/v4/leads/custom_fields")
        assert any(f["id"] == field["id"] for f in body["_embedded"]["custom_fields"])
        status, body = amo(acct, "POST", "/api/v4/leads", json=[{"name": "Deal", "custom_fields_values": [
            {"field_id": field["id"], "values": [{"value": "lcabcdef012345"}]}]}])
        assert status == 200
        lead = int(body["_embedded"]["leads"][0]["id"])
        status, body = amo(acct, "GET", "/api/v4/leads", params={"query": "lcabcdef012345"})
        assert [int(x["id"]) for x in body["_embedded"]["leads"]] == [lead]
        status, body = amo(acct, "PATCH", "/api/v4/leads", json=[{"id": lead, "status_id": 143}])
        assert status == 200
        status, body = amo(acct, "GET", f"/api/v4/leads/{lead}")
        assert int(body["status_id"]) == 143 and body["closed_at"]
