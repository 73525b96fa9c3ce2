"""Bulk reads for the segment engine and the columnar copy of the mirror (connector.store.columnar).

PostgreSQL: with the ``fast`` extra, connectorx reads straight into Arrow/polars; without it, ``COPY ... TO
STDOUT`` as CSV parsed by polars. SQLite: pysqlite's tuples, never connectorx. connectorx links its own SQLite,
whose closing read may delete the WAL under this process's other connections; a SIGKILL campaign test met
"disk I/O error" right after such a read. With the columnar copy, the mirror is read in bulk only when it
changed, so the slower SQLite read costs once per changed pull."""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa

from adapters.base import Entity
from connector.store.base import Part, postgres_copy
from connector.store.cards import CARD_SCHEMA
from connector.store.columnar import ColumnarMirror
from connector.store.schema import customers, deals, membership, membership_events, product_rows, products, segments
from connector.store.types import decode_frame


def connectorx_uri(url: sa.URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"sqlite://{url.database}"
    # postgresql+psycopg://... -> postgresql://...
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _has_connectorx() -> bool:
    try:
        import connectorx  # noqa: F401
    except ImportError:
        return False
    return True


def _connectorx(sql: str, url: sa.URL) -> pl.DataFrame:
    return pl.read_database_uri(sql, connectorx_uri(url), engine="connectorx")


def _copy_csv(engine: sa.Engine, sql: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """PostgreSQL without connectorx: the rows as CSV through COPY, parsed by polars (NULL is an unquoted
    empty field, an empty string a quoted one)."""
    import io

    buffer = io.BytesIO()
    with engine.connect() as conn, postgres_copy(conn, f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
        for chunk in copy:
            buffer.write(chunk)
    if buffer.tell() == 0:
        return pl.DataFrame(schema=schema)
    buffer.seek(0)
    text_schema = {name: (pl.String if dtype == pl.Date else dtype) for name, dtype in schema.items()}
    return pl.read_csv(buffer, has_header=False, new_columns=list(schema), schema=text_schema,
                       quote_char='"')


SQLITE_CHUNK = 250_000  # rows turned into a frame at a time: Python tuples cost ~100 bytes a value


def _sqlite_frame(cursor: object, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The cursor's rows as one frame, built a chunk at a time so that only one chunk of Python tuples is
    alive at once (10 million product rows as tuples would take gigabytes)."""
    parts = []
    while True:
        rows = cursor.fetchmany(SQLITE_CHUNK)  # type: ignore[attr-defined]
        if not rows:
            break
        parts.append(pl.DataFrame(rows, schema=list(schema), orient="row", infer_schema_length=None))
        del rows
    if not parts:
        return pl.DataFrame(schema=list(schema))
    return pl.concat(parts, how="vertical_relaxed", rechunk=True)


class Frames(Part):
    """Polars frames of the mirror and of membership. The mirror's customers, deals, product rows and products
    come from its columnar copy (connector.store.columnar) when the store has one, else from the database."""

    columnar: ColumnarMirror | None = None

    def read_frame(self, query: sa.Select, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """Run a SELECT and return a polars frame, vectorised where the database allows."""
        url = self.engine.url
        frame: pl.DataFrame | None = None
        backend = url.get_backend_name()
        if backend == "postgresql":
            sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
            frame = _connectorx(sql, url) if _has_connectorx() else _copy_csv(self.engine, sql, schema)
        if frame is None or frame.width != len(schema):
            with self.engine.connect() as conn:
                if conn.dialect.name == "sqlite":  # plain tuples from the driver: no per-row SQLAlchemy processing
                    sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
                    frame = _sqlite_frame(conn.exec_driver_sql(sql).cursor, schema)
                else:
                    rows = conn.execute(query).all()
                    frame = pl.DataFrame(rows, schema=list(schema), orient="row", infer_schema_length=None)
        if frame.height == 0:
            return pl.DataFrame(schema=schema)
        frame.columns = list(schema)
        # raw reads skip SQLAlchemy's type processing: codes and day numbers back to words and dates
        frame = decode_frame(frame, {name: col.type for name, col in zip(schema, query.selected_columns)})
        return frame.cast(schema)  # type: ignore[arg-type]

    def customers_frame(self, entity: Entity) -> pl.DataFrame:
        query = sa.select(
            customers.c.id,
            customers.c.phone,
            customers.c.email,
            customers.c.birthday,
            customers.c.responsible_id,
            customers.c.created_ts,
            customers.c.fields,
        ).where(customers.c.portal_id == self.portal_id, customers.c.entity == entity)
        schema = {
            "id": pl.Int64,
            "phone": pl.String,
            "email": pl.String,
            "birthday": pl.String,
            "responsible_id": pl.String,
            "created_ts": pl.Int64,
            "fields": pl.String,
        }
        frame = self._columnar_customers(entity, schema) if self.columnar else self.read_frame(query, schema)
        return frame.with_columns(pl.col("birthday").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))

    def deals_frame(self) -> pl.DataFrame:
        query = sa.select(
            deals.c.id,
            deals.c.contact_id,
            deals.c.company_id,
            deals.c.status,
            deals.c.amount,
            deals.c.created_ts,
            deals.c.closed_ts,
        ).where(deals.c.portal_id == self.portal_id)
        schema = {
            "id": pl.Int64,
            "contact_id": pl.Int64,
            "company_id": pl.Int64,
            "status": pl.String,
            "amount": pl.Float64,
            "created_ts": pl.Int64,
            "closed_ts": pl.Int64,
        }
        if self.columnar:
            return self.columnar.deals().select(list(schema))
        return self.read_frame(query, schema)

    def products_frame(self, entity: Entity, deals_frame: pl.DataFrame | None = None,
                       timezone: str | None = None) -> pl.DataFrame:
        """Product rows of won deals with the deal's customer and close moment (rules.products' input).
        ``deals_frame``: the deals already read (deals_frame()). Rows (numbers only), products and deals are
        read apart and joined here: much faster than SQLite's join, or reading the names per row. With
        ``timezone``, ``closed_on`` (the close date there) is added once per deal, not per row."""
        from rules.features import local_date

        if deals_frame is None:
            deals_frame = self.deals_frame()
        link = "contact_id" if entity == "contact" else "company_id"
        won = deals_frame.lazy().filter(pl.col("status") == "won").select(
            pl.col("id").alias("deal_id"), pl.col(link).alias("customer_id"), "closed_ts",
            *([local_date("closed_ts", timezone).alias("closed_on")] if timezone else []))
        rows = self._rows()
        kinds = self._products().lazy()
        return (rows.lazy().join(won, on="deal_id", how="inner").join(kinds, on="product_key", how="left")
                .select("customer_id", "deal_id", "product_id", "product_name", "section", "quantity", "price",
                        "closed_ts", *(["closed_on"] if timezone else [])).collect())

    def _rows(self, line: bool = False) -> pl.DataFrame:
        columns = {"deal_id": pl.Int64, **({"line": pl.Int64} if line else {}), "product_key": pl.Int64,
                   "quantity": pl.Float64, "price": pl.Float64}
        if self.columnar:
            return self.columnar.product_rows().select(list(columns))
        query = sa.select(*(product_rows.c[name] for name in columns)).where(product_rows.c.portal_id == self.portal_id)
        return self.read_frame(query, columns)

    def _products(self) -> pl.DataFrame:
        if self.columnar:
            frame = self.columnar.products()
        else:
            query = sa.select(products.c.key, products.c.product_id, products.c.product_name, products.c.section,
                              products.c.sku).where(products.c.portal_id == self.portal_id)
            frame = self.read_frame(query, {"product_key": pl.Int64, "product_id": pl.String, "product_name": pl.String,
                                            "section": pl.String, "sku": pl.String})
        return frame.with_columns(pl.col("product_id", "product_name", "section", "sku").cast(pl.Categorical))

    def product_rows_frame(self) -> pl.DataFrame:
        """Every stored product row with what it names, as pulled (tests and exports)."""
        return (self._rows(line=True).join(self._products(), on="product_key", how="left")
                .select("deal_id", "line", "product_id", "product_name", "section", "sku", "quantity", "price")
                .with_columns(pl.col("product_id", "product_name", "section", "sku").cast(pl.String)))

    def membership_frame(self) -> pl.DataFrame:
        m = membership.c
        if self.engine.dialect.name == "sqlite":
            frame = self._id_lists(sa.select(m.segment_id).where(m.portal_id == self.portal_id), m.customer_id,
                                   {"segment_id": pl.Int64})
        else:
            query = sa.select(m.segment_id, m.customer_id).where(m.portal_id == self.portal_id)
            frame = self.read_frame(query, {"segment_id": pl.Int64, "customer_id": pl.Int64})
        return self._segment_names(frame).select("segment", "customer_id")

    def membership_events_frame(self, run_id: int | None = None) -> pl.DataFrame:
        e = membership_events.c
        schema = {"run_id": pl.Int64, "segment_id": pl.Int64, "event": pl.String}
        if self.engine.dialect.name == "sqlite":
            keys = sa.select(e.run_id, e.segment_id, e.event).where(e.portal_id == self.portal_id)
            if run_id is not None:
                keys = keys.where(e.run_id == run_id)
            frame = self._id_lists(keys, e.customer_id, schema)
        else:
            query = sa.select(e.run_id, e.segment_id, e.customer_id, e.event).where(e.portal_id == self.portal_id)
            if run_id is not None:
                query = query.where(e.run_id == run_id)
            frame = self.read_frame(query, {"run_id": pl.Int64, "segment_id": pl.Int64, "customer_id": pl.Int64,
                                            "event": pl.String})
        return self._segment_names(frame).select("run_id", "segment", "customer_id", "event")

    def _id_lists(self, keys: sa.Select, ids: sa.ColumnElement, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """SQLite: the ids of each group of ``keys`` as one JSON array (``json_group_array``), expanded here:
        one row per group instead of one Python tuple per id (about 5x faster for a million members)."""
        import json

        query = keys.add_columns(sa.func.json_group_array(ids)).group_by(*keys.selected_columns)
        sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
        with self.engine.connect() as conn:
            groups = conn.exec_driver_sql(sql).all()
        parts = []
        for *key, id_list in groups:  # the keys are integers here (codes before decode_frame)
            parts.append(pl.DataFrame({"customer_id": json.loads(id_list)}, schema={"customer_id": pl.Int64})
                         .select(*(pl.lit(k, pl.Int64).alias(name) for name, k in zip(schema, key)), "customer_id"))
        if not parts:
            return pl.DataFrame(schema={**schema, "customer_id": pl.Int64})
        frame = pl.concat(parts)
        types = {name: col.type for name, col in zip(schema, keys.selected_columns)}
        return decode_frame(frame, types).cast({**schema, "customer_id": pl.Int64})  # type: ignore[arg-type]

    def _segment_names(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Segment ids of a frame replaced by the names (segments is a few rows: joined here, not in SQL)."""
        names = self.read_frame(sa.select(segments.c.id, segments.c.name).where(segments.c.portal_id == self.portal_id),
                                {"segment_id": pl.Int64, "segment": pl.String})
        return frame.join(names, on="segment_id", how="left")

    def card_frame(self, entity: Entity) -> pl.DataFrame:
        """Every customer's card (connector.store.cards): the feature columns and the name."""
        query = sa.select(*(customers.c[name] for name in CARD_SCHEMA)).where(
            customers.c.portal_id == self.portal_id, customers.c.entity == entity)
        schema = dict(CARD_SCHEMA)
        frame = self._columnar_customers(entity, schema) if self.columnar else self.read_frame(query, schema)
        return frame.with_columns(pl.col("birthday").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))

    def _columnar_customers(self, entity: Entity, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        assert self.columnar is not None
        return self.columnar.customers().filter(pl.col("entity") == entity).select(list(schema))
