"""The dashboard's own tables, on :data:`connector.store.metadata` (created by Alembic revision 0004).

* ``dash_users``: accounts (argon2 hashes), role admin|viewer, the portals a viewer may see.
* ``dash_snapshots``: per sync, the sizes of every segment, customers, buyers and active buyers.
* ``dash_trend``: per portal and date, the same figures computed from the mirror (weekly points over the last
  year, filled in at sync time), for the KPI history and "change since the previous week".
* ``dash_cells``: per customer, the intervals during which it sat in one matrix cell or was a prospect
  (``valid_from`` inclusive, ``valid_to`` exclusive, open while current): the state on any date is one range
  scan, so flows between two dates are a join of two states.
* ``dash_members``: per customer, the member columns the pages list (written whole at each sync).
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from connector.store import metadata

users = sa.Table(
    "dash_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # admin | viewer
    sa.Column("portals", sa.Text, nullable=False),  # JSON list; admins see every portal
    sa.Column("language", sa.String(8)),  # ru | en | NULL (the [ui] language)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

snapshots = sa.Table(
    "dash_snapshots",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("buyers", sa.Integer, nullable=False),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),  # JSON segment -> size
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

trend = sa.Table(
    "dash_trend",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("on_date", sa.Date, primary_key=True),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("buyers", sa.Integer, nullable=False),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
)

# Days and cells are small integers so that a flows query scans a million customers' intervals in about two
# seconds: days count from 1970-01-01 (:func:`day_number`), cells are indexes into :data:`CELL_CODES`.
CELL_CODES = ("prospect", *(f"lifecycle.{r}_{c}" for r in ("new", "promising", "regular")
                            for c in ("active", "sleeping", "asleep")))
EPOCH = date(1970, 1, 1)


def day_number(day: date) -> int:
    return (day - EPOCH).days


cells = sa.Table(
    "dash_cells",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("valid_from", sa.Integer, primary_key=True, autoincrement=False),  # day number, inclusive
    sa.Column("valid_to", sa.Integer),  # day number, exclusive; NULL while current
    sa.Column("cell", sa.SmallInteger, nullable=False),  # index into CELL_CODES
    sa.Index("ix_dash_cells_portal_to", "portal", "valid_to"),
)

members = sa.Table(
    "dash_members",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("responsible_id", sa.String(64)),
    sa.Column("purchases", sa.Integer),
    sa.Column("last_purchase", sa.Date),
    sa.Column("monetary", sa.Float),
    sa.Column("days_to_birthday", sa.Integer),
    sa.Column("extra", sa.Text),  # JSON: custom fields used in rules, by their stable name
    sa.Column("features", sa.Text),  # JSON: every feature (the customer page)
)

TABLES = (users, snapshots, trend, cells, members)


def create(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=list(TABLES))
