"""The columnar copy's marker: ``mirror_state`` and the triggers that flag a portal's mirror as changed on
every insert, update or delete of its customers or deals, whoever makes it (connector.store.columnar).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

from connector.store.columnar import create_triggers
from connector.store.schema import mirror_state

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    mirror_state.create(bind, checkfirst=True)
    create_triggers(bind)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
