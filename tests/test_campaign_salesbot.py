"""amoCRM Salesbot runs exactly once, over HTTP against the amoCRM sandbox: the connector sets the contact
field "crm-lifecycle bot" pending before each run, the bot's first step overwrites it, and a run whose
outcome is unknown is settled by reading the field back (docs/campaigns.md "Salesbot set-up"). A bot
without that step is detected, warned about once per campaign, and its runs fall back to at most once.
The SIGKILL proof is in test_campaigns_e2e.py (``amocrm-salesbot``)."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest

from adapters.amocrm.channels import BOT_FIELD_NAME
from connector.cli import main
from connector.config import load_config
from connector.pipeline import open_store, sync
from sandbox.amocrm import running_account
from tests.test_campaign_channels import amo_config

RUN = "/api/v2/salesbot/run"


def bot(bot_id: int, confirm: int) -> str:
    return f'{{ action = "salesbot", title = "Win-back bot: {{name}}", bot_id = {bot_id}, confirm_minutes = {confirm} }}'


def rows(config) -> list:
    store = open_store(config)
    try:
        return [r for r in store.ledger() if r.status != "skipped"]
    finally:
        store.close()


def field_values(acct) -> dict[int, str | None]:
    out = {}
    for c in acct.state("contacts")["contacts"]:
        out[c["id"]] = next((str(v["value"]) for cf in c.get("custom_fields_values") or []
                             if cf["field_name"] == BOT_FIELD_NAME for v in cf["values"]), None)
    return out


def api_retry(acct, verb: str, path: str, body) -> int:
    """A request as a user's script would send it, waiting out a 429 (the account counts the connector's too)."""
    for _ in range(40):
        status, _ = acct.api(verb, path, json=body)
        if status != 429:
            return status
        time.sleep(0.25)
    return status


def runs(acct) -> Counter:
    return Counter(r["entity_id"] for r in acct.state()["salesbot_runs"])


def test_sandbox_bots_are_configurable_and_a_change_field_step_writes_the_contact():
    with running_account(generate=(5, 10), seed=2) as acct:
        assert acct.salesbots()["bots"]["61564"]["steps"][0] == {"type": "change_field", "field": BOT_FIELD_NAME,
                                                                "value": "started"}
        with pytest.raises(RuntimeError, match="change_field needs field and value"):
            acct.salesbots({"7": {"steps": [{"type": "change_field"}]}})
        acct.salesbots({"7": {"name": "Only this", "steps": [{"type": "change_field", "field": "CRM_LIFECYCLE_BOT",
                                                             "value": "ran"}]}}, replace=True)
        assert list(acct.salesbots()["bots"]) == ["7"]
        contact = acct.state("contacts")["contacts"][0]["id"]
        assert api_retry(acct, "POST", RUN, [{"bot_id": 7, "entity_id": contact, "entity_type": 1}]) == 202
        assert acct.state()["salesbot_runs"][0]["steps"] == ["change_field: no such field"]  # no field yet: skipped
        assert api_retry(acct, "POST", "/api/v4/contacts/custom_fields",
                         [{"name": BOT_FIELD_NAME, "type": "text", "code": "CRM_LIFECYCLE_BOT"}]) == 200
        assert api_retry(acct, "POST", RUN, [{"bot_id": 7, "entity_id": contact, "entity_type": 1}]) == 202
        assert field_values(acct)[contact] == "ran"
        assert api_retry(acct, "POST", RUN, [{"bot_id": 61564, "entity_id": contact, "entity_type": 1}]) == 404  # replaced


def test_a_run_request_lost_before_amocrm_took_it_waits_then_is_sent_again_exactly_once(tmp_path):
    with running_account(generate=(40, 120), seed=4) as acct:
        config = load_config(amo_config(tmp_path, acct, bot(61564, 10)))
        acct.faults(kind="reset", path=RUN, count=1)  # the connection drops before amoCRM runs anything
        sync(config)
        doubt = [r for r in rows(config) if r.status == "sending"]
        assert doubt and all(r.result["pending"].startswith("pending lc") for r in doubt)
        values = field_values(acct)
        assert all(values[r.customer_id] == r.result["pending"] for r in doubt)  # what the CRM keeps says so
        assert not set(runs(acct)) & {r.customer_id for r in doubt}
        sync(config)  # within confirm_minutes amoCRM may still start it: left in doubt, not resent
        assert {r.key for r in rows(config) if r.status == "sending"} == {r.key for r in doubt}
        # confirm_minutes pass (the pending value carries the moment it was written)
        status = api_retry(acct, "PATCH", "/api/v4/contacts", [{"id": r.customer_id, "custom_fields_values": [
            {"field_code": "CRM_LIFECYCLE_BOT", "values": [{"value": r.result["pending"].rsplit(" ", 1)[0] + " 1000000000"}]}]}
            for r in doubt])
        assert status == 200
        sync(config)
        done = rows(config)
        assert done and all(r.status == "done" for r in done)
        assert runs(acct) == Counter(r.customer_id for r in done)  # every planned run exactly once
        assert not any((r.result or {}).get("unverified") for r in done)
        assert all(v == "started" for cid, v in field_values(acct).items() if cid in {r.customer_id for r in done})


def test_an_answer_lost_after_the_bot_ran_is_read_back_not_resent(tmp_path):
    with running_account(generate=(40, 120), seed=4) as acct:
        config = load_config(amo_config(tmp_path, acct, bot(61564, 10)))
        acct.faults(kind="reset_after", path=RUN, count=1)  # amoCRM ran the bots, the answer is lost
        sync(config)
        done = rows(config)
        assert done and all(r.status == "done" for r in done)
        assert runs(acct) == Counter(r.customer_id for r in done)
        assert sum(1 for r in done if r.result.get("read_back")) >= 1


def test_a_bot_without_the_first_step_is_warned_once_and_falls_back_to_at_most_once(tmp_path, caplog, capsys):
    with running_account(generate=(40, 120), seed=4) as acct:
        path = amo_config(tmp_path, acct, bot(61565, 0))  # 61565 sends its message but leaves the field alone
        config = load_config(path)
        with caplog.at_level(logging.WARNING, logger="lifecycle.executor"):
            sync(config)
        first = rows(config)
        assert first and {r.result.get("bot_step") for r in first} == {"missing"}
        warnings = [m for m in caplog.messages if "did not overwrite" in m]
        assert len(warnings) == 1 and "'reach'" in warnings[0]  # once per bot, not once per run
        assert main(["-q", "plan", "--config", str(path)]) == 0
        assert "Salesbot 61565 did NOT overwrite 'crm-lifecycle bot'" in capsys.readouterr().out
        assert main(["check", "--config", str(path)]) == 1  # a problem to fix, with where to read how
        out = capsys.readouterr().out
        assert "PROBLEM  campaign 'reach': Salesbot 61565 did NOT overwrite 'crm-lifecycle bot'" in out
        assert "docs/campaigns.md, Salesbot set-up" in out
        # another campaign runs the same bot and its run's answer is lost after amoCRM ran it: the field cannot
        # tell, so nothing is resent
        acct.faults(kind="reset_after", path=RUN, count=1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lifecycle.executor"):
            second = _add_campaign_with_the_same_bot(path)
        assert second, "the second campaign planned nothing"
        assert all(r.status == "done" for r in second) and any(r.result.get("unverified") for r in second)
        assert runs(acct) == Counter(r.customer_id for r in rows(load_config(path)))  # at most once: here, once each
        assert not [m for m in caplog.messages if "did not overwrite" in m]  # warned already (the same bot)


def _add_campaign_with_the_same_bot(path) -> list:
    """A second campaign with the same bot on another segment, acting on its current members; one sync; its
    ledger rows."""
    text = path.read_text(encoding="utf-8")
    text += ('\n[[campaign]]\nname = "reach2"\nsegment = "lifecycle.promising_asleep"\nauto_approve = true\n'
             'include_current_members = true\n'
             f'on_enter = [{bot(61565, 0)}]\n')
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    sync(config)
    return [r for r in rows(config) if r.campaign == "reach2"]


def test_plan_states_a_configured_bot_as_exactly_once(tmp_path, capsys):
    with running_account(generate=(30, 90), seed=4) as acct:
        path = amo_config(tmp_path, acct, bot(61564, 0))
        assert main(["-q", "plan", "--config", str(path)]) == 0
        assert "Salesbot 61564 not checked yet" in capsys.readouterr().out
        sync(load_config(path))
        assert {r.result.get("bot_step") for r in rows(load_config(path))} == {"seen"}
        assert main(["-q", "plan", "--config", str(path)]) == 0
        assert "Salesbot 61564 its first step overwrites 'crm-lifecycle bot': each run happens exactly once" in \
            capsys.readouterr().out
        assert main(["check", "--config", str(path)]) == 0
        assert "ok       campaign 'reach': Salesbot 61564 its first step overwrites" in capsys.readouterr().out
