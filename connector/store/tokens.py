"""Sync cursors and the rotating OAuth token pair of each portal."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector import crypto
from connector.store.base import Part, now, upsert
from connector.store.schema import cursors, oauth_tokens


def save_cursors(conn: Connection, portal: str, values: dict[str, str]) -> None:
    """Record cursors inside the caller's transaction (a pull commits its rows and cursors together)."""
    if values:
        upsert(conn, cursors, [{"portal": portal, "name": k, "value": v, "updated_at": now()} for k, v in values.items()])


class Tokens(Part):
    """Cursors and OAuth tokens of this portal."""

    def cursors(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cursors.c.name, cursors.c.value).where(cursors.c.portal == self.portal))
            return {name: value for name, value in rows}

    def save_cursors(self, values: dict[str, str]) -> None:
        """Record cursors in a transaction of their own (the write-back's state: connector.pipeline.write_tags)."""
        with self.engine.begin() as conn:
            save_cursors(conn, self.portal, values)

    def oauth_token(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.portal == self.portal)).mappings().first()
        if not row:
            return None
        # encrypted when a secret key is configured (connector/crypto.py); a wrong or missing key raises
        return {**row, "access_token": crypto.decrypt(row["access_token"]), "refresh_token": crypto.decrypt(row["refresh_token"])}

    def save_oauth_token(self, access_token: str | None, refresh_token: str, expires_at: int | None) -> None:
        """Persist a rotated token pair at once, in its own transaction: losing the new refresh token
        would lock the integration out."""
        with self.engine.begin() as conn:
            upsert(conn, oauth_tokens, [{"portal": self.portal, "access_token": crypto.encrypt(access_token),
                                         "refresh_token": crypto.encrypt(refresh_token),
                                         "expires_at": expires_at, "updated_at": now()}])
            if crypto.cipher() is not None:
                crypto.ensure_check(conn)
