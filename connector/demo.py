"""``lifecycle demo``: the whole cycle against the sandbox Bitrix24 portal on loopback.

Starts the sandbox portal (rate and operating limits on, sped up 10x) with a generated base, then:
1. a full sync: pull through the no-count ID chain, compute, store membership, write the lifecycle
   segments onto every contact's ``UF_CRM_LIFECYCLE`` field;
   the product rows of won deals are pulled too, and the reorder campaign creates "due soon" call tasks
   for the customers whose day lenses or filter cartridges run out (``[[product_cycle]]``, reorder.due);
2. a quiet incremental sync (it re-reads only the contacts whose field run 1 wrote);
3. some CRM activity (win-backs, a deleted contact, a renamed one), then an incremental sync that
   reads just those changes and moves the customers' tags.
For each run it prints what was read, what moved, what was written and how many HTTP requests it took.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from connector import report
from connector.config import load_config
from connector.pipeline import SyncResult, sync, today_in
from sandbox.ads import running_ads
from sandbox.bitrix24 import running_portal

TIMEZONE = "Europe/Moscow"
TIME_SCALE = 10

DEMO_CONFIG = """\
# Written by `lifecycle demo`. See config.example.toml for every option.
[crm]
kind = "bitrix24"
webhook_url = "{webhook}"
timezone = "Europe/Moscow"
requests_per_second = {rps}   # the sandbox runs its limits {scale}x faster than a real portal
overlap_minutes = 0           # demo runs are seconds apart; keep the default 10 in production
reconcile_hours = 0           # list ids every run to notice deletions (default: daily)

[state]
url = "sqlite:///state.db"

[writeback]
tag_segments = ["lifecycle.*", "vip"]

[labels]
"lifecycle.new_active" = "New, active"
"lifecycle.regular_asleep" = "Regular, asleep"
vip = "VIP"

[[segment]]
name = "vip"
when = "monetary >= 50000 and purchases >= 4"

[[segment]]
name = "callable_lapsed"
when = "cadence.lapsed and has_phone"

# Cyclical products (docs/products.md): day lenses run out a month after the purchase; remind a week before.
[[product_cycle]]
product = "Однодневные контактные линзы, 30 шт."
cycle_days = 30
remind_before_days = 7

[[product_cycle]]
product = "Картридж для фильтра воды"
cycle_days = "learn"           # the median gap between purchases, learned from the deals' product rows
remind_before_days = 7

[[campaign]]
name = "reorder"
segment = "reorder.due"
auto_approve = true            # the demo sends at once; a real campaign's first batch waits for `lifecycle campaigns approve`
on_enter = [{{ action = "call_task", due_in_days = 1, title = "Скоро закончится: {{reorder_product}} ({{name}}), до {{reorder_due_date:%d.%m.%Y}}", description = "Предложите повторный заказ: {{reorder_product}} заканчивается {{reorder_due_date:%d.%m.%Y}}. / Offer a reorder: {{reorder_product}} runs out on {{reorder_due_date:%d.%m.%Y}}." }}]

[audiences]
yandex_url = "{yandex_url}"
yandex_token = "{yandex_token}"   # demo only: a real token comes from LIFECYCLE_AUDIENCES__YANDEX_TOKEN

[[audience]]
segment = "status.former"
cabinet = "yandex"
name = "Former customers"
"""


def run_demo(out: Console, *, customers: int = 3000, keep: str | None = None, serve: bool | None = None) -> int:
    """``serve``: after the runs keep serving the dashboard until Ctrl-C; default when stdin and stdout are a
    terminal (``--no-serve`` turns it off; scripts and CI never wait)."""
    import sys

    logging.getLogger("lifecycle.pipeline").setLevel(logging.ERROR)
    serve = (sys.stdin.isatty() and sys.stdout.isatty()) if serve is None else serve
    if keep:
        folder = Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state.db").unlink(missing_ok=True)
        return _run(out, folder, customers, serve)
    with tempfile.TemporaryDirectory(prefix="lifecycle-demo-") as tmp:
        return _run(out, Path(tmp), customers, serve)


def _dashboard(out: Console, config, serve: bool) -> None:
    """Start the dashboard on loopback, print its URL and a login for the demo portal; serve until Ctrl-C."""
    import secrets
    from types import SimpleNamespace

    from connector.dashboard.auth import add_user
    from connector.http import ServiceServer
    from connector.metrics import Metrics
    from connector.pipeline import open_store

    password = secrets.token_urlsafe(9)
    store = open_store(config)
    try:
        add_user(store.engine, "demo@example.com", "admin", [], password)
    finally:
        store.close()
    daemon = SimpleNamespace(config=config, metrics=Metrics(config.crm.name, config.crm.kind),
                             ready=lambda: (True, "ready"), crm_changed=lambda: None)
    server = ServiceServer(daemon, host="127.0.0.1", port=0)
    server.start()
    try:
        out.rule("Dashboard")
        out.print(f"[bold]http://127.0.0.1:{server.port}/ui/p/{config.crm.name}/[/bold]  "
                  f"login demo@example.com, password {password}")
        if serve:
            out.print("serving the dashboard; press Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                out.print("stopped")
    finally:
        server.stop()


def _run(out: Console, folder: Path, customers: int, serve: bool = False) -> int:
    deals = customers * 3
    with running_portal(generate=(customers, deals), time_scale=TIME_SCALE) as portal, \
            running_ads(cabinets=["yandex"]) as ads:
        config_path = folder / "lifecycle.toml"
        config_path.write_text(
            DEMO_CONFIG.format(webhook=portal.webhook_url, rps=2 * TIME_SCALE, scale=TIME_SCALE,
                               yandex_url=ads.info["yandex"]["base_url"], yandex_token=ads.info["yandex"]["token"]),
            encoding="utf-8",
        )
        config = load_config(config_path)
        out.rule(f"Sandbox Bitrix24 portal on {portal.info['base_url']}: {customers} contacts, {deals} deals")

        out.rule("1. Full sync")
        first = _sync(out, portal, config)
        report.render_table(first.computation, config.settings, segments=config.rules.segment_names, members=False, console=out)
        _show_reorders(out, portal, first)

        ads.advance(3 * 3600)  # let the sandbox Yandex Audience finish processing the upload
        time.sleep(1.1)  # DATE_MODIFY has one-second resolution: let the next run start in a new second
        out.rule("2. Incremental sync, nothing changed in the CRM")
        _sync(out, portal, config)

        out.rule("3. CRM activity, then an incremental sync")
        moved = _crm_activity(out, portal, first)
        ads.advance(3 * 3600)
        time.sleep(1.1)
        third = _sync(out, portal, config)
        _show_moves(out, portal, third, moved, config.settings.writeback.field)
        _dashboard(out, config, serve)
    return 0


def _sync(out: Console, portal, config) -> SyncResult:
    portal.reset_counters()
    started = time.perf_counter()
    result = sync(config)
    seconds = time.perf_counter() - started
    s = result.summary()
    counters = portal.counters()
    methods = counters["methods"]
    refused = counters["query_limit_exceeded"] + counters["operation_time_limit"]
    out.print(
        f"read {s['customers_upserted']} contacts and {s['deals_upserted']} deals "
        f"({s['customers_deleted']} contacts and {s['deals_deleted']} deals deleted in the CRM); "
        f"{s['customers']} customers in the mirror"
    )
    entered = sum(s["entered"].values())  # type: ignore[union-attr]
    left = sum(s["left"].values())  # type: ignore[union-attr]
    out.print(f"segment moves stored: {entered} entries, {left} exits")
    out.print(
        f"written: {s.get('tags_updated', 0)} contacts' {config.settings.writeback.field} updated"
        + (f", options created for {len(s.get('tag_options_created') or [])} segments" if s.get("tag_options_created") else "")
    )
    out.print(
        f"[bold]{counters['http_requests']} HTTP requests[/bold] ({s['pull_requests']} to pull, "
        f"{s.get('writeback_requests', 0)} to write; {methods.get('crm.contact.list', 0) + methods.get('crm.deal.list', 0)} "
        f"list pages and {methods.get('crm.contact.update', 0)} updates inside batches); "
        f"{refused} refused by a limit; {seconds:.1f} s"
    )
    for a in s.get("audiences", []):  # type: ignore[union-attr]
        out.print(f"audience {a['name']!r} in the sandbox Yandex Audience: {a['matchable']} matchable customers "
                  f"(hashed SHA-256), +{a['added']} -{a['removed']}, {a['requests']} requests, status {a['status'] or '-'}"
                  + (f"; {a['message']}" if a["message"] else ""))
    return result


def _show_reorders(out: Console, portal, result: SyncResult) -> None:
    """The reorder campaign: the "due soon" call tasks created for the customers whose product runs out."""
    tasks = [t for t in portal.state()["tasks"] if str(t.get("TITLE", "")).startswith("Скоро закончится")]
    due = result.computation.features.filter(pl.col("id").is_in(result.computation.members("reorder.due")))
    week = due.filter(pl.col("reorder_overdue_days").is_between(-7, 0))
    out.print(f"[bold]reorder campaign:[/bold] {len(tasks)} call tasks \"due soon\" created for the customers in "
              f"reorder.due; {week.height} of them run out within the week")
    table = Table(title="Reorder reminders (first 5 due this week)")
    for column in ("contact", "product", "due", "days left"):
        table.add_column(column)
    for row in week.sort("reorder_due_date").head(5).iter_rows(named=True):
        table.add_row(str(row["id"]), str(row["reorder_product"]), row["reorder_due_date"].isoformat(),
                      str(-row["reorder_overdue_days"]))
    out.print(table)


def _crm_activity(out: Console, portal, first: SyncResult) -> dict[str, list[int]]:
    membership = first.computation.membership
    sleeping = membership.filter(pl.col("lifecycle.regular_sleeping") | pl.col("lifecycle.promising_sleeping"))
    buyers = sleeping.get_column("id").head(5).to_list()
    today = today_in(TIMEZONE).isoformat()
    for cid in buyers:
        portal.call("crm.deal.add", {"fields": {"TITLE": "Repeat order", "CONTACT_ID": cid, "STAGE_ID": "WON",
                                                "OPPORTUNITY": 12000, "CLOSEDATE": today}})
    prospects = membership.filter(pl.col("status.prospect")).get_column("id").head(2).to_list()
    for cid in prospects:
        portal.call("crm.deal.add", {"fields": {"TITLE": "First order", "CONTACT_ID": cid, "STAGE_ID": "WON",
                                                "OPPORTUNITY": 3000, "CLOSEDATE": today}})
    gone = membership.filter(pl.col("status.former")).get_column("id").head(1).to_list()
    for cid in gone:
        portal.call("crm.contact.delete", {"id": cid})
    out.print(
        f"{len(buyers)} sleeping customers bought again, {len(prospects)} prospects made a first purchase, "
        f"contact {gone[0] if gone else '-'} was deleted"
    )
    return {"buyers": buyers, "prospects": prospects}


def _show_moves(out: Console, portal, result: SyncResult, moved: dict[str, list[int]], field: str) -> None:
    state = portal.state()
    options = next(
        ({str(o["ID"]): o["VALUE"] for o in f["LIST"]} for f in state["userfields"]["contact"] if f["FIELD_NAME"] == field), {}
    )
    contacts = {int(c["ID"]): c for c in state["contacts"]}
    table = Table(title=f"The moved customers' {field} in the portal now")
    table.add_column("contact")
    table.add_column("what happened")
    table.add_column(field)
    for what, ids in (("bought again", moved["buyers"]), ("first purchase", moved["prospects"])):
        for cid in ids:
            values = contacts.get(cid, {}).get(field) or []
            table.add_row(str(cid), what, ", ".join(options.get(str(v), str(v)) for v in values) or "-")
    out.print(table)
