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


# -- templates: checked at load against a typed sample card, safe to render --------------------------

def campaign_toml(title: str, attr: str = "title") -> str:
    extra = f', description = "{title}"' if attr == "description" else ""
    shown = "x" if attr == "description" else title
    return (f'[[campaign]]\nname = "w"\nsegment = "status.former"\n'
            f'on_enter = [{{ action = "call_task", title = "{shown}"{extra} }}]\n')


@pytest.mark.parametrize("template, message", [
    ("Hi {purchases:>100000000}", "'w' on_enter[0].title: {purchases:>100000000}: width 100000000 is too wide; at most 100"),
    ("Hi {monetary:.100000000f}", "'w' on_enter[0].title: {monetary:.100000000f}: precision 100000000 is too large"),
    ("Hi {name!z}", "'w' on_enter[0].title: {name!z}: unknown conversion !z; use !s, !r, !a or none"),
    ("Hi {name", "'w' on_enter[0].title: expected '}' before end of string; write {{ and }} for literal braces"),
    ("Hi name}", "'w' on_enter[0].title: Single '}' encountered"),
    ("Hi {birthday:>12}", "{birthday:>12}: a date format needs strftime codes, e.g. {birthday:%d.%m.%Y}"),
    ("Hi {birthday:%10Y}", "{birthday:%10Y}: %1 is not a supported date code"),
    ("Hi {name:,d}", "{name:,d}: not a format for string field 'name'"),
    ("Hi {purchases:s}", "{purchases:s}: not a number format"),
    ("Hi {name.__class__}", "{name.__class__}: only plain field names are allowed"),
    ("Hi {last_purchse:%d.%m}", "unknown field {last_purchse} (did you mean {last_purchase}?)"),
    ("Hi {purchases:{width}}", "nested fields in a format spec are not supported"),
])
def test_a_bad_template_is_a_config_error_naming_the_campaign_and_the_key(tmp_path, template, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, campaign_toml(template)))
    assert message in str(err.value)
    assert str(err.value).count("\n") == 0  # one line


def test_a_bad_description_template_names_the_description(tmp_path):
    with pytest.raises(ConfigError, match=r"'w' on_enter\[0\]\.description: \{name!x\}"):
        load_config(write(tmp_path, campaign_toml("Hi {name!x}", attr="description")))


def test_date_formats_render_birthday_and_purchase_dates_and_empty_values_render_empty(tmp_path):
    title = "{name!s:.10}: {birthday:%d.%m}, last {last_purchase:%d.%m.%Y}, first {first_purchase:%-d.%-m.%y}"
    description = "{monetary:,.0f} RUB, {purchases:d} orders, gap {median_gap:.1f}, {has_phone}, {city:>3}"
    body = campaign_toml(title) + '[fields]\ncity = { type = "string" }\n'
    loaded = load_config(write(tmp_path, body))  # loads: every spec is valid against the typed sample card
    action = loaded.settings.campaign[0].on_enter[0]
    assert action.title == title
    c = campaign(on_enter=(call(title=title, description=description),))
    full = Card({"id": 1, "name": "Anna Karenina-Vronskaya", "birthday": date(1990, 5, 7), "recency_days": 3,
                 "first_purchase_days": 400, "monetary": 1234567.4, "purchases": 12, "median_gap": 31.25,
                 "has_phone": True, "city": "Tver"}, 7)
    out = run([c], {"seg": [1]}, cards_={1: full})
    assert out[0].payload["title"] == "Anna Karen: 07.05, last 20.11.2026, first 19.10.25"
    assert out[0].payload["description"] == "1,234,567 RUB, 12 orders, gap 31.2, True, Tver"
    empty = Card({"id": 2, "name": None, "birthday": None, "recency_days": None}, 7)
    out = run([c], {"seg": [2]}, cards_={2: empty})
    assert out[0].payload["title"] == ": , last , first "  # every missing value renders as an empty string
    assert out[0].payload["description"] == " RUB,  orders, gap , , "


def test_rendered_text_is_cut_to_the_crm_field_length_with_an_ellipsis():
    deal = ActionConfig(action="deal", title="{name:>100}{name:>100}{name:>100}", pipeline="p", script="{name}" * 5000)
    out = run([campaign(on_enter=(deal,))], {"seg": [1]}, cards_={1: Card({"id": 1, "name": "Bob"}, 7)})
    title, script = out[0].payload["title"], out[0].payload["script"]
    assert len(title) == 200 and title.endswith("…") and len(script) == 15000  # 15,000 fits in 20,000
    assert len(out[1].payload["title"]) == 200 and out[1].payload["title"].startswith("Call: ")
    long = ActionConfig(action="call_task", title="t", description="{name:>100}" * 300)
    text = run([campaign(on_enter=(long,))], {"seg": [1]}, cards_={1: Card({"id": 1, "name": "Bob"}, 7)})[0].payload["description"]
    assert len(text) == 20000 and text.endswith("…")


def test_a_value_of_an_unexpected_type_is_written_as_text_not_a_crash():
    c = campaign(on_enter=(call(title="{monetary:,.0f} / {birthday:%d.%m}"),))
    odd = Card({"id": 1, "monetary": "12 500 rub", "birthday": "not a date"}, 7)
    assert run([c], {"seg": [1]}, cards_={1: odd})[0].payload["title"] == "12 500 rub / "
