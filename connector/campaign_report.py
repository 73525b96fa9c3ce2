"""``lifecycle report --campaigns``: did a campaign work? Contacted customers against its holdout group.

Per campaign, over the entries of the last ``--days`` days (default: all):

* **contacted**: customers for whom the campaign created an action in the CRM (ledger status ``done``);
  **holdout**: customers kept out by ``holdout_percent`` (ledger status ``holdout``, no action taken). A
  customer counts once per campaign, from their first entry in the window.
* **bought**: share of each group with a won deal closed on the entry day or within ``attribution_days``
  after it; **revenue per customer**: the amount of those deals over the group's customers.
* **difference** (contacted minus holdout) with a 95 % confidence interval: for the share, Newcombe's hybrid
  score interval (method 10, from the two Wilson intervals); for revenue per customer, the normal
  approximation with unpooled variances (Welch). An interval that excludes zero says the difference is
  unlikely to be chance alone.
* **call tasks closed by reps**: of the campaign's call tasks created in the CRM, the share that are
  completed there, leaving out those the connector completed itself (``close_on_exit``); read from the CRM
  when it can be reached ("-" otherwise).

Everything is computed from the ledger and the mirror: run ``lifecycle sync`` first so the purchases are in.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

Z95 = 1.959963984540054
TASK_ACTIONS = ("call_task", "todo", "deal_task")


@dataclass
class Arm:
    customers: int = 0
    bought: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0  # sum of squared per-customer revenue (for the variance)

    @property
    def share(self) -> float | None:
        return self.bought / self.customers if self.customers else None

    @property
    def revenue_per_customer(self) -> float | None:
        return self.revenue / self.customers if self.customers else None

    def revenue_variance(self) -> float:
        n = self.customers
        if n < 2:
            return 0.0
        mean = self.revenue / n
        return max(0.0, (self.revenue_sq - n * mean * mean) / (n - 1))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float] | None:
    """Difference p1 - p2 with Newcombe's hybrid score interval (method 10): (difference, low, high)."""
    if not n1 or not n2:
        return None
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def welch(a: Arm, b: Arm, z: float = Z95) -> tuple[float, float, float] | None:
    """Difference of revenue per customer (a - b) with the normal-approximation interval, unpooled variances."""
    if a.customers < 2 or b.customers < 2:
        return None
    d = a.revenue / a.customers - b.revenue / b.customers
    se = math.sqrt(a.revenue_variance() / a.customers + b.revenue_variance() / b.customers)
    return (d, d - z * se, d + z * se)


def campaign_results(config: Any, store: Any, *, days: int | None = None, as_of: date | None = None,
                     closed: dict[str, tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """One dict per configured campaign (see the module's doc). ``closed``: campaign -> (closed, created) call
    tasks, when read from the CRM."""
    from connector.pipeline import today_in

    tz = ZoneInfo(config.crm.timezone)
    as_of = as_of or today_in(config.crm.timezone)
    since = as_of - timedelta(days=days) if days else None
    rows = store.ledger(["done", "holdout"])
    first: dict[tuple[str, str, int], date] = {}
    for r in rows:
        if r.parent_key is not None or r.event != "enter":
            continue
        if since is not None and r.entry_date < since:
            continue
        arm = "holdout" if r.status == "holdout" else "contacted"
        key = (r.campaign, arm, r.customer_id)
        first[key] = min(first.get(key, r.entry_date), r.entry_date)
    import sqlalchemy as sa

    from connector.store import deals

    column = deals.c.company_id if config.crm.customer == "company" else deals.c.contact_id
    purchases: dict[int, list[tuple[date, float]]] = {}
    pid = store.portal_id
    with store.engine.connect() as conn:  # plain SQLAlchemy: the dashboard reads no frame through connectorx
        won = conn.execute(sa.select(column, deals.c.amount, deals.c.closed_ts).where(
            deals.c.portal_id == pid, deals.c.status == "won", column.is_not(None), deals.c.closed_ts.is_not(None))).all()
    for cid, amount, closed_ts in won:
        purchases.setdefault(int(cid), []).append((datetime.fromtimestamp(closed_ts, tz).date(), float(amount or 0)))
    out = []
    for campaign in config.settings.campaign:
        window = campaign.attribution_days
        arms = {"contacted": Arm(), "holdout": Arm()}
        for (name, arm, cid), entered in first.items():
            if name != campaign.name:
                continue
            spent = sum(amount for day, amount in purchases.get(cid, []) if entered <= day <= entered + timedelta(days=window))
            bought = any(entered <= day <= entered + timedelta(days=window) for day, _ in purchases.get(cid, []))
            a = arms[arm]
            a.customers += 1
            a.bought += int(bought)
            a.revenue += spent
            a.revenue_sq += spent * spent
        c, h = arms["contacted"], arms["holdout"]
        share = newcombe(c.bought, c.customers, h.bought, h.customers)
        revenue = welch(c, h)
        tasks = (closed or {}).get(campaign.name)
        out.append({
            "campaign": campaign.name, "segment": campaign.segment, "attribution_days": window,
            "holdout_percent": campaign.holdout_percent,
            "contacted": {**asdict(c), "share_bought": c.share, "revenue_per_customer": c.revenue_per_customer},
            "holdout": {**asdict(h), "share_bought": h.share, "revenue_per_customer": h.revenue_per_customer},
            "share_difference": _interval(share), "revenue_difference": _interval(revenue),
            "call_tasks_closed": None if tasks is None else {"closed": tasks[0], "created": tasks[1],
                                                              "share": tasks[0] / tasks[1] if tasks[1] else None},
        })
    for r in out:
        for arm in ("contacted", "holdout"):
            r[arm].pop("revenue_sq", None)
    return out


def _interval(value: tuple[float, float, float] | None) -> dict[str, float] | None:
    if value is None:
        return None
    d, lo, hi = value
    return {"difference": d, "ci95_low": lo, "ci95_high": hi}


def closed_call_tasks(config: Any, store: Any) -> dict[str, tuple[int, int]] | None:
    """campaign -> (closed, created) call tasks, read from the CRM; None when it cannot tell."""
    from connector.pipeline import make_sink

    done = store.ledger(["done"])
    rows = [r for r in done if r.action in TASK_ACTIONS and (r.result or {}).get("id")]
    if not rows:
        return {}
    # tasks the connector itself completed (close_on_exit) were not closed by a rep
    ours = {int(r.payload["target"]) for r in done if r.action == "close_task" and not (r.result or {}).get("left")}
    sink = None
    try:
        sink = make_sink(config, store)
        if sink is None or not hasattr(sink, "closed_tasks"):
            return None
        completed = sink.closed_tasks([(r.action, int(r.result["id"])) for r in rows])
    except Exception as exc:  # noqa: BLE001 - the rest of the report stands without it
        from connector.logs import safe_error

        print(f"note: could not read the call tasks from the CRM: {safe_error(exc)}", file=sys.stderr)
        return None
    finally:
        if sink is not None:
            sink.close()
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        closed, created = out.get(r.campaign, (0, 0))
        task = int(r.result["id"])
        by_rep = task in completed.get(r.action, set()) and not (r.action != "todo" and task in ours)
        out[r.campaign] = (closed + int(by_rep), created + 1)
    return out


CSV_COLUMNS = ("campaign", "segment", "attribution_days", "contacted_customers", "contacted_share_bought",
               "contacted_revenue_per_customer", "holdout_customers", "holdout_share_bought",
               "holdout_revenue_per_customer", "share_difference", "share_ci95_low", "share_ci95_high",
               "revenue_difference", "revenue_ci95_low", "revenue_ci95_high", "call_tasks_closed_share")


def flat(r: dict[str, Any]) -> dict[str, Any]:
    s, v, t = r["share_difference"] or {}, r["revenue_difference"] or {}, r["call_tasks_closed"] or {}
    return {"campaign": r["campaign"], "segment": r["segment"], "attribution_days": r["attribution_days"],
            "contacted_customers": r["contacted"]["customers"], "contacted_share_bought": r["contacted"]["share_bought"],
            "contacted_revenue_per_customer": r["contacted"]["revenue_per_customer"],
            "holdout_customers": r["holdout"]["customers"], "holdout_share_bought": r["holdout"]["share_bought"],
            "holdout_revenue_per_customer": r["holdout"]["revenue_per_customer"],
            "share_difference": s.get("difference"), "share_ci95_low": s.get("ci95_low"), "share_ci95_high": s.get("ci95_high"),
            "revenue_difference": v.get("difference"), "revenue_ci95_low": v.get("ci95_low"),
            "revenue_ci95_high": v.get("ci95_high"), "call_tasks_closed_share": t.get("share")}


def report_command(config: Any, args: Any, out: Any) -> int:
    from rich.table import Table

    from connector.config import ConfigError
    from connector.pipeline import open_store

    if not config.settings.campaign:
        raise ConfigError(f"{config.path}: no [[campaign]] in the config: nothing to report")
    if args.days is not None and args.days < 1:
        raise ConfigError("--days: give a positive number of days")
    store = open_store(config)
    try:
        closed = closed_call_tasks(config, store)
        results = campaign_results(config, store, days=args.days, as_of=args.as_of, closed=closed)
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps(results, ensure_ascii=False))
        return 0
    if args.format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in results:
            writer.writerow(flat(r))
        sys.stdout.write(buf.getvalue())
        return 0
    table = Table(title="Campaign results: contacted vs holdout (95 % CI: Newcombe for shares, Welch for revenue)")
    for col in ("campaign", "contacted", "holdout", "bought: contacted / holdout", "difference [95 % CI]",
                "revenue per customer: contacted / holdout", "difference [95 % CI]", "call tasks closed by reps"):
        table.add_column(col)
    for r in results:
        f = flat(r)
        table.add_row(r["campaign"], str(f["contacted_customers"]), str(f["holdout_customers"]),
                      f"{_pct(f['contacted_share_bought'])} / {_pct(f['holdout_share_bought'])}",
                      _ci(r["share_difference"], _pct), f"{_num(f['contacted_revenue_per_customer'])} / "
                      f"{_num(f['holdout_revenue_per_customer'])}", _ci(r["revenue_difference"], _num),
                      _pct(f["call_tasks_closed_share"]))
    out.print(table)
    out.print(f"purchases counted within each campaign's attribution_days of the entry; "
              f"{'entries of the last ' + str(args.days) + ' days' if args.days else 'all entries'}")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ci(value: dict[str, float] | None, fmt: Any) -> str:
    if value is None:
        return "-"
    if fmt is _pct:
        return f"{value['difference'] * 100:+.1f} pp [{value['ci95_low'] * 100:+.1f}, {value['ci95_high'] * 100:+.1f}]"
    return f"{value['difference']:+,.0f} [{value['ci95_low']:+,.0f}, {value['ci95_high']:+,.0f}]"
