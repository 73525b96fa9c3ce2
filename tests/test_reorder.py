"""rules.reorder over hand-built product rows: the due date stretched by quantity, the window's edges, the learned
cycle's minimum of observations, and the earliest of two products."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from rules.reorder import DUE_COLUMN, add_reorder_features

D0 = date(2026, 1, 1)


@dataclass(frozen=True)
class Cycle:
    product: str
    cycle_days: int | str
    remind_before_days: int = 5
    units_per_cycle: float | None = None
    max_overdue_days: int | None = None


def rows(*items: tuple[int, int, str, float, int]) -> pl.DataFrame:
    """(customer, deal, product name, quantity, day offset from D0)."""
    return pl.DataFrame({
        "customer_id": [i[0] for i in items], "deal_id": [i[1] for i in items], "product_id": [None] * len(items),
        "product_name": [i[2] for i in items], "section": [None] * len(items), "quantity": [i[3] for i in items],
        "price": [1.0] * len(items), "closed_on": [D0 + timedelta(days=i[4]) for i in items],
    }, schema_overrides={"product_id": pl.String, "section": pl.String})


FEATURES = pl.DataFrame({"id": [1, 2, 3]})


def run(data: pl.DataFrame, cycles: list[Cycle], day: int, **kw) -> tuple[dict[int, tuple], list]:
    out, reports = add_reorder_features(FEATURES, data, cycles, as_of=D0 + timedelta(days=day), **kw)
    table = {r["id"]: (r["reorder_product"], r["reorder_due_date"], r["reorder_overdue_days"], r[DUE_COLUMN])
             for r in out.iter_rows(named=True)}
    return table, reports


def test_quantity_stretches_the_cycle_and_the_window_has_exact_edges():
    data = rows((1, 10, "Pack", 3.0, 0))
    cycle = [Cycle("pack", 30, remind_before_days=5, units_per_cycle=1, max_overdue_days=5)]
    due = D0 + timedelta(days=90)
    assert run(data, cycle, 84)[0][1] == ("Pack", due, -6, False)
    assert run(data, cycle, 85)[0][1] == ("Pack", due, -5, True)
    assert run(data, cycle, 95)[0][1] == ("Pack", due, 5, True)
    assert run(data, cycle, 96)[0][1] == (None, None, None, False)  # lapsed: the cycle stops asking
    assert run(data, cycle, 85)[0][2] == (None, None, None, False)  # never bought it


def test_a_purchase_after_as_of_is_ignored_and_a_reorder_closes_the_window():
    data = rows((1, 10, "Lens", 1.0, 0), (1, 11, "Lens", 1.0, 28))
    cycle = [Cycle("Lens", 30)]
    assert run(data, cycle, 27)[0][1][3] is True  # day 28's purchase is not known yet on day 27
    assert run(data, cycle, 28)[0][1] == ("Lens", D0 + timedelta(days=58), -30, False)


def test_learned_cycle_needs_the_minimum_of_gaps_and_two_products_give_the_earliest():
    data = rows((1, 1, "A", 1, 0), (1, 2, "A", 1, 10), (1, 3, "A", 1, 30), (2, 4, "A", 1, 0), (2, 5, "A", 1, 40),
                (2, 6, "B", 1, 35))
    cycles = [Cycle("A", "learn"), Cycle("B", 20, remind_before_days=0)]
    table, reports = run(data, cycles, 50, min_observations=3)
    assert (reports[0].cycle_days, reports[0].observations) == (20.0, 3)  # gaps 10, 20, 40: median 20
    assert table[1] == ("A", D0 + timedelta(days=50), 0, True)
    assert table[2] == ("B", D0 + timedelta(days=55), -5, False)  # A due 60, B due 55: B is the earlier one
    _table, reports = run(data, cycles, 50, min_observations=4)
    assert reports[0].cycle_days is None and reports[0].due == 0
