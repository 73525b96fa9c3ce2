"""Alembic environment of the state store: used programmatically only (connector.store.migrate), on the
connection the caller opened and locked (``config.attributes["connection"]``), inside its transaction."""

from __future__ import annotations

from alembic import context

from connector.store.schema import metadata

if context.is_offline_mode():  # pragma: no cover - no SQL scripts: stores upgrade themselves when opened
    raise RuntimeError("the state store's migrations run online only (they open with the store)")

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
