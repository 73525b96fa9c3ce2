"""Prediction model fits per portal: parameters and fit quality, refitted at most daily (legacy version 8).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from connector.store.schema import model_fits

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    model_fits.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
