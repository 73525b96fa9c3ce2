"""The campaign planner is a pure function: entries/exits + ledger history + caps + calendar -> actions."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from connector.campaigns import Card, LedgerHistory, WorkCalendar, marker, plan
from connector.config import ActionConfig, CampaignConfig, ConfigError, PressureConfig, load_config

TZ = ZoneInfo("Europe/Moscow")
MONDAY = date(2026, 11, 23)
CAL = WorkCalendar(holidays=frozenset({date(2026, 11, 25)}))


def call(**kw) -> ActionConfig:
    return ActionConfig(action="call_task", title=kw.pop("title", "Call {name}"), **kw)


def campaign(**kw) -> CampaignConfig:
    return CampaignConfig(name=kw.pop("name", "winback"), segment=kw.pop("segment", "seg"),
                          on_enter=kw.pop("on_enter", (call(due_in_days=2),)), **kw)


def cards(*ids, rep=7, **extra) -> dict[int, Card]:
    return {i: Card({"id": i, "name": f"Customer {i}", "purchases": 4, **extra}, rep) for i in ids}


def run(campaigns, entered, *, left=None, history=None, pressure=None, cards_=None, day=MONDAY):
    return plan(campaigns, entered, left or {}, day, cards_ or cards(*{i for v in entered.values() for i in v}),
                history or LedgerHistory(), CAL, pressure or PressureConfig(), TZ)


def test_every_entry_gets_its_actions_with_rendered_templates_and_a_working_day_deadline():
    out = run([campaign(on_enter=(call(title="Call {name}: {purchases} orders", description="Hi {name}", due_in_days=2),))],
              {"seg": [3, 1]})
    assert [a.customer_id for a in out] == [1, 3]
    first = out[0]
    assert first.payload["title"] == "Call Customer 1: 4 orders" and first.payload["description"] == "Hi Customer 1"
    # Monday + 2 working days, Wednesday 25th a holiday -> Thursday 26th, 18:00 Moscow time
    assert first.payload["deadline"] == "2026-11-26T18:00:00+03:00"
    assert first.key == "winback/on_enter.0.call_task/1/2026-11-23" and first.skip_reason is None
    assert first.responsible_id == 7


def test_keys_are_deterministic_and_already_planned_keys_are_not_planned_again():
    once = run([campaign()], {"seg": [1, 2]})
    again = run([campaign()], {"seg": [1, 2]})
    assert [a.key for a in once] == [a.key for a in again]
    assert marker(once[0].key) == marker(again[0].key) != marker(once[1].key)
    history = LedgerHistory(keys={a.key for a in once})
    assert run([campaign()], {"seg": [1, 2]}, history=history) == []


def test_a_deal_is_a_deal_plus_a_call_task_on_it():
    deal = ActionConfig(action="deal", title="Repeat sale: {name}", pipeline="Repeat sales", script="Offer {purchases}")
    out = run([campaign(on_enter=(deal,))], {"seg": [5]})
    assert [a.action for a in out] == ["deal", "deal_task"]
    assert out[1].parent_key == out[0].key and out[1].payload["title"] == "Call: Repeat sale: Customer 5"
    assert out[0].payload["script"] == "Offer 4" == out[1].payload["description"]


def test_reentry_within_the_cooldown_is_skipped_after_it_is_not():
    history = LedgerHistory(last_by_campaign={("winback", 1): MONDAY - timedelta(days=10)})
    inside = run([campaign(cooldown_days=30)], {"seg": [1]}, history=history)
    assert inside[0].skip_reason.startswith("cooldown")
    history = LedgerHistory(last_by_campaign={("winback", 1): MONDAY - timedelta(days=30)})
    assert run([campaign(cooldown_days=30)], {"seg": [1]}, history=history)[0].skip_reason is None


def test_pressure_caps_touches_across_campaigns_and_do_not_contact_excludes():
    pressure = PressureConfig(max_touches=1, period_days=30)
    two = [campaign(name="a"), campaign(name="b")]
    out = run(two, {"seg": [1]}, pressure=pressure)
    assert [(a.campaign, a.skip_reason is None) for a in out] == [("a", True), ("b", False)]
    assert out[1].skip_reason.startswith("pressure")
    old = LedgerHistory(touches={1: [MONDAY - timedelta(days=30)]})  # outside the 30-day period
    assert run([campaign()], {"seg": [1]}, pressure=pressure, history=old)[0].skip_reason is None
    blocked = {1: Card({"id": 1, "name": "X"}, 7, do_not_contact=True)}
    assert run([campaign()], {"seg": [1]}, cards_=blocked)[0].skip_reason == "do not contact"


def test_round_robin_with_a_daily_cap_per_rep():
    rr = campaign(responsible=(10, 20), daily_cap_per_rep=2)
    out = run([rr], {"seg": [1, 2, 3, 4, 5]})
    assert [a.responsible_id for a in out] == [10, 20, 10, 20, None]
    assert out[4].skip_reason.startswith("daily cap")
    owner = campaign(daily_cap_per_rep=1)
    out = run([owner], {"seg": [1, 2]})
    assert out[0].skip_reason is None and out[1].skip_reason.startswith("daily cap")
    nobody = run([campaign()], {"seg": [1]}, cards_={1: Card({"id": 1}, None)})
    assert nobody[0].skip_reason == "customer has no responsible user"


def test_on_exit_actions_follow_leavers_only():
    c = campaign(on_enter=(), on_exit=(call(title="Ask {name} why"),))
    out = run([c], {"seg": [1]}, left={"seg": [2]}, cards_=cards(1, 2))
    assert [(a.customer_id, a.event) for a in out] == [(2, "exit")]


def test_calendar_skips_weekends_and_holidays():
    friday = date(2026, 11, 27)
    assert CAL.add_working_days(friday, 1) == date(2026, 11, 30)
    assert CAL.add_working_days(date(2026, 11, 28), 0) == date(2026, 11, 30)  # Saturday -> Monday
    assert CAL.add_working_days(date(2026, 11, 24), 1) == date(2026, 11, 26)  # over the holiday


def write(tmp_path, body: str):
    (tmp_path / "crm").mkdir(exist_ok=True)
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "http://127.0.0.1:9/rest/1/x/"\n' + body, encoding="utf-8")
    return path


@pytest.mark.parametrize("body, message", [
    ('[[campaign]]\nname = "w"\nsegment = "lifecycle.regular_aslep"\non_enter = [{ action = "call_task", title = "x" }]',
     "'w': segment 'lifecycle.regular_aslep' is not a segment (did you mean 'lifecycle.regular_asleep'?)"),
    ('[[campaign]]\nname = "w"\nsegment = "status.former"\non_enter = [{ action = "call_task", title = "Call {nmae}" }]',
     "'w' on_enter[0].title: unknown field {nmae}"),
    ('[[campaign]]\nname = "w"\nsegment = "status.former"\non_enter = [{ action = "deal", title = "x" }]',
     "[[campaign]] #1 ('w') on_enter.0: action 'deal' needs pipeline"),
    ('[[campaign]]\nname = "w"\nsegment = "status.former"\nresponsible = []\non_enter = [{ action = "call_task", title = "x" }]',
     "responsible must be 'owner' or a non-empty list"),
])
def test_campaign_config_errors_name_the_campaign(tmp_path, body, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, body))
    assert message in str(err.value)


def test_campaigns_need_a_crm(tmp_path):
    path = tmp_path / "lifecycle.toml"
    (tmp_path / "crm").mkdir()
    path.write_text('[crm]\nkind = "csv"\npath = "crm"\n[[campaign]]\nname = "w"\nsegment = "status.former"\n'
                    'on_enter = [{ action = "call_task", title = "x" }]\n', encoding="utf-8")
    from connector.pipeline import sync

    with pytest.raises(ConfigError, match="needs a CRM"):
        sync(load_config(path))
