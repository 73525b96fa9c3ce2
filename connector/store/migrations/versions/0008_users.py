"""The CRM's users (names for plan and the dashboard) and each campaign's state (approval, existing members
acted on), defined in connector/store/campaign_state.py.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from connector.store.campaign_state import TABLES
    from connector.store.schema import metadata

    metadata.create_all(op.get_bind(), tables=list(TABLES))


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
