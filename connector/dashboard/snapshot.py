"""What each sync stores for the dashboard, so no page recomputes features.

:func:`record` runs once at the end of a successful sync (``pipeline._sync`` calls :func:`record_safely`, which
logs a failure and never fails the sync). It writes:

1. ``dash_snapshots``: the sizes of every segment, customers, buyers and active buyers of this run;
2. ``dash_trend``: the same figures for today and for the weekly points (Mondays) of the last year that are not
   stored yet, computed from the mirror by :func:`connector.pipeline.compute` (so a new installation has a full
   history on its first day; afterwards one new point a week);
3. ``dash_cells``: each customer's matrix cell (or ``prospect``) as intervals; the first sync of a portal
   back-fills them from the weekly points, so flows reach a year back from the first day (at weekly
   resolution before the first sync, exact per sync after it);
4. ``dash_members``: the member columns of every customer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any

import polars as pl
import sqlalchemy as sa

from connector.dashboard import schema
from connector.logs import safe_error
from connector.store import StateStore, customers
from connector.store.base import insert_tuples as _insert_tuples
from rules.presets import lifecycle

log = logging.getLogger("lifecycle.dashboard")
WEEKS = 52
PROSPECT = "prospect"


def record_safely(store: StateStore, config: Any, result: Any, compute: Any) -> None:
    """:func:`record`, logged and never raised: the dashboard must not fail a sync. ``compute`` is
    connector.pipeline.compute, passed in (the pipeline calls this module, not the other way round)."""
    try:
        record(store, config, result, compute)
    except Exception as exc:  # noqa: BLE001 - the sync succeeded; the dashboard catches up next run
        log.error("dashboard snapshot failed (the sync itself succeeded): %s", safe_error(exc))


@contextmanager
def _quiet_pipeline() -> Iterator[None]:
    """Drop the pipeline's warnings while the past weekly points are computed."""
    logger = logging.getLogger("lifecycle.pipeline")
    drop = logging.Filter("-never-")  # a name no record has: every record is filtered out
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def weekly_dates(as_of: date, weeks: int = WEEKS) -> list[date]:
    """The Mondays of the last ``weeks`` weeks up to ``as_of`` (newest last)."""
    monday = as_of - timedelta(days=as_of.weekday())
    return [monday - timedelta(weeks=k) for k in range(weeks, -1, -1)]


def cells_of(features: pl.DataFrame, config: Any) -> pl.DataFrame:
    """(customer_id, cell): each customer's matrix cell, ``prospect`` when it never bought; buyers outside
    the matrix bins (none with the default bins) are left out."""
    exprs = lifecycle(config.settings.segments.lifecycle)
    cell: Any = pl.when(pl.col("purchases") == 0).then(pl.lit(PROSPECT))
    for name, expr in exprs.items():
        cell = cell.when(expr).then(pl.lit(name))
    return (features.select(pl.col("id").alias("customer_id"), cell.otherwise(None).alias("cell"))
            .filter(pl.col("cell").is_not_null()))


def _figures(comp: Any) -> dict[str, Any]:
    return {"customers": comp.customers, "buyers": comp.buyers, "active": comp.active,
            "counts": json.dumps(comp.counts, sort_keys=True)}


def record(store: StateStore, config: Any, result: Any, compute: Any) -> None:
    comp = result.computation
    as_of: date = result.as_of
    portal = store.portal
    now = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        have_trend = set(conn.execute(sa.select(schema.trend.c.on_date).where(schema.trend.c.portal == portal)).scalars())
        have_cells = conn.execute(sa.select(sa.func.count()).select_from(schema.cells)
                                  .where(schema.cells.c.portal == portal)).scalar() or 0
        in_use = bool(conn.execute(sa.select(sa.func.count()).select_from(schema.users)).scalar())
    have_trend = {d if isinstance(d, date) else date.fromisoformat(str(d)) for d in have_trend}
    # The past year (52 weekly recomputes) is filled in only once the dashboard has an account: a portal
    # synced from the command line alone pays nothing for pages nobody can open. `report --flows` then
    # starts at the first sync; `report --trend` computes from the mirror either way.
    past = [d for d in weekly_dates(as_of) if d < as_of and d not in have_trend] if in_use else []
    backfill = not have_cells and in_use
    if backfill:  # the cells' history needs every weekly point, stored or not
        past = [d for d in weekly_dates(as_of) if d < as_of]
    points: dict[date, dict[str, Any]] = {}
    history: list[tuple[date, pl.DataFrame]] = []
    stored = store.membership_frame() if past else None
    # the mirror is read once for all past points: each compute then only evaluates (reading was most of it)
    view = store.customer_card_view(config.crm.customer) if past else None
    deals = store.deals_frame() if past else None
    for day in past:
        with _quiet_pipeline():  # the sync already warned about its fields once
            c = compute(store, config, day, stored, view, deals=deals)
        points[day] = _figures(c)
        if backfill:
            history.append((day, cells_of(c.features, config)))
    points[as_of] = _figures(comp)
    current = cells_of(comp.features, config)
    # every connectorx read happens before the write transaction: its own SQLite may checkpoint and remove the
    # WAL when it closes, under a connection still writing (see StateStore._open)
    open_cells = None if (backfill or not have_cells) else _open_cells(store)
    cards = _cards(store, config)

    with store.engine.begin() as conn:
        conn.execute(sa.delete(schema.snapshots).where(schema.snapshots.c.portal == portal,
                                                        schema.snapshots.c.run_id == result.run_id))
        conn.execute(sa.insert(schema.snapshots).values(portal=portal, run_id=result.run_id, as_of=as_of,
                                                         created_at=now, **_figures(comp)))
        for day, figures in points.items():
            if day in have_trend and day != as_of:
                continue
            conn.execute(sa.delete(schema.trend).where(schema.trend.c.portal == portal, schema.trend.c.on_date == day))
            conn.execute(sa.insert(schema.trend).values(portal=portal, on_date=day, computed_at=now, **figures))
        if backfill or not have_cells:
            _backfill_cells(conn, store, [*history, (as_of, current)])
        else:
            _advance_cells(conn, store, current, as_of, open_cells)
        _write_members(conn, store, config, comp, cards)


def _backfill_cells(conn: sa.Connection, store: StateStore, states: list[tuple[date, pl.DataFrame]]) -> None:
    """Intervals from a sequence of (date, cells) states, oldest first, written in one go."""
    closed: list[pl.DataFrame] = []
    open_ = pl.DataFrame(schema={"customer_id": pl.Int64, "cell": pl.String, "valid_from": pl.Date})
    for day, state in states:
        open_, ended = _step(open_, state, day)
        closed.append(ended)
    rows = pl.concat([*closed, open_.with_columns(pl.lit(None, dtype=pl.Date).alias("valid_to"))], how="diagonal")
    rows = rows.filter(pl.col("valid_to").is_null() | (pl.col("valid_to") > pl.col("valid_from")))
    _insert_cells(conn, store, rows)


def _step(open_: pl.DataFrame, state: pl.DataFrame, day: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Open intervals after the state on ``day``; and the intervals that ended on ``day``."""
    joined = open_.join(state.rename({"cell": "now"}), on="customer_id", how="full", coalesce=True)
    changed = joined.filter(pl.col("cell").is_not_null() & (pl.col("now").is_null() | (pl.col("now") != pl.col("cell"))))
    ended = changed.select("customer_id", "cell", "valid_from", pl.lit(day).alias("valid_to"))
    kept = joined.filter(pl.col("cell").is_not_null() & (pl.col("now") == pl.col("cell"))).select("customer_id", "cell", "valid_from")
    started = joined.filter(pl.col("now").is_not_null() & (pl.col("cell").is_null() | (pl.col("now") != pl.col("cell"))))
    started = started.select("customer_id", pl.col("now").alias("cell"), pl.lit(day).alias("valid_from"))
    return pl.concat([kept, started]), ended


def _insert_cells(conn: sa.Connection, store: StateStore, rows: pl.DataFrame) -> None:
    codes = {name: i for i, name in enumerate(schema.CELL_CODES)}
    _insert_tuples(conn, schema.cells, ("portal", "customer_id", "valid_from", "valid_to", "cell"),
                   rows.select(pl.lit(store.portal).alias("p"), "customer_id", pl.col("valid_from").cast(pl.Int32),
                               pl.col("valid_to").cast(pl.Int32),
                               pl.col("cell").replace_strict(codes, return_dtype=pl.Int16)).iter_rows())


def _open_cells(store: StateStore) -> pl.DataFrame:
    """customer_id, cell, valid_from of every interval still open."""
    c = schema.cells.c
    return _read(store, 
        sa.select(c.customer_id, c.cell, c.valid_from).where(c.portal == store.portal, c.valid_to.is_(None)),
        {"customer_id": pl.Int64, "cell": pl.Int64, "valid_from": pl.Int32},
    ).with_columns(pl.col("cell").replace_strict(dict(enumerate(schema.CELL_CODES)), return_dtype=pl.String),
                   pl.col("valid_from").cast(pl.Date))


def _advance_cells(conn: sa.Connection, store: StateStore, current: pl.DataFrame, as_of: date,
                   open_: pl.DataFrame) -> None:
    c = schema.cells.c
    still_open, ended = _step(open_, current, as_of)
    # opened by this sync (an interval kept open since an earlier sync of today is already stored)
    started = still_open.filter(pl.col("valid_from") == as_of).join(open_, on=["customer_id", "valid_from", "cell"],
                                                                     how="anti")
    # intervals that ended today: closed; those that also began today (a second sync of the day) are dropped
    for same_day, part in ended.group_by(pl.col("valid_from") == as_of):
        ids = part.get_column("customer_id").to_list()
        for chunk in _chunks(ids, 500):
            where = [c.portal == store.portal, c.valid_to.is_(None), c.customer_id.in_(chunk)]
            if same_day[0]:
                conn.execute(sa.delete(schema.cells).where(*where))
            else:
                conn.execute(sa.update(schema.cells).where(*where).values(valid_to=schema.day_number(as_of)))
    _insert_cells(conn, store, started.select("customer_id", "cell", "valid_from",
                                              pl.lit(None, dtype=pl.Date).alias("valid_to")))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _read(store: StateStore, query: Any, schema_: dict[str, Any]) -> pl.DataFrame:
    """A SELECT through SQLAlchemy, not connectorx: the snapshot runs inside the sync's lease, and a
    connectorx read of SQLite here was followed by a malformed database after SIGKILLs (its own SQLite copy
    may delete the WAL under this process's other connections; see connector.store.base.SQLITE_IO)."""
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return pl.DataFrame(schema=schema_)
    return pl.DataFrame(rows, schema=list(schema_), orient="row", infer_schema_length=None).cast(schema_)


def _cards(store: StateStore, config: Any) -> pl.DataFrame:
    return _read(store, 
        sa.select(customers.c.id, customers.c.name, customers.c.phone, customers.c.email, customers.c.responsible_id)
        .where(customers.c.portal_id == store.portal_id, customers.c.entity == config.crm.customer),
        {"id": pl.Int64, "name": pl.String, "phone": pl.String, "email": pl.String, "responsible_id": pl.String},
    )


def _write_members(conn: sa.Connection, store: StateStore, config: Any, comp: Any, cards: pl.DataFrame) -> None:
    portal = store.portal
    f = comp.features
    custom = [n for n in config.rules.fields if n in f.columns]
    as_of = comp.as_of
    frame = f.join(cards.drop("responsible_id"), on="id", how="left").select(
        pl.lit(portal).alias("portal"), pl.col("id"), "name", "phone", "email",
        pl.col("responsible_id").cast(pl.String),
        pl.col("purchases").cast(pl.Int64),
        (pl.lit(as_of) - pl.duration(days=pl.col("recency_days").cast(pl.Int64))).cast(pl.Date).alias("last_purchase"),
        pl.col("monetary").cast(pl.Float64),
        pl.col("days_to_birthday").cast(pl.Int64),
        (pl.struct(custom).struct.json_encode() if custom else pl.lit(None, dtype=pl.String)).alias("extra"),
        pl.struct([n for n in config.rules.feature_names if n in f.columns]).struct.json_encode().alias("features"),
    )
    if conn.dialect.name == "sqlite":
        frame = frame.with_columns(pl.col("last_purchase").dt.to_string("%Y-%m-%d"))
    conn.execute(sa.delete(schema.members).where(schema.members.c.portal == portal))
    _insert_tuples(conn, schema.members, ("portal", "customer_id", "name", "phone", "email", "responsible_id", "purchases",
                                          "last_purchase", "monetary", "days_to_birthday", "extra", "features"),
                   frame.iter_rows())
