"""Campaign state and the CRM's users (Alembic revision 0008).

* ``campaign_state``: per portal and campaign, the run that first planned for it, when (and by whom) its
  actions were approved, and the run that acted once on the members already in its segment
  (``include_current_members``). A campaign without an approval keeps its actions ``waiting``.
* ``crm_users``: the CRM's users (id, name, active), pulled with ``user.get`` / ``/api/v4/users`` so that
  ``plan`` and the dashboard name the reps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector.store.base import Part, now, upsert, write_lock
from connector.store.schema import actions, metadata

campaign_state = sa.Table(
    "campaign_state",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("campaign", sa.String(64), primary_key=True),
    sa.Column("first_run", sa.Integer, nullable=False),
    sa.Column("approved_at", sa.DateTime(timezone=True)),
    sa.Column("approved_by", sa.String(32)),  # "command" | "config" (auto_approve)
    sa.Column("included_run", sa.Integer),  # the run that acted on the members already in the segment
)

crm_users = sa.Table(
    "crm_users",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

TABLES = (campaign_state, crm_users)


@dataclass(frozen=True)
class CampaignState:
    campaign: str
    first_run: int
    approved_at: datetime | None
    approved_by: str | None
    included_run: int | None

    @property
    def approved(self) -> bool:
        return self.approved_at is not None


def save_campaign_states(conn: Connection, portal: str, run_id: int, states: Sequence[dict[str, Any]]) -> None:
    """Inside the caller's transaction (the membership change): a campaign seen for the first time gets its
    row; ``approve`` (auto_approve) and ``included`` (existing members acted on) are recorded once."""
    if not states:
        return
    have = {r.campaign: r for r in conn.execute(sa.select(campaign_state).where(campaign_state.c.portal == portal)).all()}
    stamp = now()
    for s in states:
        row = have.get(s["campaign"])
        if row is None:
            conn.execute(sa.insert(campaign_state).values(
                portal=portal, campaign=s["campaign"], first_run=run_id,
                approved_at=stamp if s.get("approve") else None, approved_by="config" if s.get("approve") else None,
                included_run=run_id if s.get("included") else None))
            continue
        values: dict[str, Any] = {}
        if s.get("approve") and row.approved_at is None:
            values.update(approved_at=stamp, approved_by="config")
        if s.get("included") and row.included_run is None:
            values["included_run"] = run_id
        if values:
            conn.execute(sa.update(campaign_state).where(campaign_state.c.portal == portal,
                                                         campaign_state.c.campaign == s["campaign"]).values(values))


class Campaigns(Part):
    """This portal's campaign states and CRM users."""

    def campaign_states(self) -> dict[str, CampaignState]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(campaign_state).where(campaign_state.c.portal == self.portal)).mappings().all()
        return {r["campaign"]: CampaignState(r["campaign"], r["first_run"], r["approved_at"], r["approved_by"],
                                             r["included_run"]) for r in rows}

    def approve_campaign(self, name: str) -> int:
        """Approve ``name``: its waiting actions become planned (the next sync sends them) and its later
        batches are planned directly. Returns how many waiting actions were released."""
        with self.engine.begin() as conn:
            write_lock(conn)
            row = conn.execute(sa.select(campaign_state).where(campaign_state.c.portal == self.portal,
                                                               campaign_state.c.campaign == name)).first()
            if row is None:
                conn.execute(sa.insert(campaign_state).values(portal=self.portal, campaign=name, first_run=0,
                                                              approved_at=now(), approved_by="command"))
            elif row.approved_at is None:
                conn.execute(sa.update(campaign_state).where(campaign_state.c.portal == self.portal,
                                                             campaign_state.c.campaign == name)
                             .values(approved_at=now(), approved_by="command"))
            released = conn.execute(sa.update(actions).where(
                actions.c.portal == self.portal, actions.c.campaign == name, actions.c.status == "waiting",
            ).values(status="planned", updated_at=now()))
            return int(released.rowcount or 0)

    def save_users(self, users: Sequence[tuple[int, str | None, bool]]) -> None:
        """Replace the stored CRM users with ``(id, name, active)`` rows."""
        stamp = now()
        with self.engine.begin() as conn:
            write_lock(conn)
            conn.execute(sa.delete(crm_users).where(crm_users.c.portal == self.portal))
            if users:
                upsert(conn, crm_users, [{"portal": self.portal, "id": int(i), "name": name, "active": bool(active),
                                          "updated_at": stamp} for i, name, active in users])

    def users_updated_at(self) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(crm_users.c.updated_at)).where(crm_users.c.portal == self.portal)).scalar()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            from datetime import timezone

            value = value.replace(tzinfo=timezone.utc)
        return value

    def user_names(self) -> dict[int, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(crm_users.c.id, crm_users.c.name).where(crm_users.c.portal == self.portal)).all()
        return {int(i): n for i, n in rows if n}
