"""Campaign actions in amoCRM: call tasks and sales-generator leads, looked up by marker.

* Call task: ``POST /api/v4/tasks`` (``task_type_id = 1``, call), bound to the contact, with a deadline
  (``complete_till``) and the responsible user; the marker ends the text (``[lc0123abcd4567]``).
  :meth:`find` lists the contact's tasks (``filter[entity_type]`` / ``filter[entity_id]``) and looks for it.
  amoCRM has no separate to-do: ``kind = "todo"`` is a call task too.
* Deal: ``POST /api/v4/leads`` in the configured pipeline and status, the contact linked as main, the
  responsible; the marker goes in a lead text field the connector creates before its first lead ("crm-lifecycle
  key", code CRM_LIFECYCLE_KEY, API-only), not in the name reps read; :meth:`find` searches
  ``GET /api/v4/leads?query=<marker>`` (which searches field values) and also finds the markers earlier
  versions put at the end of the name. Its call task is bound to the lead and
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
from adapters.amocrm.pipelines import Pipelines, statuses_of
from adapters.amocrm.pipelines import status as find_status
from adapters.amocrm.settings import ENTITIES, AmoSettings
from adapters.amocrm.source import iter_list, make_client
from adapters.base import CampaignSpec, TokenStore, check_users, marker, round_robin_users

CALL = 1
KEY_FIELD_NAME = "crm-lifecycle key"  # the leads' text field the connector creates for its markers
KEY_FIELD_CODE = "CRM_LIFECYCLE_KEY"
SYSTEM_STATUSES = {142, 143}


class AmoActions:
    def __init__(self, settings: AmoSettings, store: TokenStore):
        self.kind = ENTITIES[settings.customer]
        self.plural = self.kind.plural
        self.client: AmoClient = make_client(settings, store)
        self.targets: dict[tuple[str, str | None], tuple[int, int]] = {}  # (pipeline, stage) -> (pipeline id, status id)
        self.key_field: int | None = None  # the leads' custom field holding the marker (created on the first lead)
        self.pipelines = Pipelines(self.client)  # the lead pipelines, read once per start-up check (resolve)
        self.channels = AmoChannels(self)  # Salesbot runs and stage moves (adapters/amocrm/channels.py)
        self.checkpoint: Any = lambda partial: None  # set by the executor: record a half-done step in the ledger

    @property
    def requests(self) -> int:
        return self.client.requests

    # Salesbot runs (adapters/amocrm/channels.py): held back to a later run, outcome not known yet, checked
    @property
    def deferred(self) -> set[str]:
        return self.channels.deferred

    @property
    def undecided(self) -> set[str]:
        return self.channels.undecided

    def review(self, rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
        return self.channels.review(rows)

    def close(self) -> None:
        self.client.close()

    # -- start-up checks -----------------------------------------------------------------------------

    def resolve(self, campaigns: Sequence[CampaignSpec]) -> None:
        self.pipelines = Pipelines(self.client)  # read once for this check by every campaign that names one
        self.channels.resolve(campaigns)
        deals = [(c, a) for c in campaigns for a in (*c.on_enter, *c.on_exit) if a.action == "deal"]
        if deals:
            for campaign, action in deals:
                pipeline = self.pipelines.pipeline(campaign, action.pipeline)
                statuses = [s for s in statuses_of(pipeline)
                            if int(s["id"]) not in SYSTEM_STATUSES and int(s.get("type") or 0) == 0]
                if action.stage:
                    status = find_status(campaign, statuses, action.stage, f"status {action.stage!r} is not a working "
                                         f"status of pipeline {pipeline.get('name')!r}")
                else:
                    status = min(statuses, key=lambda s: int(s.get("sort") or 0))
                self.targets[(action.pipeline, action.stage)] = (int(pipeline["id"]), int(status["id"]))
        self._resolve_close(campaigns)
        if deals:
            self.key_field = self._find_key_field()
        if round_robin_users(campaigns):
            users = {int(u["id"]) for page in iter_list(self.client, "/api/v4/users", "users", {}) for u in page}
            check_users(campaigns, users, "of this amoCRM account")

    def users(self) -> list[tuple[int, str | None, bool]]:
        """The account's users as (id, name, active) (``GET /api/v4/users``): plan and the dashboard name reps."""
        return [(int(u["id"]), (str(u.get("name") or "").strip() or None),
                 bool((u.get("rights") or {}).get("is_active", True)))
                for page in iter_list(self.client, "/api/v4/users", "users", {}) for u in page]

    def _find_key_field(self) -> int | None:
        for page in iter_list(self.client, "/api/v4/leads/custom_fields", "custom_fields", {}):
            for field in page:
                if str(field.get("code") or "").upper() == KEY_FIELD_CODE or field.get("name") == KEY_FIELD_NAME:
                    return int(field["id"])
        return None

    def _key_field_id(self) -> int:
        """The leads' text field for markers, created (``POST /api/v4/leads/custom_fields``) before the first
        lead: a write, so never at start-up (``check``, ``plan`` and ``--dry-run`` write nothing)."""
        if self.key_field is None:
            self.key_field = self._find_key_field()
        if self.key_field is None:
            answer = self.client.post("/api/v4/leads/custom_fields", [
                {"name": KEY_FIELD_NAME, "type": "text", "code": KEY_FIELD_CODE, "is_api_only": True, "sort": 10000}],
                idempotent=False)
            created = ((answer or {}).get("_embedded") or {}).get("custom_fields") or []
            self.key_field = int(created[0]["id"]) if created else self._find_key_field()
            if self.key_field is None:
                raise ValueError("amoCRM did not create the lead field for crm-lifecycle's markers")
        return self.key_field

    def _resolve_close(self, campaigns: Sequence[CampaignSpec]) -> None:
        """``close_deal_stage``: a status (any, 142 won and 143 lost included) of each deal action's pipeline."""
        wanted = [(c, a) for c in campaigns if getattr(c, "close_deal_stage", None) and getattr(c, "close_on_exit", False)
                  for a in (*c.on_enter, *c.on_exit) if a.action == "deal"]
        if not wanted:
            return
        for campaign, action in wanted:
            pipeline = self.pipelines.find(action.pipeline)
            if pipeline is None:
                continue  # reported by the deal check above
            stage = campaign.close_deal_stage  # type: ignore[attr-defined]
            status = find_status(campaign, statuses_of(pipeline), stage,
                                 f"close_deal_stage {stage!r} is not a status of pipeline {pipeline.get('name')!r}")
            self.targets[(action.pipeline, campaign.close_deal_stage)] = (int(pipeline["id"]), int(status["id"]))  # type: ignore[attr-defined]

    # -- close_on_exit: complete a campaign's open task, move its open lead, with a comment ------------

    def close_objects(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Close what ``rows`` (close_task / close_deal) point at: ``PATCH /api/v4/tasks`` with
        ``is_completed`` and the comment as the task's result (one request: the comment cannot be added
        twice); for a lead, first a common note with the comment unless an earlier attempt left it there
        (``GET /api/v4/leads/notes``, compared by text), then ``PATCH /api/v4/leads`` to the close status, so
        a run that dies between the two finds the note and only moves the lead. A task already completed (by
        a rep) or a lead already won or lost is left alone and reported done with ``left`` saying so."""
        state = self._targets_state(rows)
        done: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        tasks, leads = [], []
        for row in rows:
            p = row["payload"]
            target = int(p["target"])
            now = state.get((row["action"], target))
            if now is None:
                done[row["key"]] = {"id": target, "left": "not found in the CRM"}
            elif now["closed"]:
                done[row["key"]] = {"id": target, "left": "already completed" if row["action"] == "close_task"
                                    else "already won or lost"}
            elif row["action"] == "close_task":
                tasks.append((row, {"id": target, "is_completed": True, "result": {"text": p["comment"]}}))
            else:
                goal = self.targets.get((p.get("pipeline"), p.get("stage")))
                if goal is None:
                    errors[row["key"]] = f"close_deal_stage {p.get('stage')!r} not resolved"
                    continue
                leads.append((row, {"id": target, "pipeline_id": goal[0], "status_id": goal[1]}))
        if leads:
            noted = self._noted([(int(r["payload"]["target"]), r["payload"]["comment"]) for r, _ in leads])
            notes = [{"entity_id": item["id"], "note_type": "common", "params": {"text": r["payload"]["comment"]}}
                     for r, item in leads if (item["id"], r["payload"]["comment"].strip()) not in noted]
            if notes:
                try:
                    self.client.post("/api/v4/leads/notes", notes)
                except AmoHTTPError as exc:
                    if exc.status >= 500:
                        raise
                    for row, _ in leads:
                        errors[row["key"]] = str(exc)
                    leads = []
        for path, group in (("/api/v4/tasks", tasks), ("/api/v4/leads", leads)):
            if not group:
                continue
            try:
                self.client.patch(path, [item for _, item in group])
            except AmoHTTPError as exc:
                if exc.status >= 500:
                    raise
                for row, _ in group:
                    errors[row["key"]] = str(exc)
                continue
            for row, item in group:
                done[row["key"]] = {"id": int(item["id"])}
        return done, errors

    def _noted(self, wanted: list[tuple[int, str]]) -> set[tuple[int, str]]:
        """Of these (lead id, comment), the ones whose lead already has a common note with that text."""
        ids = sorted({lead for lead, _ in wanted})
        have: set[tuple[int, str]] = set()
        for start in range(0, len(ids), 50):
            params = {"filter[entity_id][]": ids[start:start + 50], "filter[note_type]": "common"}
            for page in iter_list(self.client, "/api/v4/leads/notes", "notes", params):
                for note in page:
                    have.add((int(note["entity_id"]), str((note.get("params") or {}).get("text") or "").strip()))
        return {(lead, text.strip()) for lead, text in wanted} & have

    def find_closed(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The close rows whose task is completed or whose lead is won, lost or in the close status already."""
        state = self._targets_state(rows)
        found = {}
        for row in rows:
            p = row["payload"]
            now = state.get((row["action"], int(p["target"])))
            goal = self.targets.get((p.get("pipeline"), p.get("stage")))
            if now is not None and (now["closed"] or (goal is not None and now.get("status") == goal[1])):
                found[row["key"]] = {"id": int(p["target"])}
        return found

    def _targets_state(self, rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for action, path, key in (("close_task", "/api/v4/tasks", "tasks"), ("close_deal", "/api/v4/leads", "leads")):
            ids = sorted({int(r["payload"]["target"]) for r in rows if r["action"] == action})
            for start in range(0, len(ids), 50):
                for page in iter_list(self.client, path, key, {"filter[id][]": ids[start:start + 50]}):
                    for item in page:
                        if action == "close_task":
                            out[(action, int(item["id"]))] = {"closed": bool(item.get("is_completed"))}
                        else:
                            status = int(item.get("status_id") or 0)
                            out[(action, int(item["id"]))] = {"closed": status in SYSTEM_STATUSES, "status": status}
        return out

    def closed_tasks(self, items: Sequence[tuple[str, int]]) -> dict[str, set[int]]:
        """Of these (action, CRM id) tasks, the ids completed in amoCRM (``GET /api/v4/tasks`` filtered by id
        and ``is_completed``), by action: for the report."""
        out: dict[str, set[int]] = {}
        for action in sorted({a for a, _ in items}):
            ids = sorted({i for a, i in items if a == action})
            for start in range(0, len(ids), 50):
                params = {"filter[id][]": ids[start:start + 50], "filter[is_completed]": 1}
                out.setdefault(action, set()).update(
                    int(t["id"]) for page in iter_list(self.client, "/api/v4/tasks", "tasks", params) for t in page)
        return out

    # -- creating --------------------------------------------------------------------------------

    def create(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]
               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        own = [r for r in rows if is_channel(r)]
        self.channels.undecided, self.channels.deferred = set(), set()
        done, errors = self.channels.create(own) if own else ({}, {})
        rows = [r for r in rows if not is_channel(r)]
        leads = [r for r in rows if r["action"] == "deal"]
        tasks = [r for r in rows if r["action"] != "deal"]
        if leads:
            self._key_field_id()
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
            return {"name": p["title"], "pipeline_id": target[0], "status_id": target[1],
                    "responsible_user_id": responsible, "_embedded": embedded,
                    "custom_fields_values": [{"field_id": self._key_field_id(), "values": [{"value": marker(row["key"])}]}]}
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
                    for lead in page:  # the marker in the key field; earlier versions: at the end of the name
                        values = [str(v.get("value")) for cf in lead.get("custom_fields_values") or []
                                  for v in cf.get("values") or []]
                        if tag in str(lead.get("name") or "") or tag in values:
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

