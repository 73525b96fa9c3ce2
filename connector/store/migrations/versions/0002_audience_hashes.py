"""What each ad cabinet holds, per hash (legacy version 7): the table, filled from the per-customer rows of
stores written before, every hash ``adding`` (unconfirmed) so the next run re-sends what members need.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from connector.store.legacy import audience_hashes_from_members

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    audience_hashes_from_members(op.get_bind())


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
