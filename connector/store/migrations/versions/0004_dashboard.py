"""The dashboard's tables: accounts, per-sync snapshots, the KPI history, matrix-cell intervals and the member
columns (defined in connector/dashboard/schema.py).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from connector.dashboard import schema

    schema.create(op.get_bind())


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
