"""The columnar copy covers product rows and products (issue 20, item 3): the triggers that flag a portal's
mirror as changed (revision 0006) now fire on every insert, update or delete of its ``product_rows`` and
``products`` too, and every existing copy is marked stale so the next read writes the product files.

Revision ID: 0010_columnar_products
Revises: 0009_compact_store
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from connector.store.columnar import PRODUCT_TABLES, create_triggers
from connector.store.schema import mirror_state

revision = "0010_columnar_products"
down_revision = "0009_compact_store"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    create_triggers(bind, PRODUCT_TABLES)
    bind.execute(sa.update(mirror_state).values(dirty=True))


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
