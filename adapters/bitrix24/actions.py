"""Campaign actions in Bitrix24: call tasks, to-dos and sales-generator deals, looked up by marker.

* Call task: ``tasks.task.add`` (TITLE, DESCRIPTION, RESPONSIBLE_ID, DEADLINE, ``UF_CRM_TASK: ["C_7"]``),
  or with ``kind = "todo"`` ``crm.activity.todo.add`` on the contact. The action's marker ends the
  description (``[lc0123abcd4567]``); :meth:`find` lists the customer's tasks (``tasks.task.list`` filtered by
  ``UF_CRM_TASK``) or to-dos (``crm.activity.list`` by owner) and looks for it.
* Deal: ``crm.deal.add`` in the configured pipeline (CATEGORY_ID) and stage, the contact linked, the
  responsible, the script in COMMENTS, and the marker in ``ORIGINATOR_ID = "crm-lifecycle"`` /
  ``ORIGIN_ID = <action key>`` (the fields Bitrix24 keeps for records from an external system), found again
  with ``crm.deal.list`` filtered by both. Its call task is bound to the deal and the contact.
* Everything goes in ``batch`` requests of up to 50 commands; each command's result or error is its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from adapters.base import AdapterConfigError, CampaignSpec, TokenStore, check_users, marker, pick, round_robin_users
from adapters.bitrix24.channels import Bitrix24Channels, is_channel
from adapters.bitrix24.client import Bitrix24Client
from adapters.bitrix24.paging import php_query
from adapters.bitrix24.settings import ENTITIES, Bitrix24Settings
from adapters.bitrix24.source import make_client

ORIGINATOR = "crm-lifecycle"


class Bitrix24Actions:
    def __init__(self, settings: Bitrix24Settings, store: TokenStore):
        self.kind = ENTITIES[settings.customer]
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.client: Bitrix24Client = make_client(settings, store)
        self.loop.run_until_complete(self.client.__aenter__())
        self.targets: dict[tuple[str, str | None], tuple[int, str]] = {}  # (pipeline, stage) -> (category, stage id)
        self.channels = Bitrix24Channels(self)  # business processes and CRM e-mail (adapters/bitrix24/channels.py)
        self.deferred: set[str] = set()  # keys the last create held back for a later run

    @property
    def requests(self) -> int:
        return self.client.requests

    def close(self) -> None:
        self.loop.run_until_complete(self.client.__aexit__(None, None, None))
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # -- start-up checks -----------------------------------------------------------------------------

    def resolve(self, campaigns: Sequence[CampaignSpec]) -> None:
        self._run(self._resolve(campaigns, AdapterConfigError))

    async def _resolve(self, campaigns: Sequence[CampaignSpec], error: type[Exception]) -> None:
        await self.channels.resolve(campaigns, error)
        deals = [(c, a) for c in campaigns for a in (*c.on_enter, *c.on_exit) if a.action == "deal"]
        if deals:
            answer = await self.client.call("crm.category.list", {"entityTypeId": 2})
            categories = (answer.get("result") or {}).get("categories") or []
            for campaign, action in deals:
                category = pick(categories, action.pipeline, "id", "name")
                if category is None:
                    names = ", ".join(f"{c.get('name')} (id {c.get('id')})" for c in categories)
                    raise error(f"[[campaign]] {campaign.name!r}: pipeline {action.pipeline!r} is not a deal pipeline "
                                f"in Bitrix24; pipelines: {names}")
                cat_id = int(category["id"])
                entity_id = "DEAL_STAGE" if cat_id == 0 else f"DEAL_STAGE_{cat_id}"
                stages = (await self.client.call("crm.status.list", {"filter": {"ENTITY_ID": entity_id},
                                                                      "order": {"SORT": "ASC"}})).get("result") or []
                stages = [s for s in stages if s.get("SEMANTICS") in (None, "", "process")] or stages
                if action.stage:
                    stage = pick(stages, action.stage, "STATUS_ID", "NAME")
                    if stage is None:
                        names = ", ".join(f"{s.get('NAME')} ({s.get('STATUS_ID')})" for s in stages)
                        raise error(f"[[campaign]] {campaign.name!r}: stage {action.stage!r} is not a working stage of "
                                    f"pipeline {category.get('name')!r}; stages: {names}")
                else:
                    stage = min(stages, key=lambda s: int(s.get("SORT") or 0))
                self.targets[(action.pipeline, action.stage)] = (cat_id, str(stage["STATUS_ID"]))
        listed = round_robin_users(campaigns)
        if listed:
            answer = await self.client.call("user.get", {"filter": {"ID": sorted(listed)}})
            active = {int(u["ID"]) for u in answer.get("result") or [] if str(u.get("ACTIVE", True)).lower() not in ("false", "n")}
            check_users(campaigns, active, "of this Bitrix24 portal")

    # -- creating --------------------------------------------------------------------------------

    def create(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]
               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        own = [r for r in rows if is_channel(r)]
        self.deferred = set()
        done: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        if own:
            done, errors, self.deferred = self._run(self.channels.create(own))
        rest = [r for r in rows if not is_channel(r)]
        if rest:
            more, more_errors = self._create_objects(rest, parents)
            done, errors = {**done, **more}, {**errors, **more_errors}
        return done, errors

    def _create_objects(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]
                        ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        commands: dict[str, str] = {}
        by_cmd: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for i, row in enumerate(rows):
            try:
                method, params = self._command(row, parents)
            except ValueError as exc:
                errors[row["key"]] = str(exc)
                continue
            cmd = f"a{i}"
            commands[cmd] = f"{method}?{php_query(params)}"
            by_cmd[cmd] = row
        if not commands:
            return {}, errors
        # Never resent blindly: a failure whose outcome is unknown raises, and the executor looks the
        # batch's markers up before anything is sent again.
        results, cmd_errors = self._run(self.client.batch_once(commands))
        done: dict[str, dict[str, Any]] = {}
        for cmd, row in by_cmd.items():
            value = results.get(cmd)
            new_id = _new_id(row["action"], value)
            if new_id is not None and cmd not in cmd_errors:
                done[row["key"]] = {"id": new_id}
            else:
                err = cmd_errors.get(cmd) or {}
                errors[row["key"]] = (str(err.get("error_description") or err.get("error") or "no result")
                                      if isinstance(err, dict) else str(err))
        return done, errors

    def _command(self, row: dict[str, Any], parents: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        p = row["payload"]
        cid = int(row["customer_id"])
        owner = self.kind.binding(cid)
        tag = f"[{marker(row['key'])}]"
        deadline = p["deadline"][:19]
        if row["action"] == "call_task":
            return "tasks.task.add", {"fields": {
                "TITLE": p["title"], "DESCRIPTION": f"{p['description']}\n\n{tag}".strip(), "RESPONSIBLE_ID": row["responsible_id"],
                "DEADLINE": deadline, "UF_CRM_TASK": [owner]}}
        if row["action"] == "todo":
            return "crm.activity.todo.add", {
                "ownerTypeId": self.kind.owner_type_id, "ownerId": cid, "deadline": deadline,
                "title": p["title"], "description": f"{p['description']}\n\n{tag}".strip(), "responsibleId": row["responsible_id"]}
        if row["action"] == "deal":
            category, stage = self.targets.get((p["pipeline"], p["stage"]), (None, None))
            if category is None:
                raise ValueError(f"pipeline {p['pipeline']!r} / stage {p['stage']!r} not resolved")
            fields: dict[str, Any] = {
                "TITLE": p["title"], "CATEGORY_ID": category, "STAGE_ID": stage, "ASSIGNED_BY_ID": row["responsible_id"],
                "COMMENTS": p["script"], "ORIGINATOR_ID": ORIGINATOR, "ORIGIN_ID": row["key"],
                **self.kind.deal_link(cid),
            }
            return "crm.deal.add", {"fields": fields}
        if row["action"] == "deal_task":
            deal = parents.get(row["parent_key"] or "", {}).get("id")
            if deal is None:
                raise ValueError("its deal does not exist yet")
            return "tasks.task.add", {"fields": {
                "TITLE": p["title"], "DESCRIPTION": f"{p['description']}\n\n{tag}".strip(), "RESPONSIBLE_ID": row["responsible_id"],
                "DEADLINE": deadline, "UF_CRM_TASK": [f"D_{deal}", owner]}}
        raise ValueError(f"unknown action {row['action']!r}")

    # -- finding what an interrupted run created ---------------------------------------------------

    def find(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        own = [r for r in rows if is_channel(r)]
        found = self._run(self.channels.find(own)) if own else {}
        return {**found, **self._run(self._find([r for r in rows if not is_channel(r)], parents))}

    async def _find(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        deals = [r for r in rows if r["action"] == "deal"]
        if deals:
            answer = await self.client.call("crm.deal.list", {
                "filter": {"ORIGINATOR_ID": ORIGINATOR, "@ORIGIN_ID": [r["key"] for r in deals]},
                "select": ["ID", "ORIGIN_ID"], "start": -1})
            for item in answer.get("result") or []:
                found[str(item["ORIGIN_ID"])] = {"id": int(item["ID"])}
        for row in rows:
            if row["action"] in ("call_task", "deal_task"):
                if row["action"] == "deal_task":
                    deal = parents.get(row["parent_key"] or "", {}).get("id")
                    if deal is None:
                        continue
                    bound = f"D_{deal}"
                else:
                    bound = self.kind.binding(row["customer_id"])
                tasks = await self._all("tasks.task.list", {"filter": {"UF_CRM_TASK": bound},
                                                           "select": ["ID", "DESCRIPTION"]}, lambda a: (a.get("result") or {}).get("tasks") or [])
                for task in tasks:
                    if marker(row["key"]) in str(task.get("description") or task.get("DESCRIPTION") or ""):
                        found[row["key"]] = {"id": int(task.get("id") or task.get("ID"))}
                        break
            elif row["action"] == "todo":
                owner_type = self.kind.owner_type_id
                items = await self._all("crm.activity.list", {
                    "filter": {"OWNER_TYPE_ID": owner_type, "OWNER_ID": row["customer_id"]},
                    "select": ["ID", "DESCRIPTION"]}, lambda a: a.get("result") or [])
                for item in items:
                    if marker(row["key"]) in str(item.get("DESCRIPTION") or ""):
                        found[row["key"]] = {"id": int(item["ID"])}
                        break
        return found

    async def _all(self, method: str, params: dict[str, Any], rows_of: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            answer = await self.client.call(method, {**params, "start": start})
            out.extend(rows_of(answer))
            nxt = answer.get("next")
            if not nxt:
                return out
            start = int(nxt)


def _new_id(action: str, value: Any) -> int | None:
    try:
        if action in ("call_task", "deal_task"):
            return int(value["task"]["id"])
        if action == "todo":
            return int(value["id"]) if isinstance(value, dict) else int(value)
        return int(value)
    except (TypeError, ValueError, KeyError):
        return None
