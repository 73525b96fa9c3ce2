"""The columnar copy's marker: ``mirror_state`` and the triggers that flag a portal's mirror as changed on
every insert, update or delete of its customers or deals, whoever makes it (connector.store.columnar).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

from connector.store.columnar import create_triggers
from connector.store.schema import mirror_state

# The triggers as this revision made them, on customers and deals keyed by the portal's name (revision 0009
# rebuilds those tables keyed by portal_id and recreates the triggers of connector.store.columnar).
SQLITE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS {table}_mirror_{event} AFTER {event} ON {table}
WHEN NOT EXISTS (SELECT 1 FROM mirror_state WHERE portal = {row}.portal AND dirty = 1)
BEGIN
  INSERT INTO mirror_state (portal, dirty, token) VALUES ({row}.portal, 1, '')
  ON CONFLICT (portal) DO UPDATE SET dirty = 1;
END
"""

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION lifecycle_mirror_changed_{which}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO mirror_state (portal, dirty, token)
  SELECT DISTINCT portal, true, '' FROM changed_rows
  ON CONFLICT (portal) DO UPDATE SET dirty = true WHERE mirror_state.dirty = false;
  RETURN NULL;
END $$
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    mirror_state.create(bind, checkfirst=True)
    create_triggers(bind, sqlite_trigger=SQLITE_TRIGGER, pg_function=PG_FUNCTION)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
