"""Baseline: the schema of legacy version 6 (runs, mirror, membership, cursors, tokens, ledger, audiences,
the sync lock with its start and the claim owner of each action).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from connector.store.legacy import V6_TABLES, frozen

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    frozen.create_all(op.get_bind(), tables=V6_TABLES)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
