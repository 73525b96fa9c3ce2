"""A smaller store (issue 20): the portal's name becomes an integer key (``portal_keys``) in the big tables,
segments get an integer id (numbered within the portal) that membership and its events use, membership dates
become day numbers, events and deal statuses small codes, and on SQLite these tables are WITHOUT ROWID (the
primary key is the table; no second copy of it). ``membership_events`` loses its row id: a run records one
event per segment and customer, so (portal, run, segment, customer) is its key and its (portal, run) index.

Each table is rebuilt as ``<name>_new`` by one ``INSERT ... SELECT`` that maps names to ids, the row counts
are compared (a difference stops the upgrade, whose transaction then leaves the store as it was), the old
table is dropped and the new one renamed; the mirror's dirty triggers of revision 0006 are recreated on the
new ``customers`` and ``deals``. SQLite keeps the freed pages in the file until a ``VACUUM``, which the store
runs once right after this upgrade commits (``meta.vacuum_pending``; connector.store.migrate.vacuum_if_pending).

Revision ID: 0009_compact_store
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_compact_store"
down_revision = "0008"
branch_labels = None
depends_on = None

NAMED = ("customers", "deals", "products", "product_rows", "segments", "membership", "membership_events")


def _day(conn: sa.Connection, column: str) -> str:
    """SQL turning a stored date into its day number since 1970-01-01."""
    if conn.dialect.name == "sqlite":  # SQLAlchemy stored SQLite dates as ISO text
        return f"CAST(julianday(substr({column}, 1, 10)) - 2440587.5 AS INTEGER)"
    return f"({column} - DATE '1970-01-01')"


def _copies(conn: sa.Connection) -> dict[str, str]:
    """The SELECT filling each new table from the old one (k: portal_keys, s: the new segments)."""
    return {
        "customers": "SELECT k.id, o.entity, o.id, o.name, o.phone, o.email, o.birthday, o.responsible_id, o.created_ts, "
                     "o.fields FROM customers o JOIN portal_keys k ON k.name = o.portal ORDER BY k.id, o.entity, o.id",
        "deals": "SELECT k.id, o.id, o.contact_id, o.company_id, CASE o.status WHEN 'open' THEN 0 WHEN 'won' THEN 1 "
                 "WHEN 'lost' THEN 2 END, o.amount, o.currency, o.created_ts, o.closed_ts "
                 "FROM deals o JOIN portal_keys k ON k.name = o.portal ORDER BY k.id, o.id",
        "products": "SELECT k.id, o.key, o.product_id, o.product_name, o.section, o.sku "
                    "FROM products o JOIN portal_keys k ON k.name = o.portal ORDER BY k.id, o.key",
        "product_rows": "SELECT k.id, o.deal_id, o.line, o.product_key, o.quantity, o.price "
                        "FROM product_rows o JOIN portal_keys k ON k.name = o.portal ORDER BY k.id, o.deal_id, o.line",
        # every name membership or its history uses gets an id, even one whose definition row is gone
        "segments": "SELECT k.id, ROW_NUMBER() OVER (PARTITION BY n.portal ORDER BY n.name), n.name, "
                    "COALESCE(o.static, false), o.definition, o.frozen_run "
                    "FROM (SELECT portal, name FROM segments UNION SELECT portal, segment FROM membership "
                    "UNION SELECT portal, segment FROM membership_events) n "
                    "JOIN portal_keys k ON k.name = n.portal LEFT JOIN segments o ON o.portal = n.portal AND o.name = n.name",
        "membership": f"SELECT k.id, s.id, o.customer_id, {_day(conn, 'o.entered_on')}, o.entered_run FROM membership o "
                      "JOIN portal_keys k ON k.name = o.portal JOIN segments_new s ON s.portal_id = k.id AND s.name = o.segment "
                      "ORDER BY k.id, s.id, o.customer_id",
        "membership_events": f"SELECT k.id, o.run_id, s.id, o.customer_id, CASE o.event WHEN 'exit' THEN 0 "
                             f"WHEN 'enter' THEN 1 END, {_day(conn, 'o.on_date')} FROM membership_events o "
                             "JOIN portal_keys k ON k.name = o.portal "
                             "JOIN segments_new s ON s.portal_id = k.id AND s.name = o.segment "
                             "ORDER BY k.id, o.run_id, s.id, o.customer_id",
    }


def _count(conn: sa.Connection, table: str) -> int:
    return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def upgrade() -> None:
    from connector.store.columnar import create_triggers
    from connector.store.schema import metadata, portal_keys

    conn = op.get_bind()
    present = set(sa.inspect(conn).get_table_names())
    missing = [t for t in NAMED if t not in present]
    if missing:  # pragma: no cover - revisions 0001-0008 made them all
        raise RuntimeError(f"state store: tables {', '.join(missing)} are missing; the store is damaged")
    portal_keys.create(conn, checkfirst=True)
    inspector = sa.inspect(conn)
    if all("portal_id" in {c["name"] for c in inspector.get_columns(t)} for t in NAMED):
        create_triggers(conn)  # already compact (a store stamped back to an older revision by hand)
        return
    conn.exec_driver_sql(
        "INSERT INTO portal_keys (name) SELECT DISTINCT portal FROM ("
        + " UNION ".join(f"SELECT DISTINCT portal FROM {t}" for t in NAMED)
        + ") p WHERE portal NOT IN (SELECT name FROM portal_keys) ORDER BY portal")
    staging = sa.MetaData()
    for name in NAMED:  # segments before membership and its events (they map names through segments_new)
        new = metadata.tables[name].to_metadata(staging, name=f"{name}_new")
        new.create(conn)
        columns = ", ".join(c.name for c in new.columns)
        conn.exec_driver_sql(f"INSERT INTO {name}_new ({columns}) {_copies(conn)[name]}")
    for name in NAMED:
        before, after = _count(conn, name), _count(conn, f"{name}_new")
        if name == "segments":
            before = int(conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT portal, name FROM segments UNION SELECT portal, segment FROM membership "
                "UNION SELECT portal, segment FROM membership_events) n").scalar_one())
        if before != after:
            raise RuntimeError(f"state store upgrade 0009: {name} has {before} rows but {after} were copied; "
                               "nothing was changed (report this as a bug)")
    for name in NAMED:
        op.drop_table(name)
    for name in NAMED:
        conn.exec_driver_sql(f"ALTER TABLE {name}_new RENAME TO {name}")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ALTER TABLE {name} RENAME CONSTRAINT {name}_new_pkey TO {name}_pkey")
    create_triggers(conn)
    if conn.dialect.name == "sqlite":
        from connector.store.migrate import VACUUM_KEY

        conn.exec_driver_sql("DELETE FROM meta WHERE key = ?", (VACUUM_KEY,))
        conn.exec_driver_sql("INSERT INTO meta (key, value) VALUES (?, '0009')", (VACUUM_KEY,))


def downgrade() -> None:
    raise NotImplementedError(
        "state store revision 0009 (integer portal and segment keys) is not downgraded: it would rewrite every "
        "big table again; restore a backup taken before the upgrade instead")
