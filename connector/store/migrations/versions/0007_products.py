"""Product rows of deals in the mirror and the products they name (issue 17), for product rules and cycles.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The tables as this revision made them, keyed by the portal's name (revision 0009 rebuilds them on portal_id).
frozen = sa.MetaData()
products = sa.Table(
    "products", frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.String(64)),
    sa.Column("product_name", sa.Text),
    sa.Column("section", sa.Text),
    sa.Column("sku", sa.String(128)),
)
product_rows = sa.Table(
    "product_rows", frozen,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("deal_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("line", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_key", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Float, nullable=False),
    sa.Column("price", sa.Float),
)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    products.create(op.get_bind(), checkfirst=True)
    product_rows.create(op.get_bind(), checkfirst=True)


def downgrade() -> None:  # pragma: no cover - a state store is never downgraded
    raise NotImplementedError("state store revisions are not downgraded")
