"""The CLI's dashboard commands: ``lifecycle users ...`` and ``lifecycle report --flows / --trend``."""

from __future__ import annotations

import csv
import getpass
import io
import json
import sys
from datetime import date, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from connector.config import ConfigError
from connector.dashboard import auth, queries
from connector.dashboard.labels import label


def users(config: Any, args: Any, out: Console) -> int:
    from connector.pipeline import open_store

    store = open_store(config)
    try:
        if args.users_command == "add":
            password = _password(args)
            new = auth.add_user(store.engine, args.email, args.role, args.portal or [], password, args.language)
            print(f"{'added' if new else 'updated'} {auth.normalise_email(args.email)} ({args.role}"
                  + (f"; portals {', '.join(sorted(set(args.portal)))}" if args.portal else "") + ")")
            return 0
        if args.users_command == "remove":
            if not auth.remove_user(store.engine, args.email):
                raise ConfigError(f"no account {args.email!r}; `lifecycle users list` shows them")
            print(f"removed {args.email.strip().lower()}")
            return 0
        rows = auth.list_users(store.engine)
        table = Table(title="Dashboard accounts")
        for col in ("e-mail", "role", "portals", "language"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["email"], r["role"], "all" if r["role"] == "admin" else ", ".join(r["portals"]), r["language"] or "-")
        out.print(table if rows else "no account yet: lifecycle users add EMAIL --role admin")
        return 0
    finally:
        store.close()


def _password(args: Any) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line.strip():
            raise ConfigError("no password on standard input: pipe it in, e.g. `printf %s \"$PW\" | lifecycle users add ...`")
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ConfigError("the two passwords differ; run the command again")
    return first


def _day(value: str | None, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def report_flows(config: Any, args: Any, out: Console) -> int:
    from connector.pipeline import open_store, today_in

    today = today_in(config.crm.timezone)  # the portal's date, under which runs record the segments
    start, end = _day(args.flows[0], today), _day(args.flows[1], today)
    if start > end:
        raise ConfigError(f"--flows {start} {end}: the first date must not be after the second")
    store = open_store(config)
    try:
        data = queries.flows(store, start, end, members=True)
    finally:
        store.close()
    if not data["transitions"]:
        print(f"note: no stored membership for {config.crm.name!r} on these dates; run `lifecycle sync` first", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["from_date", "to_date", "from", "to", "customers", "customer_ids"])
        for t in data["transitions"]:
            writer.writerow([data["from"], data["to"], t["from"], t["to"], t["customers"], " ".join(map(str, t["members"]))])
        sys.stdout.write(buf.getvalue())
    else:
        lang = config.settings.ui.language
        states = data["states"]
        cells = {(t["from"], t["to"]): t["customers"] for t in data["transitions"]}
        table = Table(title=f"Flows from {data['from']} (rows) to {data['to']} (columns)")
        table.add_column("")
        for s in states:
            table.add_column(label(s, lang, dict(config.settings.labels)), justify="right")
        for f in states:
            table.add_row(label(f, lang, dict(config.settings.labels)), *(str(cells.get((f, t), "")) for t in states))
        out.print(table)
    return 0


def report_trend(config: Any, args: Any, out: Console) -> int:
    from connector.pipeline import open_store, today_in

    end = _day(args.to_date, today_in(config.crm.timezone))
    start = _day(args.from_date, end - timedelta(days=364))
    if start > end:
        raise ConfigError(f"--from {start} is after --to {end}")
    store = open_store(config)
    try:
        points = queries.trend_from_mirror(store, config, start, end, args.every)
    finally:
        store.close()
    target = config.settings.kpi.active_share_target
    if args.format == "json":
        print(json.dumps({"portal": config.crm.name, "every": args.every, "target": target, "points": points}, ensure_ascii=False))
    elif args.format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["date", "customers", "buyers", "active", "active_share"])
        for p in points:
            share = "" if p["active_share"] is None else f"{p['active_share']:.4f}"
            writer.writerow([p["date"], p["customers"], p["buyers"], p["active"], share])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(title=f"Active base by {args.every} (target {target:.0%})")
        for col in ("date", "customers", "buyers", "active", "active share"):
            table.add_column(col, justify="left" if col == "date" else "right")
        for p in points:
            share = "-" if p["active_share"] is None else f"{p['active_share']:.1%}"
            table.add_row(p["date"], str(p["customers"]), str(p["buyers"]), str(p["active"]), share)
        out.print(table)
    return 0
