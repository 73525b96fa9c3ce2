"""``lifecycle demo``: a full cycle on a generated base, then a second cycle after some customers moved.

Until the Bitrix24 sandbox exists the demo uses the CSV source: it generates a realistic base relative to
today, syncs it, prints the matrix and segments, then lets a fifth of the sleeping customers buy again,
deletes a few contacts, adds one malformed row, syncs again and prints who entered and left.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import polars as pl
from rich.console import Console

from connector import report
from connector.config import load_config
from connector.pipeline import SyncResult, sync, today_in
from sandbox.synthetic import generate, write_csv

TIMEZONE = "Europe/Moscow"

DEMO_CONFIG = """\
# Written by `lifecycle demo`. See config.example.toml for every option.
[crm]
kind = "csv"
path = "crm"
timezone = "Europe/Moscow"

[state]
url = "sqlite:///state.db"

[fields]
source = { type = "string" }
points = { type = "number" }

[[segment]]
name = "vip"
when = "monetary >= 50000 and purchases >= 4"

[[segment]]
name = "vip_slipping"
when = "vip and (lifecycle.regular_sleeping or lifecycle.regular_asleep)"

[[segment]]
name = "callable_lapsed"
when = "cadence.lapsed and has_phone and source != 'partner'"

[[segment]]
name = "first_cohort"
when = "purchases >= 1"
static = true
"""


def run_demo(out: Console, *, customers: int = 3000, keep: str | None = None) -> int:
    logging.getLogger("lifecycle.pipeline").setLevel(logging.ERROR)
    if keep:
        folder = Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        return _run(out, folder, customers)
    with tempfile.TemporaryDirectory(prefix="lifecycle-demo-") as tmp:
        return _run(out, Path(tmp), customers)


def _run(out: Console, folder: Path, customers: int) -> int:
    today = today_in(TIMEZONE)
    cust, deals = generate(customers, customers * 3, today=today, timezone=TIMEZONE)
    crm = folder / "crm"
    write_csv(crm, cust, deals, timezone=TIMEZONE)
    (folder / "state.db").unlink(missing_ok=True)
    config_path = folder / "lifecycle.toml"
    config_path.write_text(DEMO_CONFIG, encoding="utf-8")
    config = load_config(config_path)

    out.rule(f"1. First sync of {customers} customers and {deals.height} deals (CSV source, {crm})")
    first = sync(config)
    _print_sync(out, first)
    report.render_table(first.computation, config.settings, segments=config.rules.segment_names, members=False, console=out)

    out.rule("2. A week of CRM activity: win-backs, deleted contacts, one broken row")
    sleeping = first.computation.membership.filter(
        pl.col("lifecycle.new_sleeping") | pl.col("lifecycle.promising_sleeping") | pl.col("lifecycle.regular_sleeping")
    ).get_column("id")
    buyers = sleeping.sample(fraction=0.2, seed=1) if sleeping.len() else sleeping
    now = int(pl.Series([today]).cast(pl.Datetime("us")).dt.replace_time_zone(TIMEZONE).dt.epoch("s")[0]) + 12 * 3600
    new_deals = pl.DataFrame(
        {
            "id": pl.int_range(deals.height + 1, deals.height + 1 + buyers.len(), eager=True),
            "contact_id": buyers,
            "company_id": pl.Series([None] * buyers.len(), dtype=pl.Int64),
            "status": ["won"] * buyers.len(),
            "amount": [9900.0] * buyers.len(),
            "currency": ["RUB"] * buyers.len(),
            "created_ts": [now] * buyers.len(),
            "closed_ts": [now] * buyers.len(),
        },
        schema=deals.schema,
    )
    gone = cust.sample(n=max(1, customers // 200), seed=2).get_column("id")
    write_csv(crm, cust.filter(~pl.col("id").is_in(gone.implode())), pl.concat([deals, new_deals]), timezone=TIMEZONE)
    with (crm / "deals.csv").open("a", encoding="utf-8") as handle:
        handle.write("999999999,1,,maybe,10,RUB,2024-01-01,\n")
    out.print(f"{buyers.len()} sleeping customers bought today; {gone.len()} contacts deleted; 1 malformed deal row added")

    second = sync(config)
    _print_sync(out, second)
    report.render_table(second.computation, config.settings, segments=config.rules.segment_names, members=False, console=out)
    out.print(f"State store: {folder / 'state.db'} (membership, entry/exit history, run records)")
    return 0


def _print_sync(out: Console, result: SyncResult) -> None:
    s = result.summary()
    out.print(
        f"run {result.run_id}: {s['customers']} customers, {s['deals']} deals; "
        f"{s['rows_skipped']} malformed rows skipped, {s['deals_without_customer']} deals without a customer"
    )
    for err in result.row_errors[:5]:
        out.print(f"  skipped {err}", style="yellow")
    entered, left = s["entered"], s["left"]
    moved = sorted(set(entered) | set(left))  # type: ignore[arg-type]
    if moved:
        table = report.Table(title="Membership changes stored by this run")
        table.add_column("segment")
        table.add_column("entered", justify="right")
        table.add_column("left", justify="right")
        for name in moved:
            table.add_row(name, str(entered.get(name, 0)), str(left.get(name, 0)))  # type: ignore[union-attr]
        out.print(table)
