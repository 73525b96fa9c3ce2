"""The sync lock: one sync per portal at a time, across processes and machines sharing the store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from connector.store.base import Part, SQLITE_IO, write_lock
from connector.store.schema import locks


class Locks(Part):
    """Take, renew, release and inspect this portal's sync lock."""

    def try_lock(self, holder: str, seconds: float, *, replace: str | None = None) -> bool:
        """Take this portal's sync lock for ``seconds`` (or extend it if ``holder`` has it); False if
        another holder has a lock that has not expired. ``replace``: a holder known to be dead, whose
        lock is taken over even before it expires."""
        import time as _time

        try:
            with SQLITE_IO, self.engine.begin() as conn:
                write_lock(conn)
                now = _time.time()
                row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at).where(locks.c.portal == self.portal)).first()
                if row is None:
                    conn.execute(sa.insert(locks).values(portal=self.portal, holder=holder, expires_at=now + seconds,
                                                         locked_since=now))
                    return True
                if row.holder != holder and row.expires_at > now and row.holder != replace:
                    return False
                values: dict[str, Any] = {"holder": holder, "expires_at": now + seconds}
                if row.holder != holder:
                    values["locked_since"] = now
                done = conn.execute(sa.update(locks).where(
                    locks.c.portal == self.portal, locks.c.holder == row.holder, locks.c.expires_at == row.expires_at
                ).values(values))
                return done.rowcount == 1
        except sa.exc.IntegrityError:
            return False  # another process inserted it first

    def renew_lock(self, holder: str, seconds: float) -> bool:
        """Extend ``holder``'s lock to ``seconds`` from now; False if the lock is no longer its own."""
        import time as _time

        with SQLITE_IO, self.engine.begin() as conn:
            done = conn.execute(sa.update(locks).where(locks.c.portal == self.portal, locks.c.holder == holder)
                                .values(expires_at=_time.time() + seconds))
            return done.rowcount == 1

    def release_lock(self, holder: str) -> None:
        with SQLITE_IO, self.engine.begin() as conn:
            conn.execute(sa.delete(locks).where(locks.c.portal == self.portal, locks.c.holder == holder))

    def lock_holder(self) -> tuple[str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at).where(locks.c.portal == self.portal)).first()
        return (row.holder, row.expires_at) if row else None

    def lock_info(self) -> dict[str, Any] | None:
        """holder, expires_at and locked_since (epoch seconds) of this portal's lock, if a row exists."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at, locks.c.locked_since)
                               .where(locks.c.portal == self.portal)).mappings().first()
        return dict(row) if row else None
