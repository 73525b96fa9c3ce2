"""Revision 0009 (the compact store, issue 20): a populated store of revision 0008 is converted on SQLite and on
PostgreSQL with every row kept, and the program reads and writes it after; the compact tables themselves."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
import sqlalchemy as sa

from connector.store import StateStore, migrate
from connector.store.schema import customers, deals
from tests.compact_rows import COMPACTED, old_shape_rows

# Two portals with the same customer ids; 'shop' has a segment only its history still names (its definition
# row is gone), an exit event and product rows.
OLD_ROWS = {
    "customers": [("shop", "contact", i, f"N{i}", f"+7900{i:07d}", None, "1990-05-0%d" % (i % 9 + 1) if i % 2 else None,
                   "7", 1_600_000_000 + i, '{"source": "site"}' if i % 3 else None) for i in range(1, 31)]
    + [("acme", "company", i, f"C{i}", None, f"c{i}@example.com", None, None, None, None) for i in range(1, 6)],
    "deals": [("shop", 100 + i, i, None, ("won", "lost", "open")[i % 3], 100.5 * i, "RUB", 1_650_000_000 + i,
               1_650_100_000 + i if i % 3 != 2 else None) for i in range(1, 31)]
    + [("acme", 100 + i, None, i, "won", 10.0, None, None, None) for i in range(1, 6)],
    "products": [("shop", 11, "5", "Кофе", "Еда", None), ("shop", 12, None, "free text", None, "SKU-1")],
    "product_rows": [("shop", 100 + i, j, 11 + j % 2, 1.0 + j, 99.9) for i in range(1, 11) for j in (1, 2)],
    "segments": [("shop", "status.current", 0, "preset", None), ("shop", "vip", 1, "purchases >= 2", 1),
                 ("acme", "status.current", 0, "preset", None)],
    "membership": [("shop", "status.current", i, "2026-11-20", 1) for i in range(1, 21)]
    + [("shop", "vip", i, "2026-11-21", 2) for i in range(1, 4)]
    + [("shop", "gone", 5, "2026-11-19", 1)]
    + [("acme", "status.current", i, "2026-11-22", 3) for i in range(1, 6)],
    "membership_events": [("shop", 1, "status.current", i, "enter", "2026-11-20") for i in range(1, 23)]
    + [("shop", 1, "gone", 5, "enter", "2026-11-19"), ("shop", 2, "vip", 1, "enter", "2026-11-21"),
       ("shop", 2, "vip", 2, "enter", "2026-11-21"), ("shop", 2, "vip", 3, "enter", "2026-11-21")]
    + [("shop", 2, "status.current", i, "exit", "2026-11-21") for i in (21, 22)]
    + [("acme", 3, "status.current", i, "enter", "2026-11-22") for i in range(1, 6)],
}
COLUMNS = {"membership_events": "(portal, run_id, segment, customer_id, event, on_date)"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")


def _store_at_0008(url: str) -> sa.Engine:
    """A store upgraded to revision 0008 only, filled with :data:`OLD_ROWS` as that revision stored them."""
    from alembic import command

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0008")
        sqlite = conn.dialect.name == "sqlite"
        for table, rows in OLD_ROWS.items():
            marks = ", ".join(["?" if sqlite else "%s"] * len(rows[0]))
            values = [tuple(bool(v) if (table == "segments" and k == 2 and not sqlite) else v for k, v in enumerate(r))
                      for r in rows]
            if not sqlite and table in ("membership", "membership_events", "customers"):
                values = [tuple(date.fromisoformat(v) if isinstance(v, str) and len(v) == 10 and v[4] == "-" else v
                                for v in r) for r in values]
            conn.exec_driver_sql(f"INSERT INTO {table} {COLUMNS.get(table, '')} VALUES ({marks})", values)
    return engine


def test_a_populated_0008_store_is_converted_with_every_row_and_the_program_reads_it(url, tmp_path):
    engine = _store_at_0008(url)
    with engine.connect() as conn:
        before = {t: old_shape_rows(conn, t) for t in COMPACTED}
    assert {t: len(r) for t, r in before.items()} == {t: len(r) for t, r in OLD_ROWS.items()}
    store = StateStore.open(url, "shop", columnar_dir=tmp_path / "columnar")
    try:
        with engine.connect() as conn:
            after = {t: old_shape_rows(conn, t) for t in COMPACTED}
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == migrate.HEAD
            assert {c["name"] for c in sa.inspect(conn).get_columns("membership")} == {
                "portal_id", "segment_id", "customer_id", "entered_on", "entered_run"}
            named = {r[0] for r in conn.exec_driver_sql("SELECT name FROM segments")}
            assert conn.exec_driver_sql("SELECT key FROM meta").scalars().all() == ["schema_version"]
            if conn.dialect.name == "sqlite":  # vacuumed once after the upgrade: the old tables' pages are gone
                assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        for table in COMPACTED:
            assert after[table] == before[table], table
        assert {"status.current", "vip", "gone"} <= named  # the name only the history used got an id too
        # the program reads the converted rows
        members = store.membership_frame()
        assert sorted(members.rows()) == sorted((s, c) for p, s, c, _, _ in OLD_ROWS["membership"] if p == "shop")
        events = store.membership_events_frame(2)
        assert sorted(events.rows()) == sorted((r, s, c, e) for p, r, s, c, e, _ in OLD_ROWS["membership_events"]
                                               if p == "shop" and r == 2)
        deal_frame = store.deals_frame().sort("id")
        assert deal_frame.get_column("status").to_list() == [r[4] for r in OLD_ROWS["deals"] if r[0] == "shop"]
        assert store.customers_frame("contact").height == 30
        assert store.product_rows_frame().height == 20
        assert store.frozen_segments() == {"vip"}
        # and writes on: a new run's moves; the columnar copy's triggers follow the rebuilt tables
        for _ in range(3):  # the runs 1-3 the rows name (the fixture holds no run records)
            store.start_run("sync", date(2026, 11, 22))
        run = store.start_run("sync", date(2026, 11, 23))
        store.apply_membership(run, date(2026, 11, 23), pl.DataFrame({"segment": ["vip"], "customer_id": [4]}),
                               pl.DataFrame({"segment": ["gone"], "customer_id": [5]}),
                               {"status.current": (False, "preset"), "vip": (True, "purchases >= 2")})
        assert ("vip", 4) in store.membership_frame().rows() and ("gone", 5) not in store.membership_frame().rows()
        store.deals_frame()
        before_rebuilds = store.frames_part.columnar.rebuilds
        store.deals_frame()
        assert store.frames_part.columnar.rebuilds == before_rebuilds  # unchanged: the copy is reused
        with store.engine.begin() as conn:
            conn.execute(sa.update(deals).where(deals.c.portal_id == store.portal_id, deals.c.id == 101)
                         .values(status="lost"))
        assert store.deals_frame().filter(pl.col("id") == 101).get_column("status").item() == "lost"
        assert store.frames_part.columnar.rebuilds == before_rebuilds + 1  # the trigger flagged it
        other = StateStore.open(url, "acme", columnar=False)
        try:
            assert other.customers_frame("company").height == 5 and other.membership_frame().height == 5
        finally:
            other.close()
    finally:
        store.close()
        engine.dispose()


def test_the_big_tables_are_without_rowid_on_sqlite_and_keyed_by_integers(tmp_path):
    store = StateStore.open(f"sqlite:///{tmp_path / 's.db'}", "shop")
    try:
        with store.engine.connect() as conn:
            sql = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
            autoindexes = {r[0] for r in conn.exec_driver_sql(
                "SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name LIKE 'sqlite_autoindex_%'")}
        for table in ("customers", "deals", "product_rows", "membership", "membership_events"):
            assert sql[table].rstrip().endswith("WITHOUT ROWID"), table
            assert table not in autoindexes, table
        assert "portal VARCHAR" not in sql["customers"] and "portal_id INTEGER" in sql["customers"]
        assert store.portal_id == StateStore.open(f"sqlite:///{tmp_path / 's.db'}", "shop").portal_id
        assert StateStore.open(f"sqlite:///{tmp_path / 's.db'}", "acme").portal_id != store.portal_id
    finally:
        store.close()


def test_a_deal_status_outside_the_codes_is_refused_not_stored_as_another(tmp_path):
    store = StateStore.open(f"sqlite:///{tmp_path / 's.db'}", "shop")
    try:
        with pytest.raises(sa.exc.StatementError, match="'paused' is not one of open, won, lost"):
            with store.engine.begin() as conn:
                conn.execute(sa.insert(deals).values(portal_id=store.portal_id, id=1, status="paused", amount=1.0))
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(deals)).scalar() == 0
            assert conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 0
    finally:
        store.close()
