"""The rows of the store's tables in the shape of revision 0008 (portal and segment names, ISO dates, words),
read from a store of either shape: tests compare a store before and after revision 0009 with it."""

from __future__ import annotations

import sqlalchemy as sa

SEG = "JOIN segments s ON s.portal_id = t.portal_id AND s.id = t.segment_id"
KEY = "JOIN portal_keys k ON k.id = t.portal_id"


def _day(dialect: str, column: str) -> str:
    if dialect == "sqlite":
        return f"date({column} * 86400, 'unixepoch')"
    return f"(DATE '1970-01-01' + {column})"


def _compact_sql(dialect: str) -> dict[str, str]:
    return {
        "customers": f"SELECT k.name, t.entity, t.id, t.name, t.phone, t.email, t.birthday, t.responsible_id, "
                     f"t.created_ts, t.fields FROM customers t {KEY}",
        "deals": f"SELECT k.name, t.id, t.contact_id, t.company_id, CASE t.status WHEN 0 THEN 'open' WHEN 1 THEN 'won' "
                 f"WHEN 2 THEN 'lost' END, t.amount, t.currency, t.created_ts, t.closed_ts FROM deals t {KEY}",
        "products": f"SELECT k.name, t.key, t.product_id, t.product_name, t.section, t.sku FROM products t {KEY}",
        "product_rows": f"SELECT k.name, t.deal_id, t.line, t.product_key, t.quantity, t.price FROM product_rows t {KEY}",
        "segments": "SELECT k.name, t.name, t.static, t.definition, t.frozen_run FROM segments t "
                    "JOIN portal_keys k ON k.id = t.portal_id WHERE t.definition IS NOT NULL OR t.static",
        "membership": f"SELECT k.name, s.name, t.customer_id, {_day(dialect, 't.entered_on')}, t.entered_run "
                      f"FROM membership t {KEY} {SEG}",
        "membership_events": f"SELECT k.name, t.run_id, s.name, t.customer_id, CASE t.event WHEN 0 THEN 'exit' "
                             f"WHEN 1 THEN 'enter' END, {_day(dialect, 't.on_date')} FROM membership_events t {KEY} {SEG}",
    }


_OLD = {"membership_events": "SELECT portal, run_id, segment, customer_id, event, on_date FROM membership_events",
        "segments": "SELECT portal, name, static, definition, frozen_run FROM segments "
                    "WHERE definition IS NOT NULL OR static"}


def old_shape_rows(conn: sa.Connection, table: str) -> list[tuple]:
    """Every row of ``table`` as revision 0008 stored it (membership_events without its row id), sorted; dates
    as ISO text, booleans as 0/1."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    if "portal_id" in columns:
        sql = _compact_sql(conn.dialect.name)[table]
    else:
        sql = _OLD.get(table, f"SELECT * FROM {table}")
    out = []
    for row in conn.exec_driver_sql(sql):
        out.append(tuple(int(v) if isinstance(v, bool) else (v.isoformat() if hasattr(v, "isoformat") else v)
                         for v in row))
    return sorted(out, key=repr)


COMPACTED = ("customers", "deals", "products", "product_rows", "segments", "membership", "membership_events")
