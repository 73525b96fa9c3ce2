"""The columnar copy of the mirror (connector.store.columnar): the recompute reads it, and it is never stale,
whoever changes the store and however (a pull, the write-back, raw SQL from another connection)."""

from __future__ import annotations

import os
import stat
from datetime import date

import polars as pl
import pytest
import sqlalchemy as sa

from connector.store import StateStore, customers, deals
from connector.store.base import portal_id
from connector.store.columnar import CUSTOMER_SCHEMA, DEAL_SCHEMA, PRODUCT_ROW_SCHEMA, PRODUCT_SCHEMA
from connector.store.schema import product_rows, products
from tests.conftest import run_cli

PORTAL = "acme"


def _seed(store: StateStore, n: int = 50, portal: str = PORTAL) -> None:
    key = portal_id(store.engine, portal)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(customers), [
            {"portal_id": key, "entity": "contact", "id": i, "name": f"N{i}", "phone": f"+7900000{i:04d}",
             "email": None, "birthday": None, "responsible_id": "1", "created_ts": 1_600_000_000 + i, "fields": None}
            for i in range(1, n + 1)])
        conn.execute(sa.insert(deals), [
            {"portal_id": key, "id": 1000 + i, "contact_id": i, "company_id": None, "status": "won",
             "amount": 100.0 * i, "currency": "RUB", "created_ts": 1_650_000_000 + i, "closed_ts": 1_650_000_000 + i}
            for i in range(1, n + 1)])


def _sql_frames(store: StateStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The same frames read straight from the database (the copy switched off)."""
    frames = store.frames_part
    columnar, frames.columnar = frames.columnar, None
    try:
        return frames.customers_frame("contact").sort("id"), frames.deals_frame().sort("id")
    finally:
        frames.columnar = columnar


def _frames(store: StateStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    return store.customers_frame("contact").sort("id"), store.deals_frame().sort("id")


@pytest.fixture()
def store(tmp_path):
    s = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", PORTAL)
    yield s
    s.close()


def test_the_copy_equals_the_database_and_is_reused_until_something_changes(store, tmp_path):
    _seed(store)
    col = store.frames_part.columnar
    assert col is not None
    first = _frames(store)
    assert col.rebuilds == 1
    assert first[0].equals(_sql_frames(store)[0]) and first[1].equals(_sql_frames(store)[1])
    files = sorted(p.name for p in col.folder.glob("*.parquet"))
    assert len(files) == 4 and col.folder.is_relative_to(tmp_path)  # customers, deals, product rows, products
    again = _frames(store)
    assert col.rebuilds == 1, "an unchanged mirror is read from the copy"
    assert again[0].equals(first[0]) and again[1].equals(first[1])
    for path in col.folder.glob("*.parquet"):  # the files hold personal data: their owner's only
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("change", ["insert", "update", "delete", "deal_update", "deal_delete"])
def test_a_change_behind_the_copys_back_is_seen(store, tmp_path, change):
    """Another connection (as another process or a hand-made fix would) changes the tables directly."""
    _seed(store)
    _frames(store)
    key = store.portal_id
    other = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with other.begin() as conn:
        if change == "insert":
            conn.execute(sa.insert(customers).values(portal_id=key, entity="contact", id=999, name="New", fields=None))
        elif change == "update":
            conn.execute(sa.update(customers).where(customers.c.id == 7).values(phone="+79990000000"))
        elif change == "delete":
            conn.execute(sa.delete(customers).where(customers.c.id == 8))
        elif change == "deal_update":
            conn.execute(sa.update(deals).where(deals.c.id == 1003).values(status="lost"))
        else:
            conn.execute(sa.delete(deals).where(deals.c.id == 1004))
    other.dispose()
    got = _frames(store)
    want = _sql_frames(store)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    assert store.frames_part.columnar.rebuilds == 2


def test_another_portal_changing_leaves_this_copy_valid_and_apart(store):
    _seed(store)
    _seed(store, 5, portal="other")
    _frames(store)
    with store.engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.portal_id == portal_id(store.engine, "other")).values(name="X"))
    cust, deal = _frames(store)
    assert store.frames_part.columnar.rebuilds == 1
    assert cust.height == 50 and deal.height == 50


def test_a_missing_or_broken_file_is_rebuilt(store):
    _seed(store)
    _frames(store)
    col = store.frames_part.columnar
    for path in col.folder.glob("deals-*.parquet"):
        path.write_bytes(b"not parquet")
    assert _frames(store)[1].equals(_sql_frames(store)[1])
    for path in col.folder.glob("*.parquet"):
        path.unlink()
    assert _frames(store)[0].equals(_sql_frames(store)[0])
    assert col.rebuilds == 3


def test_an_unwritable_folder_falls_back_to_the_database(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", PORTAL, columnar_dir=blocker / "sub")
    try:
        _seed(store)
        assert _frames(store)[1].equals(_sql_frames(store)[1])
        assert "columnar copy of the mirror not written" in caplog.text
    finally:
        store.close()


def test_switched_off_reads_the_database(tmp_path):
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", PORTAL, columnar=False)
    try:
        _seed(store)
        assert store.frames_part.columnar is None
        assert _frames(store)[0].height == 50
        assert not list(tmp_path.glob("*.columnar"))
    finally:
        store.close()


def test_the_schemas_match_the_tables():
    assert set(CUSTOMER_SCHEMA) <= {c.name for c in customers.columns}
    assert set(DEAL_SCHEMA) <= {c.name for c in deals.columns}
    assert set(PRODUCT_ROW_SCHEMA) <= {c.name for c in product_rows.columns}
    assert set(PRODUCT_SCHEMA) <= {c.name for c in products.columns}


# -- product rows and products (issue 20, item 3; revision 0010_columnar_products) --------------------------

def _seed_products(store: StateStore, portal: str = PORTAL) -> None:
    key = portal_id(store.engine, portal)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(products), [
            {"portal_id": key, "key": k, "product_id": str(100 + k), "product_name": f"Товар {k}", "section": "Кофе",
             "sku": f"SKU-{k}"} for k in range(1, 4)])
        conn.execute(sa.insert(product_rows), [
            {"portal_id": key, "deal_id": 1000 + i, "line": 1, "product_key": 1 + i % 3, "quantity": 1.0 + i % 2,
             "price": 10.0 * i} for i in range(1, 21)])


def _product_frames(store: StateStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (store.frames_part.product_rows_frame().sort("deal_id", "line"),
            store.frames_part.products_frame("contact").sort("deal_id"))


def _sql_product_frames(store: StateStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    frames = store.frames_part
    columnar, frames.columnar = frames.columnar, None
    try:
        return _product_frames(store)
    finally:
        frames.columnar = columnar


def _change_products(conn: sa.Connection, change: str) -> None:
    if change == "row_insert":
        key = conn.execute(sa.text("SELECT id FROM portal_keys WHERE name = :n"), {"n": PORTAL}).scalar_one()
        conn.execute(sa.insert(product_rows).values(portal_id=key, deal_id=1030, line=1, product_key=2, quantity=4.0,
                                                    price=1.5))
    elif change == "row_update":
        conn.execute(sa.update(product_rows).where(product_rows.c.deal_id == 1005).values(quantity=9.0))
    elif change == "row_delete":
        conn.execute(sa.delete(product_rows).where(product_rows.c.deal_id == 1006))
    elif change == "product_update":
        conn.execute(sa.update(products).where(products.c.key == 2).values(product_name="Переименован"))
    else:
        conn.execute(sa.delete(products).where(products.c.key == 3))


PRODUCT_CHANGES = ["row_insert", "row_update", "row_delete", "product_update", "product_delete"]


def test_product_rows_and_products_are_read_from_the_copy(store):
    _seed(store)
    _seed_products(store)
    col = store.frames_part.columnar
    got = _product_frames(store)
    assert col.rebuilds == 1
    want = _sql_product_frames(store)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    assert got[0].height == 20 and got[1].height == 20
    names = {p.name.split("-", 1)[0] for p in col.folder.glob("*.parquet")}
    assert names == {"customers", "deals", "product_rows", "products"}
    assert _product_frames(store)[1].equals(got[1]) and col.rebuilds == 1, "unchanged: read from the copy"


@pytest.mark.parametrize("change", PRODUCT_CHANGES)
def test_a_product_change_behind_the_copys_back_is_seen(store, tmp_path, change):
    """Another connection changes product rows or products directly; the next read sees it (SQLite)."""
    _seed(store)
    _seed_products(store)
    before = _product_frames(store)
    other = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with other.begin() as conn:
        _change_products(conn, change)
    other.dispose()
    got = _product_frames(store)
    want = _sql_product_frames(store)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    assert not got[0].equals(before[0])
    assert store.frames_part.columnar.rebuilds == 2


def test_postgresql_product_changes_behind_the_copys_back_are_seen(postgres_url, tmp_path):
    store = StateStore.open(postgres_url, PORTAL, columnar_dir=tmp_path)
    other = sa.create_engine(postgres_url)
    try:
        _seed(store)
        _seed_products(store)
        col = store.frames_part.columnar
        for change in PRODUCT_CHANGES:
            before = _product_frames(store)
            rebuilds = col.rebuilds
            assert _product_frames(store)[0].equals(before[0]) and col.rebuilds == rebuilds  # clean: the copy
            with other.begin() as conn:
                _change_products(conn, change)
            got = _product_frames(store)
            want = _sql_product_frames(store)
            assert got[0].equals(want[0]) and got[1].equals(want[1]), change
            assert not got[0].equals(before[0]), change
            assert col.rebuilds == rebuilds + 1, change
    finally:
        other.dispose()
        store.close()


def test_a_store_upgraded_from_0009_flags_product_changes_and_rebuilds_its_old_copy(tmp_path):
    """A store left at revision 0009_compact_store (no triggers on the product tables, a clean copy of customers and deals
    only) is upgraded by revision 0010_columnar_products on open: its old copy is marked stale and a change
    to product rows from another connection is seen afterwards."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url, PORTAL)
    _seed(store)
    _seed_products(store)
    _frames(store)
    folder = store.frames_part.columnar.folder
    store.close()
    for path in folder.glob("product*.parquet"):
        path.unlink()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # back to what revision 0009_compact_store left
        for table in ("product_rows", "products"):
            for event in ("INSERT", "UPDATE", "DELETE"):
                conn.exec_driver_sql(f"DROP TRIGGER {table}_mirror_{event}")
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0009_compact_store'")
        conn.exec_driver_sql("UPDATE meta SET value = '14' WHERE key = 'schema_version'")
        _change_products(conn, "row_update")  # unseen by any trigger
        assert conn.exec_driver_sql("SELECT dirty FROM mirror_state").all() == [(0,)]
    store = StateStore.open(url, PORTAL)
    try:
        col = store.frames_part.columnar
        assert _frames(store)[1].equals(_sql_frames(store)[1]) and col.rebuilds == 1  # the upgrade flagged it
        got = _product_frames(store)
        assert got[0].equals(_sql_product_frames(store)[0]) and col.rebuilds == 1
        with engine.begin() as conn:
            _change_products(conn, "row_delete")
        got = _product_frames(store)
        assert got[0].equals(_sql_product_frames(store)[0]) and col.rebuilds == 2
        assert got[0].filter(pl.col("deal_id") == 1006).height == 0
    finally:
        engine.dispose()
        store.close()


def test_postgresql_triggers_flag_changes_per_statement(postgres_url, tmp_path):
    store = StateStore.open(postgres_url, PORTAL, columnar_dir=tmp_path)
    try:
        _seed(store)
        col = store.frames_part.columnar
        before = col.rebuilds
        assert _frames(store)[1].equals(_sql_frames(store)[1])
        assert _frames(store)[0].equals(_sql_frames(store)[0])
        assert col.rebuilds == before + 1
        key = store.portal_id
        with store.engine.begin() as conn:
            conn.execute(sa.update(deals).where(deals.c.portal_id == key, deals.c.id == 1002).values(amount=1.0))
        assert _frames(store)[1].filter(pl.col("id") == 1002).get_column("amount").item() == 1.0
        assert col.rebuilds == before + 2
    finally:
        store.close()


def test_a_sync_and_the_report_agree_with_and_without_the_copy(tmp_path):
    """End to end on the CSV sample: the same report from the copy and from the database."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "examples" / "sample"
    outs = []
    for columnar in ("true", "false"):
        folder = tmp_path / columnar
        folder.mkdir()
        config = folder / "c.toml"
        config.write_text(f'[crm]\nkind = "csv"\npath = "{sample}"\ntimezone = "Europe/Moscow"\n'
                          f'[state]\nurl = "sqlite:///{folder / "s.db"}"\ncolumnar = {columnar}\n', encoding="utf-8")
        assert run_cli(["sync", "--config", str(config)]).returncode == 0
        result = run_cli(["report", "--config", str(config), "--as-of", date(2026, 11, 20).isoformat(), "--format", "json"])
        assert result.returncode == 0, result.stderr
        outs.append(result.stdout)
    assert outs[0] == outs[1]
    assert list((tmp_path / "true").glob("s.db.columnar/*/*.parquet"))
    assert not list((tmp_path / "false").glob("s.db.columnar"))


def test_postgresql_reads_without_connectorx_equal_the_rows(postgres_url, tmp_path, monkeypatch):
    """The COPY-as-CSV path (an image without the connectorx extra): nulls, empty strings, quotes, commas,
    new lines and non-ASCII text come back as stored."""
    from connector.store import frames as frames_module

    store = StateStore.open(postgres_url, PORTAL, columnar=False)
    try:
        odd = ["", 'a "quoted", text', "line\nbreak", "Ёлка, ёж", None]
        key = store.portal_id
        with store.engine.begin() as conn:
            conn.execute(sa.insert(customers), [
                {"portal_id": key, "entity": "contact", "id": i + 1, "name": text, "phone": None, "email": text,
                 "birthday": date(1990, 1, i + 1) if i % 2 else None, "responsible_id": text, "created_ts": i,
                 "fields": text} for i, text in enumerate(odd)])
        with_cx = store.frames_part.card_frame("contact").sort("id")
        monkeypatch.setattr(frames_module, "_has_connectorx", lambda: False)
        without = store.frames_part.card_frame("contact").sort("id")
        assert without.equals(with_cx), (without, with_cx)
        assert without.get_column("email").to_list() == odd
        assert without.get_column("birthday").to_list()[1] == date(1990, 1, 2)
    finally:
        store.close()


def test_a_file_left_half_written_by_a_killed_process_is_ignored_and_removed(store):
    import subprocess
    import sys

    _seed(store)
    _frames(store)
    col = store.frames_part.columnar
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = col.folder / f".deals-x.parquet.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"half")
    mine = col.folder / f".deals-y.parquet.{os.getpid()}.tmp"
    mine.write_bytes(b"in progress")
    with store.engine.begin() as conn:
        conn.execute(sa.update(deals).where(deals.c.id == 1001).values(amount=5.0))
    assert _frames(store)[1].equals(_sql_frames(store)[1])
    assert not stale.exists() and mine.exists()


def test_sqlite_reads_equal_the_rows_written(store):
    """SQLite is read through pysqlite, never connectorx (whose own SQLite may delete the WAL under this
    process's connections): the frames hold exactly what was inserted."""
    _seed(store)
    cust, deal = _sql_frames(store)
    assert cust.get_column("id").to_list() == list(range(1, 51))
    assert cust.get_column("phone").to_list() == [f"+7900000{i:04d}" for i in range(1, 51)]
    assert deal.get_column("amount").to_list() == [100.0 * i for i in range(1, 51)]
    assert deal.get_column("company_id").null_count() == 50


def test_sqlite_reads_in_chunks_equal_one_read(store, monkeypatch):
    """Chunks whose columns differ in inferred type (all null in one chunk, text in the next; ints then
    floats) make the same frame as one read."""
    from connector.store import frames as frames_module

    _seed(store)
    with store.engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.id > 45).values(email="late@example.com"))
        conn.execute(sa.update(deals).where(deals.c.id == 1050).values(amount=10.5))
    whole = _sql_frames(store)
    monkeypatch.setattr(frames_module, "SQLITE_CHUNK", 7)
    chunked = _sql_frames(store)
    assert chunked[0].equals(whole[0]) and chunked[1].equals(whole[1])
    assert chunked[0].get_column("email").null_count() == 45
