"""The state store's tables, all on one :data:`metadata` (the schema Alembic's newest revision builds).

Every table is keyed by the portal (``[crm] name``) so one database can serve many CRM accounts. The big
tables (the mirror, segments, membership and its events: revision 0009) key it by ``portal_id``, the portal's
integer id in ``portal_keys`` (connector.store.base.portal_id resolves and caches it), name segments by their
integer id, and store dates as day numbers and short words as small codes (connector.store.types); on SQLite
they are WITHOUT ROWID tables, so the primary key is the table and no second copy of it is kept. The small
tables keep the portal's name as text. A change here needs a new revision in
``connector/store/migrations/versions`` that brings existing stores to it.
"""

from __future__ import annotations

import sqlalchemy as sa

from connector.store.types import Coded, Day

metadata = sa.MetaData()

DEAL_STATUS = Coded(("open", "won", "lost"))
EVENT = Coded(("exit", "enter"))
COMPACT = {"sqlite_with_rowid": False}  # SQLite: the table is its primary key's b-tree

# One row per portal name ever stored; ids are never reused (a purged portal keeps its row).
portal_keys = sa.Table(
    "portal_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
)

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
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
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("entity", sa.String(16), primary_key=True),  # contact | company
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("birthday", sa.Date),
    sa.Column("responsible_id", sa.String(64)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("fields", sa.Text),  # JSON object of custom fields by their source name
    **COMPACT,
)

deals = sa.Table(
    "deals",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("contact_id", sa.BigInteger),
    sa.Column("company_id", sa.BigInteger),
    sa.Column("status", DEAL_STATUS, nullable=False),  # won | lost | open
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("currency", sa.String(8)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("closed_ts", sa.BigInteger),
    **COMPACT,
)

# Product rows keep only numbers (millions of them are read for every computation); what a product is (id,
# name, section, SKU) is stored once in ``products`` under ``key``, a hash of those four values.
product_rows = sa.Table(
    "product_rows",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("deal_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("line", sa.BigInteger, primary_key=True, autoincrement=False),  # the CRM's row id or position
    sa.Column("product_key", sa.BigInteger, nullable=False),  # products.key
    sa.Column("quantity", sa.Float, nullable=False),
    sa.Column("price", sa.Float),  # unit price after discounts (amoCRM: the catalogue price)
    **COMPACT,
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.String(64)),  # the catalogue's id as text; None: a free-text line
    sa.Column("product_name", sa.Text),
    sa.Column("section", sa.Text),
    sa.Column("sku", sa.String(128)),
)

# A segment's ``id`` is numbered within its portal (1, 2, ...), so a portal's rows move between stores as
# they are (connector.portal_import) with only ``portal_id`` changed.
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("static", sa.Boolean, nullable=False),
    sa.Column("definition", sa.Text),
    sa.Column("frozen_run", sa.Integer),  # static segments: the run that froze them
    sa.UniqueConstraint("portal_id", "name", name="uq_segments_portal_name"),
)

membership = sa.Table(
    "membership",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("segment_id", sa.Integer, primary_key=True, autoincrement=False),  # segments.id
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entered_on", Day, nullable=False),
    sa.Column("entered_run", sa.Integer, nullable=False),
    **COMPACT,
)

# A run records at most one event per segment and customer; the key is also the (portal, run) index.
membership_events = sa.Table(
    "membership_events",
    metadata,
    sa.Column("portal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("segment_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event", EVENT, nullable=False),  # enter | exit
    sa.Column("on_date", Day, nullable=False),
    **COMPACT,
)


cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("access_token", sa.Text),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

actions = sa.Table(
    "actions",
    metadata,
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
    metadata,
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
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("identifiers", sa.Text, nullable=False),  # JSON {"email": hash, "phone": hash}: hashes only
    # in: the cabinet has these identifiers; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

audience_hashes = sa.Table(
    "audience_hashes",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),    # email | phone
    sa.Column("hash", sa.String(64), primary_key=True),   # as the cabinet takes it (SHA-256 / MD5 hex)
    # in: the cabinet holds this hash; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

locks = sa.Table(
    "locks",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),  # host:pid:random of the sync holding it
    sa.Column("expires_at", sa.Float, nullable=False),    # epoch seconds; a crashed holder's lock lapses
    sa.Column("locked_since", sa.Float),                   # epoch seconds the holder took it (migration 6)
)

model_fits = sa.Table(
    "model_fits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal", sa.String(128), nullable=False),
    sa.Column("run_id", sa.Integer),  # the sync run that fitted it (None: fitted from the command line)
    sa.Column("model", sa.String(16), nullable=False),  # mbgnbd | bgnbd | pareto
    sa.Column("fitted_on", sa.Date, nullable=False),  # the as-of date of the data it was fitted on
    sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("usable", sa.Boolean, nullable=False),
    sa.Column("loglik", sa.Float),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: parameters, convergence, spend fit, reason
    sa.Index("ix_model_fits_portal", "portal", "id"),
)

# The portal registry (connector/registry.py, revision 0005): one row per portal a many-portal deployment
# serves. ``config`` is the portal's TOML, Fernet-encrypted ("fernet:..." when a secret key is configured).
portals = sa.Table(
    "portals",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active | paused | failing | uninstalled
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("base_dir", sa.Text),  # relative paths in the config (crm.path, ca_file) resolve against it
    sa.Column("failures", sa.Integer, nullable=False, default=0),  # failed syncs in a row
    sa.Column("last_error", sa.Text),
    sa.Column("last_run_at", sa.DateTime(timezone=True)),
    sa.Column("next_run_at", sa.DateTime(timezone=True)),
    sa.Column("removed", sa.Boolean, nullable=False, default=False),  # `portals remove`: hidden, data kept
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

mirror_state = sa.Table(
    "mirror_state",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    # set by triggers on every insert, update or delete of the portal's customers or deals (revision 0006);
    # cleared with a new token when connector.store.columnar rebuilds its copy
    sa.Column("dirty", sa.Boolean, nullable=False),
    sa.Column("token", sa.String(64), nullable=False),  # names the columnar copy that matches the mirror
)
