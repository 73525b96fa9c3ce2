"""The boundary cases of design.md, "Segment semantics", through the real path:
CSV files -> CSV source -> state store mirror -> features -> presets and rules."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from connector.pipeline import Computation, compute, make_source, open_store

AS_OF = date(2026, 11, 23)


def day(offset: int, base: date = AS_OF) -> str:
    return (base - timedelta(days=offset)).isoformat()


def run(ws, contacts, deals, as_of=AS_OF, extra="") -> Computation:
    ws.write_contacts(contacts)
    ws.write_deals(deals)
    config = ws.config(extra)
    store = open_store(config)
    try:
        store.apply_pull(make_source(config).pull())
        return compute(store, config, as_of)
    finally:
        store.close()


def feature(comp: Computation, cid: int, name: str):
    return comp.features.filter(pl.col("id") == cid).get_column(name).item()


def segments_of(comp: Computation, cid: int) -> set[str]:
    row = comp.membership.filter(pl.col("id") == cid).drop("id").row(0, named=True)
    return {k for k, v in row.items() if v}


def won(deal_id: int, contact: int, closed: str, amount: float = 1000) -> dict:
    return {"id": deal_id, "contact_id": contact, "status": "won", "amount": amount, "closed_at": closed}


def test_recency_boundaries_60_61_90_91(ws):
    contacts = [{"id": i} for i in (1, 2, 3, 4)]
    deals = [won(10 + i, i, day(offset)) for i, offset in zip((1, 2, 3, 4), (60, 61, 90, 91))]
    comp = run(ws, contacts, deals)
    assert segments_of(comp, 1) >= {"lifecycle.new_active", "status.current"}
    assert segments_of(comp, 2) >= {"lifecycle.new_sleeping", "status.current"}
    assert segments_of(comp, 3) >= {"lifecycle.new_sleeping", "status.current"}
    assert segments_of(comp, 4) >= {"lifecycle.new_asleep", "status.former"}
    assert "lifecycle.new_active" not in segments_of(comp, 2)
    assert "status.current" not in segments_of(comp, 4)
    assert comp.buyers == 4 and comp.active == 1 and comp.active_share == pytest.approx(0.25)


def test_purchase_counts_1_2_3_4_pick_the_row(ws):
    contacts = [{"id": i} for i in (1, 2, 3, 4)]
    deals, next_id = [], 100
    for cid in (1, 2, 3, 4):
        for k in range(cid):
            deals.append(won(next_id, cid, day(5 + 7 * k)))
            next_id += 1
    comp = run(ws, contacts, deals)
    assert "lifecycle.new_active" in segments_of(comp, 1)
    assert "lifecycle.promising_active" in segments_of(comp, 2)
    assert "lifecycle.promising_active" in segments_of(comp, 3)
    assert "lifecycle.regular_active" in segments_of(comp, 4)
    assert [feature(comp, c, "purchases") for c in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_cadence_lapse_exactly_at_and_just_past_factor_times_median_gap(ws):
    # Three purchase days 10 days apart: median_gap 10, lapse_factor 2 -> lapsed when recency > 20.
    contacts = [{"id": 1}, {"id": 2}]
    deals = [won(1, 1, day(20)), won(2, 1, day(30)), won(3, 1, day(40))]
    deals += [won(4, 2, day(21)), won(5, 2, day(31)), won(6, 2, day(41))]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "median_gap") == 10 and feature(comp, 1, "recency_days") == 20
    assert "cadence.lapsed" not in segments_of(comp, 1)
    assert "cadence.frequent" in segments_of(comp, 1)
    assert "cadence.lapsed" in segments_of(comp, 2)
    assert "cadence.frequent" not in segments_of(comp, 2)


@pytest.mark.parametrize(
    ("gap", "expected"),
    [(30, "cadence.frequent"), (31, "cadence.periodic"), (180, "cadence.periodic"), (181, "cadence.rare")],
)
def test_cadence_gap_thresholds(ws, gap, expected):
    contacts = [{"id": 1}]
    deals = [won(1, 1, day(1)), won(2, 1, day(1 + gap)), won(3, 1, day(1 + 2 * gap))]
    comp = run(ws, contacts, deals)
    cadence = {s for s in segments_of(comp, 1) if s.startswith("cadence.")}
    assert cadence == {expected}


def test_median_gap_uses_median_of_distinct_day_gaps(ws):
    contacts = [{"id": 1}]
    # Purchase days at 100, 90, 60, 0 days ago -> gaps 10, 30, 60 -> median 30.
    deals = [won(i, 1, day(o)) for i, o in enumerate((100, 90, 60, 0), start=1)]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "median_gap") == 30
    assert feature(comp, 1, "first_purchase_days") == 100


def test_one_or_two_purchase_days_are_rare_only_when_first_purchase_is_old(ws):
    contacts = [{"id": 1}, {"id": 2}, {"id": 3}]
    deals = [won(1, 1, day(180)), won(2, 2, day(181)), won(3, 3, day(181)), won(4, 3, day(10))]
    comp = run(ws, contacts, deals)
    assert not any(s.startswith("cadence.") for s in segments_of(comp, 1))
    assert "cadence.rare" in segments_of(comp, 2)
    assert "cadence.rare" in segments_of(comp, 3)


def test_same_day_purchases_count_as_purchases_but_one_purchase_day(ws):
    contacts = [{"id": 1}, {"id": 2}]
    # Contact 1: two orders on one Moscow day (23:30 MSK and 20:30 UTC = 23:30 MSK).
    # Contact 2: 21:30 UTC is 00:30 MSK next day, so two different days.
    deals = [
        won(1, 1, "2026-11-01T23:30:00+03:00"),
        won(2, 1, "2026-11-01T20:30:00Z"),
        won(3, 2, "2026-11-01T23:30:00+03:00"),
        won(4, 2, "2026-11-01T21:30:00Z"),
    ]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "purchases") == 2 and feature(comp, 1, "purchase_days") == 1
    assert feature(comp, 2, "purchases") == 2 and feature(comp, 2, "purchase_days") == 2
    assert feature(comp, 1, "median_gap") is None
    assert feature(comp, 2, "median_gap") == 1
    assert "lifecycle.promising_active" in segments_of(comp, 1)


def test_purchases_after_as_of_are_ignored(ws):
    contacts = [{"id": 1}, {"id": 2}]
    deals = [won(1, 1, day(10)), won(2, 1, day(-1)), won(3, 2, day(-1))]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "purchases") == 1
    assert feature(comp, 1, "recency_days") == 10
    assert segments_of(comp, 2) == {"status.prospect"}
    later = run(ws, contacts, deals, as_of=AS_OF + timedelta(days=1))
    assert feature(later, 1, "purchases") == 2 and feature(later, 1, "recency_days") == 0


def test_lost_and_open_deals_are_not_purchases(ws):
    contacts = [{"id": 1}]
    deals = [
        {"id": 1, "contact_id": 1, "status": "lost", "amount": 500, "created_at": day(20), "closed_at": day(15)},
        {"id": 2, "contact_id": 1, "status": "open", "amount": 700, "created_at": day(3)},
        {"id": 3, "contact_id": 1, "status": "open", "amount": 700, "created_at": day(-3)},
    ]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "purchases") == 0
    assert feature(comp, 1, "monetary") == 0
    assert feature(comp, 1, "lost_deals") == 1
    assert feature(comp, 1, "open_deals") == 1  # the one created after as_of is not counted
    assert segments_of(comp, 1) == {"status.prospect"}


def test_deals_without_a_customer_are_skipped_and_counted(ws):
    contacts = [{"id": 1}]
    deals = [won(1, 1, day(5)), {"id": 2, "status": "won", "amount": 10, "closed_at": day(5)}, won(3, 777, day(5))]
    comp = run(ws, contacts, deals)
    assert comp.stats.deals == 3
    assert comp.stats.deals_without_customer == 1
    assert comp.stats.deals_unknown_customer == 1
    assert feature(comp, 1, "purchases") == 1
    assert comp.customers == 1


@pytest.mark.parametrize(
    ("as_of", "days"),
    [
        (date(2027, 2, 28), 0),  # non-leap year: 29 Feb counts as 28 Feb
        (date(2027, 3, 1), 365),  # next is 29 Feb 2028
        (date(2028, 2, 28), 1),  # leap year: the real 29 Feb
        (date(2028, 2, 29), 0),
        (date(2027, 12, 31), 60),
        (date(2026, 1, 1), 58),  # 28 Feb 2026
    ],
)
def test_29_february_birthdays(ws, as_of, days):
    comp = run(ws, [{"id": 1, "birthday": "1992-02-29"}], [], as_of=as_of)
    assert feature(comp, 1, "days_to_birthday") == days


def test_birthday_soon_window_30_31(ws):
    contacts = [{"id": 1, "birthday": "1980-12-23"}, {"id": 2, "birthday": "1980-12-24"}, {"id": 3, "birthday": "1980-11-23"}, {"id": 4}]
    comp = run(ws, contacts, [])
    assert feature(comp, 1, "days_to_birthday") == 30 and "birthday.soon" in segments_of(comp, 1)
    assert feature(comp, 2, "days_to_birthday") == 31 and "birthday.soon" not in segments_of(comp, 2)
    assert feature(comp, 3, "days_to_birthday") == 0 and "birthday.soon" in segments_of(comp, 3)
    assert feature(comp, 4, "days_to_birthday") is None and "birthday.soon" not in segments_of(comp, 4)


def test_customers_created_after_as_of_are_not_in_the_base(ws):
    contacts = [{"id": 1, "created_at": day(-2)}, {"id": 2, "created_at": day(2)}, {"id": 3, "created_at": day(-2)}]
    comp = run(ws, contacts, [won(1, 3, day(5))])
    assert sorted(comp.membership.get_column("id").to_list()) == [2, 3]


def test_thresholds_are_configurable(ws):
    extra = """
[segments.lifecycle]
purchase_bins = [1, 3, 6]
recency_days = [30, 45]
[segments.birthday]
soon_days = 7
"""
    contacts = [{"id": 1, "birthday": "1990-11-30"}]
    deals = [won(1, 1, day(31)), won(2, 1, day(50))]
    comp = run(ws, contacts, deals, extra=extra)
    assert "lifecycle.new_sleeping" in segments_of(comp, 1)  # 2 purchases is still "new" with bins 1,3,6
    assert "birthday.soon" in segments_of(comp, 1)
    assert "status.current" in segments_of(comp, 1)


def test_monetary_avg_order_and_contact_flags(ws):
    contacts = [{"id": 1, "phone": "+7 900 000-00-00", "email": " "}]
    deals = [won(1, 1, day(3), 1000.5), won(2, 1, day(40), 2000)]
    comp = run(ws, contacts, deals)
    assert feature(comp, 1, "monetary") == pytest.approx(3000.5)
    assert feature(comp, 1, "avg_order") == pytest.approx(1500.25)
    assert feature(comp, 1, "has_phone") is True
    assert feature(comp, 1, "has_email") is False


def test_company_customers_count_deals_by_company(ws):
    ws.write_contacts([{"id": 1}], name="companies.csv")
    extra = ""
    contacts = [{"id": 5}]
    deals = [
        {"id": 1, "contact_id": 5, "company_id": 1, "status": "won", "amount": 10, "closed_at": day(3)},
        {"id": 2, "contact_id": 5, "status": "won", "amount": 10, "closed_at": day(4)},
    ]
    ws.write_contacts(contacts)
    ws.write_deals(deals)
    ws.write_config(extra)
    text = ws.config_path.read_text().replace('timezone = "Europe/Moscow"', 'timezone = "Europe/Moscow"\ncustomer = "company"')
    ws.config_path.write_text(text)
    from connector.config import load_config

    config = load_config(ws.config_path)
    store = open_store(config)
    store.apply_pull(make_source(config).pull())
    comp = compute(store, config, AS_OF)
    store.close()
    assert comp.membership.get_column("id").to_list() == [1]
    assert feature(comp, 1, "purchases") == 1
    assert comp.stats.deals_without_customer == 1


def test_purchase_dates_before_1970_keep_their_gaps(ws):
    contacts = [{"id": 1}]
    deals = [won(1, 1, "1965-03-01"), won(2, 1, "1965-03-11"), won(3, 1, "1965-03-31")]
    comp = run(ws, contacts, deals, as_of=date(1965, 4, 10))
    assert feature(comp, 1, "purchase_days") == 3
    assert feature(comp, 1, "median_gap") == 15
    assert feature(comp, 1, "first_purchase_days") == 40 and feature(comp, 1, "recency_days") == 10
