"""The portal registry: one row per portal of a many-portal deployment (connector/registry.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

from connector.store.schema import portals

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    portals.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
