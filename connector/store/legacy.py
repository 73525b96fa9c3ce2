"""The schema steps of the stores written before Alembic (``meta.schema_version`` 1..7), frozen.

Until issue 12 a store recorded the number of steps applied in ``meta.schema_version``. Such a store is
recognised by that row and the absence of ``alembic_version``: :func:`bring_to_v6` applies the steps it
lacks up to version 6 (the schema of Alembic revision 0001), then the store is stamped with the matching
revision (:data:`REVISION_OF`) and upgraded like any other. The tables below are the schema of version 7 as
it was frozen; never change them: a later schema change is a new Alembic revision.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

frozen = sa.MetaData()

meta_table = sa.Table(
    "meta",
    frozen,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("as_of", sa.Date),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),  # running | ok | failed
    sa.Column("stats", sa.Text),  # JSON
    sa.Column("error", sa.Text),
)

customers = sa.Table(
    "customers",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("entity", sa.String(16), primary_key=True),  # contact | company
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("birthday", sa.Date),
    sa.Column("responsible_id", sa.String(64)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("fields", sa.Text),  # JSON object of custom fields by their source name
)

deals = sa.Table(
    "deals",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("contact_id", sa.BigInteger),
    sa.Column("company_id", sa.BigInteger),
    sa.Column("status", sa.String(8), nullable=False),  # won | lost | open
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("currency", sa.String(8)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("closed_ts", sa.BigInteger),
)

segments = sa.Table(
    "segments",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("static", sa.Boolean, nullable=False),
    sa.Column("definition", sa.Text),
    sa.Column("frozen_run", sa.Integer),  # static segments: the run that froze them
)

membership = sa.Table(
    "membership",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entered_on", sa.Date, nullable=False),
    sa.Column("entered_run", sa.Integer, nullable=False),
)

membership_events = sa.Table(
    "membership_events",
    frozen,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal", sa.String(128), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("segment", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(8), nullable=False),  # enter | exit
    sa.Column("on_date", sa.Date, nullable=False),
    sa.Index("ix_membership_events_portal_run", "portal", "run_id"),
)


cursors = sa.Table(
    "cursors",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("access_token", sa.Text),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

actions = sa.Table(
    "actions",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("campaign", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # call_task | todo | deal | deal_task
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("entry_date", sa.Date, nullable=False),
    sa.Column("event", sa.String(8), nullable=False),  # enter | exit
    sa.Column("responsible_id", sa.BigInteger),
    sa.Column("parent_key", sa.String(255)),
    sa.Column("payload", sa.Text, nullable=False),  # JSON: rendered title, description, deadline, ...
    # planned -> sending (intent recorded, the call may or may not have reached the CRM) -> done | failed;
    # skipped rows say why in skip_reason and never run.
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("skip_reason", sa.Text),
    sa.Column("result", sa.Text),  # JSON: {"id": crm id}
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("planned_run", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # the sync-lock holder that marked the row sending (migration 6): rows claimed by a holder other than
    # the current one are left by a run that died; rows it claimed are in flight
    sa.Column("claimed_by", sa.String(128)),
    sa.Index("ix_actions_portal_status", "portal", "status"),
    sa.Index("ix_actions_portal_customer", "portal", "customer_id"),
)

audiences_table = sa.Table(
    "audiences",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),  # cabinet:segment:name
    sa.Column("cabinet", sa.String(16), nullable=False),
    sa.Column("remote_id", sa.String(128)),  # the cabinet's id, once created
    sa.Column("status", sa.String(64)),      # the cabinet's processing status, last seen
    sa.Column("detail", sa.Text),            # JSON: last request id, counts, message
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

audience_members = sa.Table(
    "audience_members",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("identifiers", sa.Text, nullable=False),  # JSON {"email": hash, "phone": hash}: hashes only
    # in: the cabinet has these identifiers; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

audience_hashes = sa.Table(
    "audience_hashes",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),    # email | phone
    sa.Column("hash", sa.String(64), primary_key=True),   # as the cabinet takes it (SHA-256 / MD5 hex)
    # in: the cabinet holds this hash; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

locks = sa.Table(
    "locks",
    frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),  # host:pid:random of the sync holding it
    sa.Column("expires_at", sa.Float, nullable=False),    # epoch seconds; a crashed holder's lock lapses
    sa.Column("locked_since", sa.Float),                   # epoch seconds the holder took it (migration 6)
)


V1_TABLES = ("meta", "runs", "customers", "deals", "segments", "membership", "membership_events")


def _migration_1(conn: Connection) -> None:
    frozen.create_all(conn, tables=[frozen.tables[name] for name in V1_TABLES])


def _migration_2(conn: Connection) -> None:
    """Sync cursors and rotating OAuth tokens (Bitrix24 / amoCRM adapters)."""
    frozen.create_all(conn, tables=[cursors, oauth_tokens])


def _migration_3(conn: Connection) -> None:
    """The action ledger (campaigns)."""
    frozen.create_all(conn, tables=[actions])


def _migration_4(conn: Connection) -> None:
    """Ad-cabinet audiences and who the connector has put into each."""
    frozen.create_all(conn, tables=[audiences_table, audience_members])


def _migration_5(conn: Connection) -> None:
    """The sync lock: one sync per portal at a time, across processes and machines sharing the store."""
    frozen.create_all(conn, tables=[locks])


def _migration_6(conn: Connection) -> None:
    """When the holder took the sync lock (for "running since ..."), and which holder claimed each action
    it is sending (the executor settles only the rows of dead runs)."""
    for table, column in ((locks, locks.c.locked_since), (actions, actions.c.claimed_by)):
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        if column.name not in have:  # a store created at version 6 got it from the table definition
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def audience_hashes_from_members(conn: Connection) -> None:
    """Step 7 (Alembic revision 0002): what each cabinet holds, per hash (issue 11 item 3). Cabinets hold
    *sets* of hashes, so two customers sharing an e-mail or phone share one entry, and it may leave only
    when no member needs it any more.

    Repair of stores written before: the set is derived from the per-customer rows, every hash marked
    ``adding`` (unconfirmed). Hashes wrongly removed from a cabinet (one of two sharers left) are recorded as
    ``in`` for the other customer, so they cannot be trusted: the first run after the upgrade re-sends every
    hash its members need once (adds are idempotent in all four cabinets) and removes the ones nobody needs."""
    frozen.create_all(conn, tables=[audience_hashes])
    rows = conn.execute(sa.select(audience_members.c.portal, audience_members.c.audience,
                                  audience_members.c.identifiers)).all()
    have = set(conn.execute(sa.select(audience_hashes.c.portal, audience_hashes.c.audience, audience_hashes.c.kind,
                                      audience_hashes.c.hash)).all())
    seen = sorted({(r.portal, r.audience, kind, value) for r in rows
                   for kind, value in json.loads(r.identifiers).items() if value} - {tuple(h) for h in have})
    for start in range(0, len(seen), 5000):
        conn.execute(sa.insert(audience_hashes), [
            {"portal": p, "audience": a, "kind": k, "hash": h, "state": "adding"} for p, a, k, h in seen[start:start + 5000]])


STEPS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
                                             _migration_6]
V6_TABLES = [t for t in frozen.sorted_tables if t.name != "audience_hashes"]  # Alembic revision 0001
REVISION_OF = {6: "0001", 7: "0002", 8: "0003"}  # legacy version -> the Alembic revision with the same schema
LAST_LEGACY = 8


def bring_to_v6(conn: Connection, version: int) -> str:
    """Apply the legacy steps after ``version`` up to 6; return the revision to stamp (0001 or 0002)."""
    for step in STEPS[version:]:
        step(conn)
    return REVISION_OF[max(version, 6)]
