"""Product rows of deals in the mirror and the products they name (issue 17), for product rules and cycles.

Revision ID: 0005_products
Revises: 0004
"""

from __future__ import annotations

from alembic import op

from connector.store.schema import product_rows, products

revision = "0005_products"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    products.create(op.get_bind(), checkfirst=True)
    product_rows.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
