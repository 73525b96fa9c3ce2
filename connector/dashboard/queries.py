"""Reads for the dashboard's pages, its JSON API and the CLI reports, from what :mod:`snapshot` stored.

Every function takes a :class:`connector.store.StateStore` (its ``portal`` scopes every query) and returns
plain JSON-ready values. Nothing here computes features, except :func:`trend_from_mirror` (the CLI's
``report --trend``, which evaluates the mirror for each date exactly as the sync's weekly points do).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import sqlalchemy as sa

from connector.dashboard import schema
from connector.dashboard.labels import label
from connector.dashboard.snapshot import PROSPECT
from connector.store import (StateStore, actions, audience_members, audiences_table, membership, membership_events, runs,
                             segments)
from rules.presets import COLUMNS, ROWS

CELLS = [f"lifecycle.{r}_{c}" for r in ROWS for c in COLUMNS]
ABSENT = "absent"
FLOW_STATES = [*CELLS, PROSPECT]
MEMBER_COLUMNS = ("customer_id", "name", "phone", "email", "responsible_id", "purchases", "last_purchase", "monetary",
                  "days_to_birthday")
PAGE_SIZES = (25, 50, 100, 500)


def _day(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def latest_snapshot(store: StateStore) -> dict[str, Any] | None:
    s = schema.snapshots
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(s).where(s.c.portal == store.portal).order_by(s.c.run_id.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    return dict(row) | {"counts": json.loads(row["counts"]), "as_of": _day(row["as_of"])}


def trend_points(store: StateStore, start: date | None = None, end: date | None = None) -> list[dict[str, Any]]:
    t = schema.trend
    query = sa.select(t).where(t.c.portal == store.portal)
    if start:
        query = query.where(t.c.on_date >= start)
    if end:
        query = query.where(t.c.on_date <= end)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(t.c.on_date)).mappings().all()
    return [_point(_day(r["on_date"]), r["customers"], r["buyers"], r["active"], json.loads(r["counts"])) for r in rows]


def _point(day: date | None, customers: int, buyers: int, active: int, counts: dict[str, int]) -> dict[str, Any]:
    return {"date": day.isoformat() if day else None, "customers": customers, "buyers": buyers, "active": active,
            "active_share": active / buyers if buyers else None, "segments": counts}


def overview(store: StateStore, config: Any, language: str) -> dict[str, Any]:
    """The matrix (counts, shares of the customers in it, a colour step 0..5), the other segments with the change
    since the previous week, the KPI against its target and its weekly history."""
    snap = latest_snapshot(store)
    target = config.settings.kpi.active_share_target
    labels = dict(config.settings.labels)
    if snap is None:
        return {"portal": store.portal, "as_of": None, "matrix": None, "segments": [], "kpi": {"target": target},
                "history": []}
    counts = snap["counts"]
    as_of = snap["as_of"]
    history = trend_points(store, as_of - timedelta(days=371), as_of)
    week_ago = [p for p in history if p["date"] <= (as_of - timedelta(days=7)).isoformat()]
    before = week_ago[-1] if week_ago else None
    in_matrix = sum(counts.get(c, 0) for c in CELLS)
    biggest = max([counts.get(c, 0) for c in CELLS] + [1])
    matrix = {
        "rows": [{"row": r, "cells": [
            {"segment": f"lifecycle.{r}_{c}", "label": label(f"lifecycle.{r}_{c}", language, labels),
             "customers": counts.get(f"lifecycle.{r}_{c}", 0),
             "share": counts.get(f"lifecycle.{r}_{c}", 0) / in_matrix if in_matrix else 0.0,
             "scale": round(5 * counts.get(f"lifecycle.{r}_{c}", 0) / biggest)} for c in COLUMNS]} for r in ROWS],
        "columns": list(COLUMNS), "customers": in_matrix,
    } if any(c in counts for c in CELLS) else None
    others = [{"segment": name, "label": label(name, language, labels), "customers": n,
               "share": n / snap["customers"] if snap["customers"] else 0.0,
               "change": (n - before["segments"].get(name, 0)) if before else None}
              for name, n in counts.items() if name not in CELLS]
    order = {n: i for i, n in enumerate(config.rules.segment_names)}
    others.sort(key=lambda s: order.get(s["segment"], len(order)))
    share = snap["active"] / snap["buyers"] if snap["buyers"] else None
    return {
        "portal": store.portal, "as_of": as_of.isoformat(), "run_id": snap["run_id"], "customers": snap["customers"],
        "matrix": matrix, "segments": others,
        "kpi": {"active_share": share, "target": target, "buyers": snap["buyers"], "active": snap["active"],
                "meets_target": share is not None and share >= target,
                "week_ago": before["active_share"] if before else None},
        "history": [{"date": p["date"], "active_share": p["active_share"]} for p in history],
    }


# -- flows -------------------------------------------------------------------------------------------


def _pairs(store: StateStore, start: date, end: date) -> sa.Subquery:
    """One row per customer present on either date: its cell code at the end of ``start`` and of ``end`` (NULL
    where it had none), in one pass over the intervals touching [start, end] (grouped in primary-key order).
    The state on a day is the last sync on or before it (weekly points of the back-fill before the first sync)."""
    c = schema.cells.c
    a, b = schema.day_number(start), schema.day_number(end)

    def on(day: int) -> sa.ColumnElement:
        return sa.func.max(sa.case((sa.and_(c.valid_from <= day, sa.or_(c.valid_to.is_(None), c.valid_to > day)), c.cell)))

    inner = (sa.select(c.customer_id, on(a).label("src"), on(b).label("dst"))
             .where(c.portal == store.portal, c.valid_from <= b, sa.or_(c.valid_to.is_(None), c.valid_to > a))
             .group_by(c.customer_id).subquery())
    return sa.select(inner.c.customer_id, inner.c.src, inner.c.dst).where(
        sa.or_(inner.c.src.is_not(None), inner.c.dst.is_not(None))).subquery()


def _name(code: int | None) -> str:
    return ABSENT if code is None else schema.CELL_CODES[code]


def _code(name: str) -> int | None:
    return None if name == ABSENT else schema.CELL_CODES.index(name)


def flows(store: StateStore, start: date, end: date, *, members: bool = False) -> dict[str, Any]:
    """The transition table between the end of ``start`` and the end of ``end`` (counts; with ``members`` the
    customer ids of each transition too)."""
    pairs = _pairs(store, start, end)
    with store.engine.connect() as conn:
        rows = [(_name(src), _name(dst), n) for src, dst, n in conn.execute(
            sa.select(pairs.c.src, pairs.c.dst, sa.func.count()).group_by(pairs.c.src, pairs.c.dst))]
        ids: dict[tuple[str, str], list[int]] = {}
        if members:
            for cid, src, dst in conn.execute(sa.select(pairs.c.customer_id, pairs.c.src, pairs.c.dst)
                                              .order_by(pairs.c.customer_id)):
                ids.setdefault((_name(src), _name(dst)), []).append(int(cid))
    order = {s: i for i, s in enumerate([*FLOW_STATES, ABSENT])}
    rows = sorted(rows, key=lambda r: (order.get(r[0], 99), order.get(r[1], 99)))
    out = [{"from": src, "to": dst, "customers": n, **({"members": ids[(src, dst)]} if members else {})}
           for src, dst, n in rows]
    return {"from": start.isoformat(), "to": end.isoformat(), "states": [*FLOW_STATES, ABSENT], "transitions": out}


def flow_members(store: StateStore, start: date, end: date, source: str, target: str) -> list[int]:
    pairs = _pairs(store, start, end)

    def match(column: sa.ColumnElement, name: str) -> sa.ColumnElement:
        code = _code(name)
        return column.is_(None) if code is None else column == code

    with store.engine.connect() as conn:
        return [int(i) for i in conn.execute(sa.select(pairs.c.customer_id).where(
            match(pairs.c.src, source), match(pairs.c.dst, target)).order_by(pairs.c.customer_id)).scalars()]


# -- members -----------------------------------------------------------------------------------------


def _members_query(store: StateStore, segment: str, search: str | None) -> sa.Select:
    m, s = schema.members.c, membership.c
    query = (sa.select(*[getattr(m, n) for n in MEMBER_COLUMNS], m.extra)
             .select_from(membership.join(schema.members, sa.and_(m.portal == store.portal, m.customer_id == s.customer_id)))
             .where(s.portal_id == store.portal_id, s.segment_id == _segment_id(store, segment)))
    if search:
        pattern = f"%{search.strip().lower()}%"
        query = query.where(sa.or_(sa.func.lower(m.name).like(pattern), m.phone.like(pattern),
                                   sa.func.lower(m.email).like(pattern), sa.cast(m.customer_id, sa.String).like(pattern)))
    return query


def _segment_id(store: StateStore, segment: str) -> sa.ScalarSelect:
    """The segment's id in membership, as a subquery (no row: nothing matches)."""
    return (sa.select(segments.c.id).where(segments.c.portal_id == store.portal_id, segments.c.name == segment)
            .scalar_subquery())


def _ordered(query: sa.Select, sort: str, descending: bool) -> sa.Select:
    m = schema.members.c
    column = getattr(m, sort if sort in MEMBER_COLUMNS else "customer_id")
    first = column.desc() if descending else column.asc()
    return query.order_by(first, m.customer_id) if column is not m.customer_id else query.order_by(first)


def _member_row(row: Any) -> dict[str, Any]:
    out = {n: row._mapping[n] for n in MEMBER_COLUMNS}
    out["last_purchase"] = str(out["last_purchase"])[:10] if out["last_purchase"] else None
    out["custom"] = json.loads(row._mapping["extra"]) if row._mapping["extra"] else {}
    return out


def members_page(store: StateStore, segment: str, *, sort: str = "customer_id", descending: bool = False,
                 search: str | None = None, page: int = 1, size: int = 50) -> dict[str, Any]:
    query = _members_query(store, segment, search)
    counted = query if search else sa.select(membership.c.customer_id).where(
        membership.c.portal_id == store.portal_id, membership.c.segment_id == _segment_id(store, segment))
    with store.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(counted.subquery())).scalar() or 0
        rows = conn.execute(_ordered(query, sort, descending).limit(size).offset((max(page, 1) - 1) * size)).all()
    return {"segment": segment, "total": total, "page": page, "size": size, "sort": sort,
            "order": "desc" if descending else "asc", "rows": [_member_row(r) for r in rows]}


def iter_members(store: StateStore, segment: str, *, sort: str = "customer_id", descending: bool = False,
                 search: str | None = None, chunk: int = 5000) -> Iterator[dict[str, Any]]:
    """Every member, streamed from the database in chunks (never all in memory)."""
    query = _ordered(_members_query(store, segment, search), sort, descending)
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query)
        for part in result.partitions(chunk):
            for row in part:
                yield _member_row(row)


def segment_exists(store: StateStore, config: Any, segment: str) -> bool:
    return segment in config.rules.segment_names


# -- one customer ------------------------------------------------------------------------------------


def customer(store: StateStore, config: Any, customer_id: int, language: str) -> dict[str, Any] | None:
    m = schema.members.c
    labels = dict(config.settings.labels)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(schema.members).where(m.portal == store.portal, m.customer_id == customer_id)).mappings().first()
        if row is None:
            return None
        pid, sg = store.portal_id, segments.c
        named = sa.and_(sg.portal_id == pid, sg.id == membership.c.segment_id)
        current = conn.execute(sa.select(sg.name, membership.c.entered_on).join_from(membership, segments, named).where(
            membership.c.portal_id == pid, membership.c.customer_id == customer_id).order_by(sg.name)).all()
        e = membership_events.c
        # a run's entries before its exits, as they were recorded
        events = conn.execute(sa.select(sg.name, e.event, e.on_date, e.run_id).join_from(
            membership_events, segments, sa.and_(sg.portal_id == pid, sg.id == e.segment_id)).where(
            e.portal_id == pid, e.customer_id == customer_id).order_by(e.run_id, e.event.desc(), sg.name)).all()
        au = audience_members.c
        auds = conn.execute(sa.select(au.audience, au.state).where(au.portal == store.portal, au.customer_id == customer_id)).all()
    ledger = store.ledger(customer_ids=[customer_id])
    return {
        "customer_id": customer_id, "name": row["name"], "phone": row["phone"], "email": row["email"],
        "responsible_id": row["responsible_id"], "crm_url": crm_customer_url(config, customer_id),
        "features": json.loads(row["features"]) if row["features"] else {},
        "segments": [{"segment": s, "label": label(s, language, labels), "since": str(d)[:10]} for s, d in current],
        "history": [{"segment": s, "label": label(s, language, labels), "event": ev, "date": str(d)[:10], "run_id": r}
                    for s, ev, d, r in events],
        "actions": [_action(config, a) for a in ledger],
        "audiences": [{"audience": a.split(":", 2)[-1], "cabinet": a.split(":", 1)[0], "state": st} for a, st in auds],
    }


def _action(config: Any, a: dict[str, Any]) -> dict[str, Any]:
    return {"campaign": a["campaign"], "action": a["action"], "customer_id": a["customer_id"], "status": a["status"],
            "skip_reason": a["skip_reason"], "responsible_id": a["responsible_id"],
            "entry_date": str(a["entry_date"])[:10], "title": str(a["payload"].get("title", "")),
            "error": a["error"], "crm_url": crm_action_url(config, a)}


# -- CRM links ---------------------------------------------------------------------------------------


def crm_base(config: Any) -> str | None:
    """``https://host`` of the CRM (never a webhook path: it carries the secret)."""
    crm = config.crm
    raw = None
    if crm.kind == "bitrix24":
        raw = crm.client_endpoint or (crm.webhook_url.get_secret_value() if crm.webhook_url else None)
    elif crm.kind == "amocrm":
        raw = crm.base_url
    if not raw:
        return None
    parts = urlsplit(raw)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}" if parts.scheme and parts.netloc else None


def crm_customer_url(config: Any, customer_id: int) -> str | None:
    base = crm_base(config)
    if base is None:
        return None
    if config.crm.kind == "bitrix24":
        return f"{base}/crm/{config.crm.customer}/details/{customer_id}/"
    return f"{base}/{'contacts' if config.crm.customer == 'contact' else 'companies'}/detail/{customer_id}"


def crm_action_url(config: Any, a: dict[str, Any]) -> str | None:
    base = crm_base(config)
    created = (a.get("result") or {}).get("id")
    if base is None or created is None:
        return None
    kind = config.crm.kind
    if a["action"] in ("deal", "close_deal"):  # a close: the deal or task it closed
        return f"{base}/crm/deal/details/{created}/" if kind == "bitrix24" else f"{base}/leads/detail/{created}"
    if kind == "bitrix24" and a["action"] in ("call_task", "deal_task", "close_task"):
        return f"{base}/company/personal/user/{a.get('responsible_id') or 0}/tasks/task/view/{created}/"
    return crm_customer_url(config, a["customer_id"])  # a to-do or an amoCRM task: on the customer's card


# -- campaigns, audiences, runs ----------------------------------------------------------------------


def campaigns(store: StateStore, config: Any, *, recent: int = 20) -> list[dict[str, Any]]:
    a = actions.c
    with store.engine.connect() as conn:
        grouped = conn.execute(sa.select(a.campaign, a.status, a.skip_reason, a.responsible_id, sa.func.count())
                               .where(a.portal == store.portal)
                               .group_by(a.campaign, a.status, a.skip_reason, a.responsible_id)).all()
    out: dict[str, dict[str, Any]] = {}
    for c in config.settings.campaign:
        out[c.name] = {"campaign": c.name, "segment": c.segment}
    for name, status, reason, rep, n in grouped:
        entry = out.setdefault(name, {"campaign": name, "segment": None})
        totals = entry.setdefault("totals", {"planned": 0, "created": 0, "failed": 0, "skipped": 0, "sending": 0})
        key = {"done": "created"}.get(status, status)
        totals[key] = totals.get(key, 0) + n
        if status == "skipped":
            entry.setdefault("skipped_by_reason", {}).setdefault(reason or "-", 0)
            entry["skipped_by_reason"][reason or "-"] += n
        per_rep = entry.setdefault("per_rep", {}).setdefault(str(rep) if rep is not None else "-", {})
        per_rep[key] = per_rep.get(key, 0) + n
    for name, entry in out.items():
        entry.setdefault("totals", {"planned": 0, "created": 0, "failed": 0, "skipped": 0, "sending": 0})
        entry.setdefault("skipped_by_reason", {})
        entry.setdefault("per_rep", {})
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(actions).where(a.portal == store.portal, a.campaign == name, a.status != "skipped")
                                .order_by(a.updated_at.desc(), a.key).limit(recent)).mappings().all()
        entry["recent"] = [_action(config, dict(r) | {"payload": json.loads(r["payload"]),
                                                       "result": json.loads(r["result"]) if r["result"] else None})
                           for r in rows]
    return list(out.values())


def audiences(store: StateStore, config: Any, language: str) -> list[dict[str, Any]]:
    snap = latest_snapshot(store)
    counts = snap["counts"] if snap else {}
    t, m = audiences_table.c, audience_members.c
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(audiences_table).where(t.portal == store.portal).order_by(t.audience)).mappings().all()
        sizes = dict(conn.execute(sa.select(m.audience, sa.func.count()).where(m.portal == store.portal, m.state == "in")
                                  .group_by(m.audience)).all())
    out = []
    for r in rows:
        cabinet, segment, name = r["audience"].split(":", 2)
        detail = json.loads(r["detail"]) if r["detail"] else {}
        members = counts.get(segment)
        matchable = detail.get("members")
        out.append({"audience": name, "cabinet": cabinet, "segment": segment,
                    "segment_label": label(segment, language, dict(config.settings.labels)),
                    "size": sizes.get(r["audience"], 0), "segment_size": members,
                    "matchable_share": (matchable / members) if members and matchable is not None else None,
                    "last_upload": r["updated_at"].isoformat() if r["updated_at"] else None,
                    "status": r["status"], "last_error": detail.get("message")})
    return out


def run_history(store: StateStore, limit: int = 50) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c.portal == store.portal).order_by(runs.c.id.desc()).limit(limit)).mappings().all()
    out = []
    for r in rows:
        stats = json.loads(r["stats"]) if r["stats"] else {}
        started, finished = r["started_at"], r["finished_at"]
        requests = sum(int(stats.get(k) or 0) for k in ("pull_requests", "writeback_requests", "action_requests"))
        requests += sum(int(a.get("requests") or 0) for a in stats.get("audiences") or [])
        out.append({"run_id": r["id"], "kind": r["kind"], "as_of": str(r["as_of"])[:10] if r["as_of"] else None,
                    "started_at": started.isoformat() if started else None,
                    "duration_seconds": (finished - started).total_seconds() if started and finished else None,
                    "status": r["status"], "requests": requests, "customers": stats.get("customers"),
                    "rows_skipped": stats.get("rows_skipped", 0), "tags_failed": stats.get("tags_failed", 0),
                    "actions_failed": stats.get("actions_failed", 0), "error": r["error"]})
    return out


def portfolio_entry(store: StateStore, config: Any) -> dict[str, Any]:
    snap = latest_snapshot(store)
    last = run_history(store, 1)
    finished = [r for r in run_history(store, 5) if r["status"] in ("ok", "failed")]
    health = "unknown" if not finished else ("ok" if finished[0]["status"] == "ok" else "failing")
    share = snap["active"] / snap["buyers"] if snap and snap["buyers"] else None
    return {"portal": store.portal, "crm": config.crm.kind, "customers": snap["customers"] if snap else None,
            "active_share": share, "target": config.settings.kpi.active_share_target,
            "last_sync": last[0]["started_at"] if last else None, "last_status": last[0]["status"] if last else None,
            "health": health}


# -- the CLI's trend (from the mirror) ---------------------------------------------------------------


def dates_between(start: date, end: date, every: str) -> list[date]:
    step = {"day": 1, "week": 7}[every]
    out, day = [], end
    while day >= start:
        out.append(day)
        day -= timedelta(days=step)
    return out[::-1]


def trend_from_mirror(store: StateStore, config: Any, start: date, end: date, every: str = "week") -> list[dict[str, Any]]:
    from connector.pipeline import compute

    stored = store.membership_frame()
    out = []
    for day in dates_between(start, end, every):
        c = compute(store, config, day, stored)
        out.append(_point(day, c.customers, c.buyers, c.active, c.counts))
    return out
