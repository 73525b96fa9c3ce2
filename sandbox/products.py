"""A realistic product catalogue and the product rows of generated won deals (``--generate``).

Most products are bought again on a cycle: day lenses monthly, lens solution every two months, water
filter cartridges every three months, cat food monthly, an office-software licence yearly with monthly
support, coffee beans monthly; a few are one-off (a filter jug, a coffee machine, a gift card). Each
contact has one buying habit (a cyclical product, what goes with it, and an optional one-off starter
bought with the first order), picked with a preference for the products whose cycle is near the
contact's median gap between purchases, so a contact's won deals repeat the same product at a plausible
rhythm, which is what "bought X within N days" and cyclical-product rules look for.

Rows: 1 to 3 per won deal (the habit's product, now and then two or three packs, a companion product,
rarely a gift card; the first order of a habit with a starter may include it); a won deal without a
contact gets one one-off item. Prices are catalogue prices, sometimes with a 5 % or 10 % discount. Deal
amounts are left as generated (so the row totals differ from ``OPPORTUNITY`` / ``price``: a manual
amount, see the sandboxes' seeds). Everything is deterministic for a given seed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .dataset import SeedDeal, SeedProduct, SeedProductRow


@dataclass(frozen=True)
class Habit:
    product: int
    companions: tuple[int, ...] = ()
    starter: int | None = None


SECTIONS = ("Оптика", "Фильтры для воды", "Зоотовары", "Программы", "Кофе", "Подарки")

# id, name, section, price, sku, cycle (days; None = one-off), service
_ROWS = [
    (101, "Однодневные контактные линзы, 30 шт.", "Оптика", 1890.0, "LENS-1D-30", 30, False),
    (102, "Раствор для контактных линз, 360 мл", "Оптика", 690.0, "LENS-SOL-360", 60, False),
    (103, "Картридж для фильтра воды", "Фильтры для воды", 1290.0, "WF-CART", 90, False),
    (104, "Фильтр-кувшин", "Фильтры для воды", 1590.0, "WF-JUG", None, False),
    (105, "Корм для кошек, 10 кг", "Зоотовары", 4200.0, "PET-CAT-10", 30, False),
    (106, "Лицензия «Офис Про», 1 год", "Программы", 12000.0, "SW-OFFICE-1Y", 365, True),
    (107, "Техподдержка, 1 месяц", "Программы", 1500.0, "SW-SUPPORT-1M", 30, True),
    (108, "Кофемашина", "Кофе", 34990.0, "COF-MACHINE", None, False),
    (109, "Кофе в зёрнах, 1 кг", "Кофе", 1590.0, "COF-BEANS-1K", 30, False),
    (110, "Подарочный сертификат", "Подарки", 3000.0, "GIFT-CARD", None, False),
]
CATALOGUE: tuple[SeedProduct, ...] = tuple(
    SeedProduct(id=i, name=n, price=p, section=s, sku=k, service=svc) for i, n, s, p, k, _, svc in _ROWS)
CYCLE_DAYS: dict[int, int | None] = {row[0]: row[5] for row in _ROWS}
HABITS = (Habit(101, (102,)), Habit(103, (), 104), Habit(105), Habit(106, (107,)), Habit(109, (), 108))
HABIT_WEIGHTS = np.array([0.3, 0.25, 0.2, 0.1, 0.15])
ONE_OFF = (104, 110)
GIFT = 110


def _median_gaps(won: list[SeedDeal]) -> dict[int, float]:
    """Median days between a contact's won deals (contacts with two or more)."""
    moments: dict[int, list[int]] = {}
    for deal in won:
        if deal.contact_id and deal.closed_ts is not None:
            moments.setdefault(deal.contact_id, []).append(deal.closed_ts)
    out = {}
    for contact, ts in moments.items():
        if len(ts) > 1:
            ts.sort()
            out[contact] = statistics.median(b - a for a, b in zip(ts, ts[1:])) / 86_400
    return out


_CYCLES = [float(CYCLE_DAYS[h.product] or 365) for h in HABITS]
_BASE_WEIGHTS = HABIT_WEIGHTS.tolist()


def _habit_cumulative(gap_days: float | None) -> list[float]:
    """Cumulative habit weights: a habit whose cycle is near the contact's own rhythm is likelier (a yearly
    licence is not bought monthly)."""
    base = _BASE_WEIGHTS
    if gap_days is not None:
        gap = max(gap_days, 1.0)
        base = [w * math.exp(-2.0 * abs(math.log(gap / c))) + 1e-6 for w, c in zip(base, _CYCLES)]
    return list(itertools.accumulate(base))


def generate_rows(deals: Iterable[SeedDeal], *, seed: int = 7) -> list[SeedProductRow]:
    """Product rows for the won deals of ``deals`` (1-3 each), in deal id order."""
    rng = np.random.default_rng([seed, 17])
    by_id = {p.id: p for p in CATALOGUE}
    won = sorted((d for d in deals if d.status == "won"),
                 key=lambda d: (d.contact_id or 0, d.closed_ts or 0, d.id))
    n = len(won)
    # every random number is drawn up front (vectorised), then used in a fixed order
    quantity = rng.choice([1.0, 2.0, 3.0], size=n, p=[0.75, 0.2, 0.05]).tolist()
    u_starter, u_companion, u_gift, u_habit = (rng.random(n).tolist() for _ in range(4))
    one_off = rng.choice(ONE_OFF, size=n).tolist()
    discount = rng.choice([0.0, 0.05, 0.1], size=(n, 3), p=[0.8, 0.12, 0.08]).tolist()
    gaps = _median_gaps(won)
    habit_of: dict[int, Habit] = {}
    rows: list[SeedProductRow] = []
    for i, deal in enumerate(won):
        if not deal.contact_id:
            picked = [(int(one_off[i]), 1.0)]
        else:
            first = deal.contact_id not in habit_of
            if first:
                cumulative = _habit_cumulative(gaps.get(deal.contact_id))
                habit_of[deal.contact_id] = HABITS[min(bisect.bisect_left(cumulative, u_habit[i] * cumulative[-1]),
                                                       len(HABITS) - 1)]
            habit = habit_of[deal.contact_id]
            picked = [(habit.product, quantity[i])]
            if first and habit.starter and u_starter[i] < 0.6:
                picked.append((habit.starter, 1.0))
            if habit.companions and u_companion[i] < 0.35:
                picked.append((habit.companions[0], 1.0))
            if u_gift[i] < 0.05:
                picked.append((GIFT, 1.0))
        for k, (product_id, qty) in enumerate(picked[:3]):
            product = by_id[product_id]
            rows.append(SeedProductRow(deal.id, product_id, product.name, qty,
                                       round(product.price * (1 - discount[i][k]), 2)))
    return sorted(rows, key=lambda r: r.deal_id)  # stable: a deal's rows keep their order
