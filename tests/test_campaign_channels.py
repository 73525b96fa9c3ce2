"""The CRM's own channels as campaign actions, over HTTP against both sandboxes: Bitrix24 business
processes and CRM e-mail, amoCRM Salesbot runs and Digital Pipeline stage moves; each once, checked at
start-up, the two-workflow limit respected; and the sandboxes' shapes seen through clients nobody here
wrote (b24pysdk, aioamocrm, amocrm-api-wrapper). The SIGKILL proof is in test_campaigns_e2e.py."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from connector.config import ConfigError, load_config
from connector.pipeline import open_store, sync
from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal
from tests.conftest import ledger

BP = '{ action = "bizproc", title = "Win-back: {name}", template = "%s", parameters = { Orders = "{purchases}", Name = "{name}" } }'
MAIL = ('{ action = "email", title = "{name}, we kept your discount", body = "Hello {name}! You ordered {purchases} times.", '
        'mailbox = "Shop <shop@example.com>" }')
BOT = '{ action = "salesbot", title = "Win-back bot: {name}", bot_id = 61564 }'
STAGE = '{ action = "stage", title = "Win back {name}", pipeline = "Повторные продажи", stage = "Предложение отправлено" }'


def b24_config(folder: Path, portal, actions: str, extra: str = "") -> Path:
    path = folder / "lifecycle.toml"
    path.write_text(f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
                    f'[state]\nurl = "sqlite:///{folder}/state.db"\n[executor]\nbatch_size = 7\n'
                    f'[[campaign]]\nname = "reach"\nsegment = "status.former"\nauto_approve = true\non_enter = [{actions}]\n{extra}', encoding="utf-8")
    return path


def amo_config(folder: Path, acct, actions: str, extra: str = "") -> Path:
    path = folder / "lifecycle.toml"
    path.write_text(f'[crm]\nkind = "amocrm"\nbase_url = "{acct.info["base_url"]}"\naccess_token = "{acct.info["access_token"]}"\n'
                    f'[state]\nurl = "sqlite:///{folder}/state.db"\n[executor]\nbatch_size = 7\n'
                    f'[[campaign]]\nname = "reach"\nsegment = "status.former"\nauto_approve = true\non_enter = [{actions}]\n{extra}', encoding="utf-8")
    return path


# -- Bitrix24 ------------------------------------------------------------------------------------

def test_bitrix24_business_process_and_email_each_once_and_a_quiet_sync_writes_nothing(tmp_path):
    with running_portal(generate=(80, 240), time_scale=50, seed=4) as portal:
        config = load_config(b24_config(tmp_path, portal, BP % "Win-back e-mail" + ", " + MAIL))
        summary = sync(config).summary()
        rows = ledger(config)
        done = [r for r in rows if r.status == "done"]
        skipped = [r for r in rows if r.status == "skipped"]
        assert summary["actions_failed"] == 0 and summary["actions_created"] == len(done) > 0
        state = portal.state()
        contacts = {int(c["ID"]): c for c in state["contacts"]}
        # one workflow of template 1 per bizproc action, on the contact, with the rendered parameters
        starts = [r for r in done if r.action == "bizproc"]
        assert Counter(wf["document"][2] for wf in state["workflows"]) == Counter(f"CONTACT_{r.customer_id}" for r in starts)
        assert {wf["template"] for wf in state["workflows"]} == {1}
        first = next(wf for wf in state["workflows"] if wf["document"][2] == f"CONTACT_{starts[0].customer_id}")
        assert first["parameters"]["Orders"].isdigit() and first["parameters"]["Name"]
        assert all(r.result["id"] for r in starts)
        # one e-mail sent per email action, from the mailbox, to the card's address; the ledger holds no address
        mails = [r for r in done if r.action == "email"]
        sent = [a for a in state["activities"] if a.get("SENT_TO")]
        assert sorted(a["ORIGIN_ID"] for a in sent) == sorted(r.key for r in mails)
        for a in sent:
            card = contacts[a["OWNER_ID"]]
            assert a["TYPE_ID"] == 4 and a["DIRECTION"] == 2 and a["COMPLETED"] == "Y" and a["OWNER_TYPE_ID"] == 3
            assert a["SENT_FROM"] == "Shop <shop@example.com>" and a["SENT_TO"] == [card["EMAIL"][0]["VALUE"]]
            assert a["SUBJECT"].endswith("we kept your discount") and "You ordered" in a["DESCRIPTION"]
        assert all("@" not in json.dumps(r.payload) .replace("shop@example.com", "") for r in rows)
        # customers without an e-mail: the e-mail is skipped, with the reason; their business process is not
        no_mail = {cid for cid, c in contacts.items() if not c.get("EMAIL")}
        assert {r.customer_id for r in skipped} == no_mail & {r.customer_id for r in starts}
        assert {r.skip_reason for r in skipped} == {"customer has no e-mail"}
        # a second sync with nothing new sends nothing
        portal.reset_counters()
        again = sync(config).summary()
        assert again["actions_created"] == 0 and again["actions_planned"] == 0
        methods = portal.counters()["methods"]
        assert not [m for m in methods if m.endswith((".add", ".start", ".update"))], methods
        assert len(portal.state()["workflows"]) == len(starts)


def test_bitrix24_two_running_workflows_hold_the_start_back_until_one_finishes(tmp_path):
    with running_portal(generate=(60, 180), time_scale=50, seed=5) as portal:
        config = load_config(b24_config(tmp_path, portal, BP % "SMS, then a reminder in three days"))
        from connector.pipeline import make_source

        store = open_store(config)
        store.apply_pull(make_source(config, store).pull())
        store.close()
        from connector.pipeline import preview_plan

        planned = sorted({r["customer_id"] for r in preview_plan(config) if r["action"] == "bizproc" and not r["skip_reason"]})
        assert len(planned) >= 4
        busy = planned[:3]
        for cid in busy:  # two workflows with waiting steps already run on these customers
            for _ in range(2):
                status, answer = portal.call("bizproc.workflow.start", {
                    "TEMPLATE_ID": 2, "DOCUMENT_ID": ["crm", "CCrmDocumentContact", f"CONTACT_{cid}"]})
                assert status == 200 and isinstance(answer["result"], str)
        before = len(portal.state()["workflows"])
        summary = sync(config).summary()
        rows = {r.customer_id: r for r in ledger(config) if r.action == "bizproc"}
        assert summary["actions_failed"] == 0 and summary["actions_waiting"] == len(busy)
        assert all(rows[c].status == "planned" and rows[c].attempts == 0 for c in busy)  # held, not failed
        assert all(rows[c].status == "done" for c in planned[3:])
        assert len(portal.state()["workflows"]) == before + len(planned) - len(busy)
        # the waiting steps end (three portal days): the held starts go out on the next run, once
        portal.advance(3 * 86400 + 60)
        again = sync(config).summary()
        assert again["actions_created"] == len(busy) and again["actions_waiting"] == 0
        workflows = Counter(wf["document"][2] for wf in portal.state()["workflows"] if wf["started_by"] == 1)
        assert all(workflows[f"CONTACT_{c}"] == 3 for c in busy)


def test_bitrix24_start_up_refusals_are_config_errors_naming_the_campaign(tmp_path):
    with running_portal(generate=(20, 60), time_scale=50, seed=6) as portal:
        path = b24_config(tmp_path, portal, BP % "No such template")
        with pytest.raises(ConfigError, match=r"'reach': template 'No such template' is not a business-process template "
                                              r"for contact cards in Bitrix24; templates: Win-back e-mail \(id 1\)"):
            sync(load_config(path))
        path = b24_config(tmp_path, portal, BP % "1")
        portal.control("POST", "bizproc", {"admin": False})
        with pytest.raises(ConfigError, match=r"'reach': only a Bitrix24 administrator may start business processes"):
            sync(load_config(path))
        portal.control("POST", "bizproc", {"admin": True, "paid": False})
        with pytest.raises(ConfigError, match=r"'reach': Bitrix24 starts business processes through REST only on paid plans"):
            sync(load_config(path))
        portal.control("POST", "bizproc", {"paid": True})
        with pytest.raises(ConfigError, match=r"'reach': action 'salesbot' is an amoCRM channel"):
            sync(load_config(b24_config(tmp_path, portal, BOT)))
        state = portal.state()
        assert state["workflows"] == [] and state["activities"] == [] and state["comments"] == []
        assert ledger(load_config(path)) == []  # refused before anything was stored


def test_bitrix24_email_refused_by_the_portal_is_a_failed_action_with_the_portal_reason(tmp_path):
    with running_portal(generate=(40, 120), time_scale=50, seed=7) as portal:
        bad = MAIL.replace("Shop <shop@example.com>", "Shop <shop@localhost>")
        config = load_config(b24_config(tmp_path, portal, bad))
        with pytest.raises(ConfigError, match=r"'reach': mailbox 'Shop <shop@localhost>' is not an e-mail sender of the "
                                              r"webhook's user in Bitrix24 .*senders: .*Shop <shop@example.com>"):
            sync(config)
        assert ledger(config) == []
        portal.control("POST", "bizproc", {"senders": ["Shop <shop@localhost>"]})  # a sender Bitrix24 refuses to send from
        summary = sync(config).summary()
        failed = [r for r in ledger(config) if r.status == "failed"]
        assert summary["actions_failed"] == len(failed) > 0
        assert {r.error for r in failed} == {"Email send error. Invalid email is specified"}
        assert not [a for a in portal.state()["activities"] if a.get("SENT_TO")]


# -- amoCRM --------------------------------------------------------------------------------------

def _open_leads(acct, contacts: list[int], status: int = 70000021) -> dict[int, int]:
    status_code, body = acct.api("POST", "/api/v4/leads", json=[
        {"name": f"Open {cid}", "pipeline_id": 7000002, "status_id": status,
         "_embedded": {"contacts": [{"id": cid, "is_main": True}]}} for cid in contacts])
    assert status_code == 200
    return {cid: lead["id"] for cid, lead in zip(contacts, body["_embedded"]["leads"])}


def test_amocrm_salesbot_and_stage_each_once_moving_open_leads_and_creating_the_rest(tmp_path):
    with running_account(generate=(80, 240), seed=4) as acct:
        contacts = sorted(c["id"] for c in acct.state("contacts")["contacts"])
        opened = _open_leads(acct, contacts[::2])
        already = _open_leads(acct, contacts[1::6], status=70000022)  # already in the stage: left alone
        config = load_config(amo_config(tmp_path, acct, BOT + ", " + STAGE))
        summary = sync(config).summary()
        rows = [r for r in ledger(config) if r.status != "skipped"]
        assert rows and all(r.status == "done" for r in rows) and summary["actions_failed"] == 0
        state = acct.state()
        bots = [r for r in rows if r.action == "salesbot"]
        runs = state["salesbot_runs"]
        assert Counter(r["entity_id"] for r in runs) == Counter(r.customer_id for r in bots)
        assert {(r["bot_id"], r["entity_type"]) for r in runs} == {(61564, 1)}
        notes = [n for n in state["notes"] if n["note_type"] == "common"]
        assert Counter(n["entity_id"] for n in notes) == Counter(r.customer_id for r in bots)  # the card says so
        moves = {r.customer_id: r for r in rows if r.action == "stage"}
        leads = {lead["id"]: lead for lead in state["leads"]}
        for cid, row in moves.items():
            lead = leads[row.result["lead"]]
            assert (lead["pipeline_id"], lead["status_id"]) == (7000002, 70000022)
            if cid in already:
                assert row.result == {"lead": already[cid], "already": True}
            elif cid in opened:
                assert row.result == {"lead": opened[cid]}  # moved, not a new lead
            else:
                assert row.result["created"] and lead["name"].startswith("Win back")
        changed = [e for e in state["events"] if e["type"] == "lead_status_changed"]
        assert sorted(e["entity_id"] for e in changed) == sorted(opened[c] for c in moves if c in opened and c not in already)
        acct.reset_counters()
        again = sync(config).summary()
        assert again["actions_created"] == 0 and again["actions_planned"] == 0
        assert not [r for r in acct.counters()["by_route"] if not r.startswith("GET")]
        assert len(acct.state()["salesbot_runs"]) == len(runs)


def test_amocrm_start_up_checks_name_the_campaign(tmp_path):
    with running_account(generate=(20, 60), seed=6) as acct:
        with pytest.raises(ConfigError, match=r"'reach': status 'Предложение отправлено!' is not a status of pipeline "
                                              r"'Повторные продажи'; statuses: .*Предложение отправлено \(id 70000022\)"):
            sync(load_config(amo_config(tmp_path, acct, STAGE.replace("отправлено", "отправлено!"))))
        with pytest.raises(ConfigError, match=r"'reach': action 'email' is a Bitrix24 channel"):
            sync(load_config(amo_config(tmp_path, acct, MAIL)))
        path = amo_config(tmp_path, acct, BOT.replace("61564", "999"))  # an unknown bot: amoCRM has no list to check
        summary = sync(load_config(path)).summary()
        failed = [r for r in ledger(load_config(path)) if r.status == "failed"]
        assert summary["actions_failed"] == len(failed) > 0 and all("Бот не найден" in r.error for r in failed)
        assert acct.state()["salesbot_runs"] == []


@pytest.mark.parametrize("text, message", [
    ('{ action = "bizproc", title = "x" }', "action 'bizproc' needs template"),
    ('{ action = "email", title = "x", body = "y" }', "action 'email' needs mailbox"),
    ('{ action = "email", title = "x", body = "y", mailbox = "not an address" }', "action 'email' needs mailbox"),
    ('{ action = "email", title = "x", mailbox = "a@b.c" }', "action 'email' needs body"),
    ('{ action = "salesbot", title = "x" }', "action 'salesbot' needs bot_id"),
    ('{ action = "stage", title = "x", pipeline = "1" }', "action 'stage' needs pipeline"),
    ('{ action = "email", title = "x", body = "{nosuch}", mailbox = "a@b.c" }', r"on_enter\[0\].body: .*nosuch"),
    ('{ action = "bizproc", title = "x", template = "1", parameters = { A = "{name:%Y}" } }', r"on_enter\[0\].parameters.A"),
])
def test_channel_config_errors_say_what_to_fix(tmp_path, text, message):
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "http://127.0.0.1:1/rest/1/x/"\n'
                    f'[[campaign]]\nname = "reach"\nsegment = "status.former"\nauto_approve = true\non_enter = [{text}]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


# -- the sandboxes through clients nobody here wrote -----------------------------------------------

def test_b24pysdk_lists_templates_starts_a_workflow_and_sends_a_crm_email(tmp_path, monkeypatch):
    b24pysdk = pytest.importorskip("b24pysdk")
    with running_portal(generate=(20, 60), time_scale=100, tls=True) as portal:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", portal.ca_file)
        client = b24pysdk.Client(b24pysdk.BitrixWebhook(domain=portal.info["domain"], webhook_token=f"1/{portal.info['webhook_code']}"))
        templates = client.bizproc.workflow.template.list(select=["ID", "NAME", "DOCUMENT_TYPE"],
                                                          filter={"MODULE_ID": "crm", "ENTITY": "CCrmDocumentContact"}).result
        assert [t["NAME"] for t in templates] == ["Win-back e-mail", "SMS, then a reminder in three days"]
        assert templates[0] == {"ID": "1", "NAME": "Win-back e-mail", "DOCUMENT_TYPE": "CONTACT"}
        instance = client.bizproc.workflow.start(template_id=2, document_id=["crm", "CCrmDocumentContact", "CONTACT_3"],
                                                 parameters={"Greeting": "Hi"}).result
        assert isinstance(instance, str) and "." in instance
        running = client.bizproc.workflow.instances(select=["ID", "DOCUMENT_ID", "TEMPLATE_ID", "ENTITY"],
                                                    filter={"DOCUMENT_ID": "CONTACT_3"}).result
        assert running == [{"ID": instance, "DOCUMENT_ID": "CONTACT_3", "TEMPLATE_ID": "2", "ENTITY": "CCrmDocumentContact"}]
        from b24pysdk.errors import BitrixAPIError

        with pytest.raises(BitrixAPIError, match="Template type and DOCUMENT_ID mismatch"):
            client.bizproc.workflow.start(template_id=3, document_id=["crm", "CCrmDocumentContact", "CONTACT_3"]).result
        with pytest.raises(BitrixAPIError, match="Template not found"):
            client.bizproc.workflow.start(template_id=99, document_id=["crm", "CCrmDocumentContact", "CONTACT_3"]).result
        new_id = client.crm.activity.add(fields={
            "TYPE_ID": 4, "DIRECTION": 2, "COMPLETED": "Y", "OWNER_TYPE_ID": 3, "OWNER_ID": 3, "SUBJECT": "Hello",
            "DESCRIPTION": "Body", "DESCRIPTION_TYPE": 1, "SETTINGS": {"MESSAGE_FROM": "Shop <shop@example.com>"},
            "COMMUNICATIONS": [{"VALUE": "client@example.com", "ENTITY_ID": 3, "ENTITY_TYPE_ID": 3}],
            "ORIGINATOR_ID": "sdk", "ORIGIN_ID": "one"}).result
        assert isinstance(new_id, int)
        found = client.crm.activity.list(filter={"ORIGINATOR_ID": "sdk", "ORIGIN_ID": "one"}, select=["ID", "TYPE_ID", "DIRECTION"]).result
        assert found == [{"ID": str(new_id), "TYPE_ID": "4", "DIRECTION": "2"}]
        activity = next(a for a in portal.state()["activities"] if a["ID"] == new_id)
        assert activity["SENT_TO"] == ["client@example.com"]
        portal.control("POST", "bizproc", {"admin": False})
        with pytest.raises(BitrixAPIError, match="Access denied"):
            client.bizproc.workflow.template.list().result


def test_aioamocrm_and_amocrm_api_wrapper_move_a_lead_and_run_a_salesbot():
    aioamocrm = pytest.importorskip("aioamocrm")
    amocrm_api = pytest.importorskip("amocrm_api")
    with running_account(generate=(30, 90), limits=False, today=date(2026, 6, 1)) as acct:
        async def move(info):
            async with aioamocrm.AmoCRMClient(auth=aioamocrm.LongLivedToken(info["access_token"]), base_url=info["base_url"]) as amo:
                lead = (await amo.leads.create([{"name": "Open", "pipeline_id": 7000002, "status_id": 70000021}]))[0]
                await amo.leads.update([{"id": lead.id, "pipeline_id": 7000002, "status_id": 70000022}])
                events = await amo.request("GET", "events", params={"filter": {"type": "lead_status_changed", "entity": "lead",
                                                                               "entity_id": [lead.id]}})
                return lead.id, events

        lead_id, events = asyncio.run(move(acct.info))
        changed = events["_embedded"]["events"]
        assert [(e["entity_id"], e["value_after"][0]["lead_status"]) for e in changed] == [
            (lead_id, {"id": 70000022, "pipeline_id": 7000002})]
        info = acct.info
        client = amocrm_api.AmoOAuthClient(access_token=info["oauth_access_token"], refresh_token=info["refresh_token"],
                                           crm_url=info["base_url"], client_id=info["client_id"],
                                           client_secret=info["client_secret"], redirect_uri=info["redirect_uri"])
        answer = client._send_api_request("post", f"{info['base_url']}/api/v2/salesbot/run",
                                          [{"bot_id": 61564, "entity_id": 5, "entity_type": 1},
                                           {"bot_id": 61565, "entity_id": lead_id, "entity_type": 2}])
        assert answer["success"] is True and answer["_links"]["self"]["method"] == "post"
        assert [(r["bot_id"], r["entity_id"], r["entity_type"]) for r in acct.state()["salesbot_runs"]] == [
            (61564, 5, 1), (61565, lead_id, 2)]
        status, body = acct.api("POST", "/api/v2/salesbot/run", json=[{"bot_id": 61564, "entity_id": 5, "entity_type": 1}] * 101)
        assert status == 400 and "100" in json.dumps(body, ensure_ascii=False)
        client.close()
        assert len(acct.state()["salesbot_runs"]) == 2  # the refused call ran nothing


def test_the_channels_example_in_the_docs_loads(tmp_path):
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "campaigns.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text[text.index("## Channels"):], re.S).group(1)
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "https://example.bitrix24.ru/rest/1/x/"\n' + block, encoding="utf-8")
    loaded = load_config(path)
    assert [[a.action for a in c.on_enter] for c in loaded.settings.campaign] == [["bizproc", "email"], ["email"], ["salesbot", "stage"]]
