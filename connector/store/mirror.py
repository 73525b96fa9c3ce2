"""The mirror: the CRM's customers and deals as the last pull left them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from adapters.base import Customer, Deal, Entity, PullResult
from connector.store.base import Part, chunks, upsert
from connector.store.schema import customers, deals
from connector.store.tokens import save_cursors


class Mirror(Part):
    """Writes of pulls into the mirror, and small reads of it (bulk reads: connector.store.frames)."""

    def apply_pull(self, pull: PullResult) -> dict[str, int]:
        """Write one pull into the mirror in a single transaction; return what changed."""
        with self.engine.begin() as conn:
            upserted_c = upsert(conn, customers, [self._customer_row(c) for c in pull.customers])
            upserted_d = upsert(conn, deals, [self._deal_row(d) for d in pull.deals])
            deleted_c = set(pull.deleted_customer_ids)
            deleted_d = set(pull.deleted_deal_ids)
            if pull.snapshot:
                present_c = {(c.entity, c.id) for c in pull.customers} | set(pull.kept_customer_ids)
                stored_c = conn.execute(
                    sa.select(customers.c.entity, customers.c.id).where(customers.c.portal == self.portal)
                ).all()
                deleted_c |= {(e, i) for e, i in stored_c if (e, i) not in present_c}
                present_d = {d.id for d in pull.deals} | set(pull.kept_deal_ids)
                stored_d = conn.execute(sa.select(deals.c.id).where(deals.c.portal == self.portal)).scalars()
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
                            customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id.in_(part)
                        )
                    )
                    unbind = [i for i in part if i in reported]
                    if unbind:
                        conn.execute(
                            sa.update(deals).where(deals.c.portal == self.portal, link.in_(unbind)).values({link.name: None})
                        )
            for part in chunks(sorted(deleted_d), 500):
                conn.execute(sa.delete(deals).where(deals.c.portal == self.portal, deals.c.id.in_(part)))
            save_cursors(conn, self.portal, dict(pull.cursors))
        return {
            "customers_upserted": upserted_c,
            "deals_upserted": upserted_d,
            "customers_deleted": len(deleted_c),
            "deals_deleted": len(deleted_d),
        }

    def _customer_row(self, c: Customer) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "entity": c.entity,
            "id": c.id,
            "name": c.name,
            "phone": c.phone,
            "email": c.email,
            "birthday": c.birthday,
            "responsible_id": c.responsible_id,
            "created_ts": c.created_ts,
            "fields": json.dumps(c.fields, ensure_ascii=False) if c.fields else None,
        }

    def _deal_row(self, d: Deal) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "id": d.id,
            "contact_id": d.contact_id,
            "company_id": d.company_id,
            "status": d.status,
            "amount": d.amount,
            "currency": d.currency,
            "created_ts": d.created_ts,
            "closed_ts": d.closed_ts,
        }

    def insert_bulk(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Plain inserts (no conflict handling), for seeding an empty mirror quickly."""
        with self.engine.begin() as conn:
            for part in chunks(rows, 50_000):
                conn.execute(sa.insert(table), list(part))

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
        with self.engine.begin() as conn:
            sqlite = conn.dialect.name == "sqlite"
            for key, rows in by_key.items():
                for part in chunks(sorted(rows), 5_000):
                    params: list[Any] = [self.portal, entity]
                    if sqlite:
                        params.insert(0, '$."' + key.replace('"', '""') + '"')
                        sql = ("UPDATE customers SET fields = json_set(coalesce(customers.fields, '{}'), ?, v.value) "
                               "FROM (SELECT column1 AS id, column2 AS value FROM (VALUES "
                               + ", ".join(["(?, ?)"] * len(part)) + ")) AS v "
                               "WHERE customers.portal = ? AND customers.entity = ? AND customers.id = v.id")
                        flat = [x for row in part for x in row]
                        conn.exec_driver_sql(sql, (params[0], *flat, *params[1:]))
                    else:
                        sql = ("UPDATE customers SET fields = (coalesce(customers.fields, '{}')::jsonb "
                               "|| jsonb_build_object(%s::text, v.value))::text FROM (VALUES "
                               + ", ".join(["(%s::bigint, %s::text)"] * len(part)) + ") AS v(id, value) "
                               "WHERE customers.portal = %s AND customers.entity = %s AND customers.id = v.id")
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
                    customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id.in_(list(part))))
                for r in rows.mappings():
                    row = dict(r)
                    row["fields"] = json.loads(row["fields"]) if row["fields"] else {}
                    out[int(row["id"])] = row
        return out

    def customer_ids(self, entity: Entity) -> set[int]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(customers.c.id).where(customers.c.portal == self.portal, customers.c.entity == entity)
                ).scalars()
            )

    def deal_ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(deals.c.id).where(deals.c.portal == self.portal)).scalars())
