"""The action ledger: every campaign action owed, its intent and outcome records, and the planner's history.

Statuses: ``planned`` -> ``sending`` (intent recorded: the call may or may not have reached the CRM) ->
``done`` | ``failed``; ``skipped`` rows say why in ``skip_reason`` and never run; ``waiting`` rows wait for
``lifecycle campaigns approve`` (then ``planned``); ``holdout`` rows record a holdout member (no action).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector.store.base import Part, chunks, now, write_lock
from connector.store.schema import actions, locks

Status = Literal["planned", "sending", "done", "failed", "skipped", "waiting", "holdout"]


@dataclass(frozen=True)
class LedgerRow:
    """One action of the ledger, as stored (``payload`` and ``result`` decoded from their JSON)."""

    portal: str
    key: str
    campaign: str
    action: str  # call_task | todo | deal | deal_task
    customer_id: int
    entry_date: date
    event: str  # enter | exit
    responsible_id: int | None
    parent_key: str | None
    payload: dict[str, Any]
    status: Status
    skip_reason: str | None
    result: dict[str, Any] | None
    attempts: int
    error: str | None
    planned_run: int
    updated_at: datetime
    claimed_by: str | None = None

    # Mapping-style reads for code not yet moved to attributes (the CRM sinks take rows as mappings).
    def __getitem__(self, name: str) -> Any:
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in _FIELDS else default

    def keys(self) -> list[str]:
        return list(_FIELDS)

    @classmethod
    def from_db(cls, row: Any) -> LedgerRow:
        values = {name: row[name] for name in _FIELDS}
        values["payload"] = json.loads(values["payload"])
        values["result"] = json.loads(values["result"]) if values["result"] else None
        if isinstance(values["entry_date"], str):
            values["entry_date"] = date.fromisoformat(values["entry_date"][:10])
        return cls(**values)


_FIELDS = tuple(f.name for f in fields(LedgerRow))


@dataclass
class LedgerHistory:
    """What the ledger already holds, as the planner needs it (non-skipped actions only)."""

    last_by_campaign: dict[tuple[str, int], date] = field(default_factory=dict)  # (campaign, customer) -> day
    touches: dict[int, list[date]] = field(default_factory=dict)  # customer -> days of actions
    per_rep_day: Counter = field(default_factory=Counter)  # (campaign, rep, day) -> actions
    per_campaign: Counter = field(default_factory=Counter)  # campaign -> actions ever (round-robin position)
    keys: set[str] = field(default_factory=set)

    @classmethod
    def from_summary(cls, summary: Sequence[tuple]) -> LedgerHistory:
        """Built from :meth:`Ledger.ledger_summary` rows: every key counts (a planned key is never planned
        again); skipped rows and a deal's call task count for nothing else."""
        history = cls()
        for key, campaign, cid, day, rep, status, action in summary:
            history.keys.add(key)
            if status in ("skipped", "holdout") or action in ("deal_task", "close_task", "close_deal"):
                continue
            day = date.fromisoformat(day[:10]) if isinstance(day, str) else day
            history.last_by_campaign[(campaign, cid)] = max(day, history.last_by_campaign.get((campaign, cid), day))
            history.touches.setdefault(cid, []).append(day)
            history.per_campaign[campaign] += 1
            if rep is not None:
                history.per_rep_day[(campaign, int(rep), day)] += 1
        return history


def insert_actions(conn: Connection, portal: str, run_id: int, planned: Sequence[Any]) -> None:
    """Add planned actions (connector.campaigns.PlannedAction) whose keys the ledger lacks, inside the
    caller's transaction (the membership change they come from)."""
    if not planned:
        return
    have = set()
    keys = [p.key for p in planned]
    for part in chunks(keys, 500):
        have |= set(conn.execute(sa.select(actions.c.key).where(actions.c.portal == portal, actions.c.key.in_(part))).scalars())
    stamp = now()
    rows = [
        {"portal": portal, "key": p.key, "campaign": p.campaign, "action": p.action, "customer_id": p.customer_id,
         "entry_date": p.entry_date, "event": p.event, "responsible_id": p.responsible_id, "parent_key": p.parent_key,
         "payload": json.dumps(p.payload, ensure_ascii=False),
         "status": getattr(p, "ledger_status", None) or ("skipped" if p.skip_reason else "planned"),
         "skip_reason": p.skip_reason, "result": None, "attempts": 0, "error": None, "planned_run": run_id,
         "updated_at": stamp}
        for p in planned if p.key not in have
    ]
    for part in chunks(rows, 5000):
        conn.execute(sa.insert(actions), list(part))


class Ledger(Part):
    """This portal's actions: reads, claims (intent) and outcomes."""

    def ledger(self, statuses: Sequence[str] | None = None, customer_ids: Sequence[int] | None = None) -> list[LedgerRow]:
        query = sa.select(actions).where(actions.c.portal == self.portal)
        if statuses is not None:
            query = query.where(actions.c.status.in_(list(statuses)))
        if customer_ids is not None:
            query = query.where(actions.c.customer_id.in_(list(customer_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(actions.c.planned_run, actions.c.key)).mappings().all()
        return [LedgerRow.from_db(r) for r in rows]

    def ledger_summary(self) -> list[tuple[str, str, int, date, int | None, str, str]]:
        """(key, campaign, customer, entry day, responsible, status, action) of every action: the planner's history."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(actions.c.key, actions.c.campaign, actions.c.customer_id, actions.c.entry_date,
                          actions.c.responsible_id, actions.c.status, actions.c.action).where(actions.c.portal == self.portal)
            ).all()]

    def history(self) -> LedgerHistory:
        """The planner's view of everything the ledger holds for this portal."""
        return LedgerHistory.from_summary(self.ledger_summary())

    def claim_actions(self, keys: Sequence[str], holder: str, *, fenced: bool = True) -> set[str]:
        """Mark the ``planned`` or ``failed`` actions among ``keys`` ``sending`` on behalf of ``holder``, in
        one committed transaction (the intent record); return the keys it claimed. A key another process
        claimed or settled meanwhile is not returned, so it is never sent twice. ``fenced``: claim only
        while ``holder`` holds this portal's sync lock (not expired)."""
        import time as _time

        if not keys:
            return set()
        claimed: set[str] = set()
        with self.engine.begin() as conn:
            write_lock(conn)
            fence = [sa.exists().where(locks.c.portal == self.portal, locks.c.holder == holder,
                                       locks.c.expires_at > _time.time())] if fenced else []
            for part in chunks(list(keys), 500):
                claimed |= set(conn.execute(sa.update(actions).where(
                    actions.c.portal == self.portal, actions.c.key.in_(list(part)),
                    actions.c.status.in_(["planned", "failed"]), *fence,
                ).values(status="sending", claimed_by=holder, updated_at=now()).returning(actions.c.key)).scalars())
        return claimed

    def action_counts(self) -> dict[str, int]:
        """Actions in the ledger by status (planned, sending, done, failed, skipped): for /metrics."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(actions.c.status, sa.func.count()).where(actions.c.portal == self.portal)
                                .group_by(actions.c.status)).all()
        return {status: int(n) for status, n in rows}

    def set_actions(self, keys: Sequence[str], status: str, *, results: dict[str, Any] | None = None,
                    errors: dict[str, str] | None = None, count_attempt: bool = False,
                    claimed_by: str | None = None, not_claimed_by: str | None = None) -> None:
        """Move actions to ``status`` in one committed transaction (the ledger's intent/outcome records).

        ``claimed_by``: only ``sending`` rows this holder claimed (a sync's outcomes); ``not_claimed_by``:
        only ``sending`` rows some other holder claimed (settling what a dead run left)."""
        if not keys:
            return
        stamp = now()
        guard = []
        if claimed_by is not None:
            guard += [actions.c.status == "sending", actions.c.claimed_by == claimed_by]
        if not_claimed_by is not None:
            guard += [actions.c.status == "sending", actions.c.claimed_by.is_distinct_from(not_claimed_by)]
        with self.engine.begin() as conn:
            for key in keys:
                values: dict[str, Any] = {"status": status, "updated_at": stamp}
                if results and key in results:
                    values["result"] = json.dumps(results[key])
                    values["error"] = None
                if errors and key in errors:
                    values["error"] = errors[key][:2000]
                if count_attempt:
                    values["attempts"] = actions.c.attempts + 1
                conn.execute(sa.update(actions).where(actions.c.portal == self.portal, actions.c.key == key, *guard)
                             .values(values))
