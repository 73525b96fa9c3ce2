"""Campaign actions in amoCRM: call tasks and sales-generator leads, looked up by marker.

* Call task: ``POST /api/v4/tasks`` (``task_type_id = 1``, call), bound to the contact, with a deadline
  (``complete_till``) and the responsible user; the marker ends the text (``[lc0123abcd4567]``).
  :meth:`find` lists the contact's tasks (``filter[entity_type]`` / ``filter[entity_id]``) and looks for it.
  amoCRM has no separate to-do: ``kind = "todo"`` is a call task too.
* Deal: ``POST /api/v4/leads`` in the configured pipeline and status, the contact linked as main, the
  responsible; the marker ends the lead's name (the one field ``query`` searches that every lead has), and
  :meth:`find` searches ``GET /api/v4/leads?query=<marker>``. Its call task is bound to the lead and
  carries the script.
* Up to 50 objects per POST with ``request_id`` = their place in the batch. A batch refused as a whole
  (validation errors) is retried one object at a time, so one bad action does not hold back the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from adapters.amocrm.channels import AmoChannels, is_channel
from adapters.amocrm.client import AmoClient, AmoHTTPError
from adapters.amocrm.settings import ENTITIES, AmoSettings
from adapters.amocrm.source import iter_list, make_client
from adapters.base import AdapterConfigError, CampaignSpec, TokenStore, check_users, marker, pick, round_robin_users

CALL = 1
SYSTEM_STATUSES = {142, 143}


class AmoActions:
    def __init__(self, settings: AmoSettings, store: TokenStore):
        self.kind = ENTITIES[settings.customer]
        self.plural = self.kind.plural
        self.client: AmoClient = make_client(settings, store)
        self.targets: dict[tuple[str, str | None], tuple[int, int]] = {}  # (pipeline, stage) -> (pipeline id, status id)
        self.channels = AmoChannels(self)  # Salesbot runs and stage moves (adapters/amocrm/channels.py)
        self.checkpoint: Any = lambda partial: None  # set by the executor: record a half-done step in the ledger

    @property
    def requests(self) -> int:
        return self.client.requests

    def close(self) -> None:
        self.client.close()

    # -- start-up checks -----------------------------------------------------------------------------

    def resolve(self, campaigns: Sequence[CampaignSpec]) -> None:
        self.channels.resolve(campaigns)
        deals = [(c, a) for c in campaigns for a in (*c.on_enter, *c.on_exit) if a.action == "deal"]
        if deals:
            body = self.client.get("/api/v4/leads/pipelines") or {}
            pipelines = (body.get("_embedded") or {}).get("pipelines") or []
            for campaign, action in deals:
                pipeline = pick(pipelines, action.pipeline, "id", "name")
                if pipeline is None:
                    names = ", ".join(f"{p.get('name')} (id {p.get('id')})" for p in pipelines)
                    raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: pipeline {action.pipeline!r} is not an "
                                             f"amoCRM pipeline; pipelines: {names}")
                statuses = [s for s in (pipeline.get("_embedded") or {}).get("statuses") or []
                            if int(s["id"]) not in SYSTEM_STATUSES and int(s.get("type") or 0) == 0]
                if action.stage:
                    status = pick(statuses, action.stage, "id", "name")
                    if status is None:
                        names = ", ".join(f"{s.get('name')} (id {s.get('id')})" for s in statuses)
                        raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: status {action.stage!r} is not a "
                                                 f"working status of pipeline {pipeline.get('name')!r}; statuses: {names}")
                else:
                    status = min(statuses, key=lambda s: int(s.get("sort") or 0))
                self.targets[(action.pipeline, action.stage)] = (int(pipeline["id"]), int(status["id"]))
        if round_robin_users(campaigns):
            users = {int(u["id"]) for page in iter_list(self.client, "/api/v4/users", "users", {}) for u in page}
            check_users(campaigns, users, "of this amoCRM account")

    # -- creating --------------------------------------------------------------------------------

    def create(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]
               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        own = [r for r in rows if is_channel(r)]
        done, errors = self.channels.create(own) if own else ({}, {})
        rows = [r for r in rows if not is_channel(r)]
        leads = [r for r in rows if r["action"] == "deal"]
        tasks = [r for r in rows if r["action"] != "deal"]
        for path, key, group in (("/api/v4/leads", "leads", leads), ("/api/v4/tasks", "tasks", tasks)):
            items = []
            for row in group:
                try:
                    items.append((row, self._item(row, parents)))
                except ValueError as exc:
                    errors[row["key"]] = str(exc)
            if items:
                self._post(path, key, items, done, errors)
        return done, errors

    def _post(self, path: str, key: str, items: list[tuple[dict[str, Any], dict[str, Any]]],
              done: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
        body = [{**item, "request_id": str(i)} for i, (_, item) in enumerate(items)]
        try:
            answer = self.client.post(path, body)
        except AmoHTTPError as exc:
            if exc.status in (400, 422) and len(items) > 1:
                for pair in items:  # find the one that spoiled the batch
                    self._post(path, key, [pair], done, errors)
                return
            if exc.status < 500:
                for row, _ in items:
                    errors[row["key"]] = str(exc)
                return
            raise
        created = ((answer or {}).get("_embedded") or {}).get(key) or []
        by_request = {str(c.get("request_id")): c for c in created if isinstance(c, dict)}
        for i, (row, _) in enumerate(items):
            item = by_request.get(str(i))
            if item is not None and item.get("id") is not None:
                done[row["key"]] = {"id": int(item["id"])}
            else:
                errors[row["key"]] = "amoCRM did not return this object"

    def _item(self, row: dict[str, Any], parents: dict[str, dict[str, Any]]) -> dict[str, Any]:
        p = row["payload"]
        tag = f"[{marker(row['key'])}]"
        till = int(datetime.fromisoformat(p["deadline"]).timestamp())
        responsible = int(row["responsible_id"]) if row["responsible_id"] is not None else None
        if row["action"] in ("call_task", "todo"):
            text = "\n".join(t for t in (p["title"], p.get("description") or "", tag) if t)
            return {"text": text, "complete_till": till, "entity_id": int(row["customer_id"]), "entity_type": self.plural,
                    "task_type_id": CALL, "responsible_user_id": responsible}
        if row["action"] == "deal":
            target = self.targets.get((p["pipeline"], p["stage"]))
            if target is None:
                raise ValueError(f"pipeline {p['pipeline']!r} / status {p['stage']!r} not resolved")
            embedded = self.kind.lead_link(int(row["customer_id"]))
            return {"name": f"{p['title']} {tag}", "pipeline_id": target[0], "status_id": target[1],
                    "responsible_user_id": responsible, "_embedded": embedded}
        if row["action"] == "deal_task":
            lead = parents.get(row["parent_key"] or "", {}).get("id")
            if lead is None:
                raise ValueError("its lead does not exist yet")
            text = "\n".join(t for t in (p["title"], p.get("description") or "", tag) if t)
            return {"text": text, "complete_till": till, "entity_id": int(lead), "entity_type": "leads",
                    "task_type_id": CALL, "responsible_user_id": responsible}
        raise ValueError(f"unknown action {row['action']!r}")

    # -- finding what an interrupted run created ---------------------------------------------------

    def find(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.channels.find([r for r in rows if is_channel(r)])
        for row in rows:
            tag = marker(row["key"])
            if is_channel(row):
                continue
            if row["action"] == "deal":
                for page in iter_list(self.client, "/api/v4/leads", "leads", {"query": tag}):
                    for lead in page:
                        if tag in str(lead.get("name") or ""):
                            found[row["key"]] = {"id": int(lead["id"])}
                continue
            if row["action"] == "deal_task":
                lead = parents.get(row["parent_key"] or "", {}).get("id")
                if lead is None:
                    continue
                entity_type, entity_id = "leads", int(lead)
            else:
                entity_type, entity_id = self.plural, int(row["customer_id"])
            params = {"filter[entity_type]": entity_type, "filter[entity_id][]": entity_id}
            for page in iter_list(self.client, "/api/v4/tasks", "tasks", params):
                for task in page:
                    if tag in str(task.get("text") or ""):
                        found[row["key"]] = {"id": int(task["id"])}
        return found

