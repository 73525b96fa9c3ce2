"""The mirror: the CRM's customers and deals as the last pull left them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from adapters.base import Customer, Deal, Entity, ProductRow, PullResult
from connector.store.base import Part, chunks, date_param, insert_tuples, now, stage_upsert
from connector.store.schema import DEAL_STATUS, cursors, customers, deals, product_rows, products
from connector.store.tokens import save_cursors

CUSTOMER_COLUMNS = ("portal_id", "entity", "id", "name", "phone", "email", "birthday", "responsible_id", "created_ts",
                    "fields")
DEAL_COLUMNS = ("portal_id", "id", "contact_id", "company_id", "status", "amount", "currency", "created_ts", "closed_ts")
PRODUCTS_CURSOR = "products_pulled_at"  # set once product rows were pulled: product rules may use them


def product_key(row: ProductRow) -> int:
    """The ``products.key`` of what a row names: a stable 63-bit hash of (id, name, section, SKU)."""
    text = json.dumps([row.product_id, row.product_name, row.section, row.sku], ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class Mirror(Part):
    """Writes of pulls into the mirror, and small reads of it (bulk reads: connector.store.frames)."""

    def apply_pull(self, pull: PullResult) -> dict[str, int]:
        """Write one pull into the mirror in a single transaction; return what changed.

        The pulled rows go in as plain tuples (connector.store.base.stage_upsert): on PostgreSQL copied (COPY)
        into a temporary table, then merged by one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per table; on
        SQLite through one upsert statement's executemany. Adapters give deal statuses of DealStatus only; any
        other word is refused (connector.store.schema.DEAL_STATUS), never stored as another."""
        pid = self.portal_id
        with self.engine.begin() as conn:
            customer_rows = [self._customer_row(conn, pid, c) for c in pull.customers]
            upserted_c = stage_upsert(conn, customers, CUSTOMER_COLUMNS, customer_rows)
            upserted_d = stage_upsert(conn, deals, DEAL_COLUMNS, [self._deal_row(pid, d) for d in pull.deals])
            del customer_rows
            deleted_c = set(pull.deleted_customer_ids)
            deleted_d = set(pull.deleted_deal_ids)
            if pull.snapshot:
                present_c = {(c.entity, c.id) for c in pull.customers} | set(pull.kept_customer_ids)
                stored_c = conn.execute(
                    sa.select(customers.c.entity, customers.c.id).where(customers.c.portal_id == pid)
                ).all()
                deleted_c |= {(e, i) for e, i in stored_c if (e, i) not in present_c}
                present_d = {d.id for d in pull.deals} | set(pull.kept_deal_ids)
                stored_d = conn.execute(sa.select(deals.c.id).where(deals.c.portal_id == pid)).scalars()
                deleted_d |= {i for i in stored_d if i not in present_d}
            for entity in ("contact", "company"):
                ids = sorted(i for e, i in deleted_c if e == entity)
                # A CRM unbinds a deleted contact/company from its deals without touching the deal's
                # modification date, so an incremental pull never sees that change: mirror it here.
                reported = {i for e, i in pull.deleted_customer_ids if e == entity}
                link = deals.c.contact_id if entity == "contact" else deals.c.company_id
                for part in chunks(ids, 500):
                    conn.execute(
                        sa.delete(customers).where(
                            customers.c.portal_id == pid, customers.c.entity == entity, customers.c.id.in_(part)
                        )
                    )
                    unbind = [i for i in part if i in reported]
                    if unbind:
                        conn.execute(
                            sa.update(deals).where(deals.c.portal_id == pid, link.in_(unbind)).values({link.name: None})
                        )
            for part in chunks(sorted(deleted_d), 500):
                conn.execute(sa.delete(deals).where(deals.c.portal_id == pid, deals.c.id.in_(part)))
                conn.execute(sa.delete(product_rows).where(product_rows.c.portal_id == pid,
                                                           product_rows.c.deal_id.in_(part)))
            rows_written = self._apply_products(conn, pid, pull, deleted_d)
            cursor_values = dict(pull.cursors)
            if pull.product_rows is not None:
                cursor_values[PRODUCTS_CURSOR] = now().isoformat(timespec="seconds")
            save_cursors(conn, self.portal, cursor_values)
        out = {
            "customers_upserted": upserted_c,
            "deals_upserted": upserted_d,
            "customers_deleted": len(deleted_c),
            "deals_deleted": len(deleted_d),
        }
        if pull.product_rows is not None:
            out["product_rows_written"] = rows_written
        return out

    def _apply_products(self, conn: Any, pid: int, pull: PullResult, deleted_deals: set[int]) -> int:
        """Replace the rows of the deals the pull read products for; rows of deals gone are gone."""
        if pull.product_rows is None:
            return 0
        replaced = sorted(set(pull.product_deals) - deleted_deals)
        for part in chunks(replaced, 500):
            conn.execute(sa.delete(product_rows).where(product_rows.c.portal_id == pid,
                                                       product_rows.c.deal_id.in_(part)))
        keep = set(replaced)
        rows: dict[tuple[int, int], tuple] = {}
        kinds: dict[int, tuple] = {}
        keys: dict[tuple, int] = {}
        for r in pull.product_rows:
            if r.deal_id in keep:
                what = (r.product_id, r.product_name, r.section, r.sku)
                key = keys.get(what)
                if key is None:
                    key = keys[what] = product_key(r)
                    kinds[key] = (pid, key, r.product_id, r.product_name, r.section, r.sku)
                rows[(r.deal_id, r.line)] = (pid, r.deal_id, r.line, key, r.quantity, r.price)
        stage_upsert(conn, products, ("portal_id", "key", "product_id", "product_name", "section", "sku"),
                     list(kinds.values()))
        insert_tuples(conn, product_rows, ("portal_id", "deal_id", "line", "product_key", "quantity", "price"),
                      sorted(rows.values()))
        if pull.snapshot:  # rows of deals no longer in the mirror (a snapshot deleted them above)
            conn.execute(sa.delete(product_rows).where(
                product_rows.c.portal_id == pid,
                ~product_rows.c.deal_id.in_(sa.select(deals.c.id).where(deals.c.portal_id == pid))))
        return len(rows)

    def products_pulled(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(cursors.c.value).where(
                cursors.c.portal == self.portal, cursors.c.name == PRODUCTS_CURSOR)).first() is not None

    def won_deal_ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(deals.c.id).where(
                deals.c.portal_id == self.portal_id, deals.c.status == "won")).scalars())

    @staticmethod
    def _customer_row(conn: Any, pid: int, c: Customer) -> tuple:
        return (pid, c.entity, c.id, c.name, c.phone, c.email,
                None if c.birthday is None else date_param(conn, c.birthday), c.responsible_id, c.created_ts,
                json.dumps(c.fields, ensure_ascii=False) if c.fields else None)

    @staticmethod
    def _deal_row(pid: int, d: Deal) -> tuple:
        return (pid, d.id, d.contact_id, d.company_id, DEAL_STATUS.code(d.status), d.amount, d.currency,
                d.created_ts, d.closed_ts)

    def insert_bulk(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Plain inserts (no conflict handling), for seeding an empty mirror quickly; a ``portal`` key in the
        rows is replaced by this portal's ``portal_id``."""
        pid = self.portal_id
        with self.engine.begin() as conn:
            for part in chunks(rows, 50_000):
                values = [{**{k: v for k, v in r.items() if k != "portal"}, "portal_id": pid} for r in part]
                conn.execute(sa.insert(table), values)

    def update_customer_fields(self, entity: Entity, values: dict[int, dict[str, str]]) -> None:
        """Merge custom-field values into mirrored customers (after a successful write-back).

        Set-based: one ``UPDATE ... FROM (VALUES ...)`` per field name and chunk of customers, merging the
        value into the stored JSON in the database (SQLite ``json_set``, PostgreSQL ``jsonb ||``), instead of
        reading every card and updating it row by row."""
        if not values:
            return
        by_key: dict[str, list[tuple[int, str]]] = {}
        for cid, fields in values.items():
            for key, value in fields.items():
                by_key.setdefault(key, []).append((int(cid), value))
        pid = self.portal_id
        with self.engine.begin() as conn:
            sqlite = conn.dialect.name == "sqlite"
            for key, rows in by_key.items():
                for part in chunks(sorted(rows), 5_000):
                    params: list[Any] = [pid, entity]
                    if sqlite:
                        params.insert(0, '$."' + key.replace('"', '""') + '"')
                        sql = ("UPDATE customers SET fields = json_set(coalesce(customers.fields, '{}'), ?, v.value) "
                               "FROM (SELECT column1 AS id, column2 AS value FROM (VALUES "
                               + ", ".join(["(?, ?)"] * len(part)) + ")) AS v "
                               "WHERE customers.portal_id = ? AND customers.entity = ? AND customers.id = v.id")
                        flat = [x for row in part for x in row]
                        conn.exec_driver_sql(sql, (params[0], *flat, *params[1:]))
                    else:
                        sql = ("UPDATE customers SET fields = (coalesce(customers.fields, '{}')::jsonb "
                               "|| jsonb_build_object(%s::text, v.value))::text FROM (VALUES "
                               + ", ".join(["(%s::bigint, %s::text)"] * len(part)) + ") AS v(id, value) "
                               "WHERE customers.portal_id = %s AND customers.entity = %s AND customers.id = v.id")
                        flat = [x for row in part for x in row]
                        conn.exec_driver_sql(sql, (key, *flat, *params))

    def customer_cards(self, entity: Entity, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Name, phone, e-mail, responsible, birthday and custom fields of these customers."""
        out: dict[int, dict[str, Any]] = {}
        cols = (customers.c.id, customers.c.name, customers.c.phone, customers.c.email, customers.c.responsible_id,
                customers.c.birthday, customers.c.fields)
        with self.engine.connect() as conn:
            for part in chunks(sorted(set(ids)), 500):
                rows = conn.execute(sa.select(*cols).where(
                    customers.c.portal_id == self.portal_id, customers.c.entity == entity, customers.c.id.in_(list(part))))
                for r in rows.mappings():
                    row = dict(r)
                    row["fields"] = json.loads(row["fields"]) if row["fields"] else {}
                    out[int(row["id"])] = row
        return out

    def customer_ids(self, entity: Entity) -> set[int]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(customers.c.id).where(customers.c.portal_id == self.portal_id, customers.c.entity == entity)
                ).scalars()
            )

    def deal_ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(deals.c.id).where(deals.c.portal_id == self.portal_id)).scalars())
