"""Product rows of deals in the mirror and the products they name (issue 17), for product rules and cycles.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

from connector.store.schema import product_rows, products

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    products.create(op.get_bind(), checkfirst=True)
    product_rows.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
