"""Campaign actions in Bitrix24: call tasks, to-dos and sales-generator deals, looked up by marker.

* Call task: ``tasks.task.add`` (TITLE, DESCRIPTION, RESPONSIBLE_ID, DEADLINE, ``UF_CRM_TASK: ["C_7"]``),
  with the action's marker in ``XML_ID`` (the task's external id, which reps do not read), or with
  ``kind = "todo"`` ``crm.activity.todo.add`` on the contact, the marker ending the description
  (``[lc0123abcd4567]``); :meth:`find` lists the customer's tasks (``tasks.task.list`` filtered by
  ``UF_CRM_TASK``) or to-dos (``crm.activity.list`` by owner) and looks for it (in XML_ID, or in the
  description, where earlier versions put it).
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
        await self._resolve_close(campaigns, error)
        listed = round_robin_users(campaigns)
        if listed:
            answer = await self.client.call("user.get", {"filter": {"ID": sorted(listed)}})
            active = {int(u["ID"]) for u in answer.get("result") or [] if str(u.get("ACTIVE", True)).lower() not in ("false", "n")}
            check_users(campaigns, active, "of this Bitrix24 portal")

    async def _resolve_close(self, campaigns: Sequence[CampaignSpec], error: type[Exception]) -> None:
        """``close_deal_stage``: a stage (any, won and lost included) of each deal action's pipeline."""
        for campaign in campaigns:
            stage_name = getattr(campaign, "close_deal_stage", None)
            if not stage_name or not getattr(campaign, "close_on_exit", False):
                continue
            for action in (*campaign.on_enter, *campaign.on_exit):
                if action.action != "deal" or (action.pipeline, stage_name) in self.targets:
                    continue
                cat_id = next((c for (p, st), (c, _) in self.targets.items() if p == action.pipeline), None)
                if cat_id is None:
                    continue
                entity_id = "DEAL_STAGE" if cat_id == 0 else f"DEAL_STAGE_{cat_id}"
                stages = (await self.client.call("crm.status.list", {"filter": {"ENTITY_ID": entity_id},
                                                                      "order": {"SORT": "ASC"}})).get("result") or []
                stage = pick(stages, stage_name, "STATUS_ID", "NAME")
                if stage is None:
                    names = ", ".join(f"{s.get('NAME')} ({s.get('STATUS_ID')})" for s in stages)
                    raise error(f"[[campaign]] {campaign.name!r}: close_deal_stage {stage_name!r} is not a stage of "
                                f"pipeline {action.pipeline!r}; stages: {names}")
                self.targets[(action.pipeline, stage_name)] = (cat_id, str(stage["STATUS_ID"]))

    # -- close_on_exit: complete a campaign's open task, move its open deal, with a comment ------------

    def close_objects(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Close what ``rows`` (close_task / close_deal) point at. A task already completed (by a rep) or a
        deal already won or lost is left alone and reported done with ``left`` saying so."""
        return self._run(self._close(rows))

    async def _close(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        state = await self._targets_state(rows)
        done: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        todo: list[tuple[int, dict[str, Any], str]] = []  # (index, row, the closing command)
        for i, row in enumerate(rows):
            p = row["payload"]
            target = int(p["target"])
            now = state.get((row["action"], target))
            if now is None:
                done[row["key"]] = {"id": target, "left": "not found in the CRM"}
            elif now.get("closed"):
                done[row["key"]] = {"id": target, "left": "already completed" if row["action"] == "close_task"
                                    else "already won or lost"}
            elif row["action"] == "close_task":
                todo.append((i, row, f"tasks.task.complete?{php_query({'taskId': target})}"))
            else:
                _, stage = self.targets.get((p.get("pipeline"), p.get("stage")), (None, None))
                if stage is None:
                    errors[row["key"]] = f"close_deal_stage {p.get('stage')!r} not resolved"
                    continue
                todo.append((i, row, f"crm.deal.update?{php_query({'id': target, 'fields': {'STAGE_ID': stage}})}"))
        # The comment is added once: an earlier attempt whose closing failed (or whose answer was lost) may
        # have added it already, so the target's comments are read first and an equal one is not added again.
        present = await self._comments_present([row for _, row, _ in todo])
        for start in range(0, len(todo), 25):  # two commands a row, at most 50 a batch
            commands: dict[str, str] = {}
            for i, row, closing in todo[start:start + 25]:
                commands[f"k{i}"] = closing
                if row["key"] not in present:
                    p, target = row["payload"], int(row["payload"]["target"])
                    commands[f"c{i}"] = (
                        f"task.commentitem.add?{php_query({'TASKID': target, 'FIELDS': {'POST_MESSAGE': p['comment']}})}"
                        if row["action"] == "close_task" else
                        f"crm.timeline.comment.add?{php_query({'fields': {'ENTITY_ID': target, 'ENTITY_TYPE': 'deal', 'COMMENT': p['comment']}})}")
            results, cmd_errors = await self.client.batch_once(commands)
            for i, row, _ in todo[start:start + 25]:
                cmd = f"k{i}"
                if cmd in cmd_errors or results.get(cmd) in (None, False):
                    err = cmd_errors.get(cmd) or {}
                    errors[row["key"]] = (str(err.get("error_description") or err.get("error") or "no result")
                                          if isinstance(err, dict) else str(err))
                else:
                    done[row["key"]] = {"id": int(row["payload"]["target"])}
        return done, errors

    async def _comments_present(self, rows: list[dict[str, Any]]) -> set[str]:
        """Keys of the close rows whose task or deal already carries their comment (``task.commentitem.getlist``,
        ``crm.timeline.comment.list``), compared by text."""
        present: set[str] = set()
        for start in range(0, len(rows), 50):
            part = rows[start:start + 50]
            commands = {
                f"q{j}": (f"task.commentitem.getlist?{php_query({'TASKID': int(r['payload']['target'])})}"
                          if r["action"] == "close_task" else
                          f"crm.timeline.comment.list?{php_query({'filter': {'ENTITY_ID': int(r['payload']['target']), 'ENTITY_TYPE': 'deal'}, 'select': ['ID', 'COMMENT']})}")
                for j, r in enumerate(part)}
            if not commands:
                continue
            results, _ = await self.client.batch_once(commands)
            for j, r in enumerate(part):
                texts = {str(c.get("POST_MESSAGE" if r["action"] == "close_task" else "COMMENT") or "").strip()
                         for c in results.get(f"q{j}") or [] if isinstance(c, dict)}
                if str(r["payload"]["comment"]).strip() in texts:
                    present.add(r["key"])
        return present

    def find_closed(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The close rows whose task is completed or whose deal is closed or in the close stage already."""
        state = self._run(self._targets_state(rows))
        found = {}
        for row in rows:
            p = row["payload"]
            now = state.get((row["action"], int(p["target"])))
            _, stage = self.targets.get((p.get("pipeline"), p.get("stage")), (None, None))
            if now is not None and (now.get("closed") or (stage is not None and now.get("stage") == stage)):
                found[row["key"]] = {"id": int(p["target"])}
        return found

    async def _targets_state(self, rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        out: dict[tuple[str, int], dict[str, Any]] = {}
        tasks = sorted({int(r["payload"]["target"]) for r in rows if r["action"] == "close_task"})
        deals = sorted({int(r["payload"]["target"]) for r in rows if r["action"] == "close_deal"})
        if tasks:
            found = await self._all("tasks.task.list", {"filter": {"ID": tasks}, "select": ["ID", "STATUS"]},
                                    lambda a: (a.get("result") or {}).get("tasks") or [])
            for t in found:
                status = str(t.get("status") or t.get("STATUS") or "")
                out[("close_task", int(t.get("id") or t.get("ID")))] = {"closed": status == "5"}
        if deals:
            found = await self._all("crm.deal.list", {"filter": {"@ID": deals}, "select": ["ID", "STAGE_ID", "STAGE_SEMANTIC_ID"]},
                                    lambda a: a.get("result") or [])
            for d in found:
                out[("close_deal", int(d["ID"]))] = {"closed": str(d.get("STAGE_SEMANTIC_ID") or "P") in ("S", "F"),
                                                      "stage": str(d.get("STAGE_ID") or "")}
        return out

    def users(self) -> list[tuple[int, str | None, bool]]:
        """The portal's users as (id, name, active) (``user.get``, paged): plan and the dashboard name reps."""
        rows = self._run(self._all("user.get", {"sort": "ID", "order": "ASC"}, lambda a: a.get("result") or []))
        return [(int(u["ID"]), " ".join(str(u.get(k) or "").strip() for k in ("NAME", "LAST_NAME")).strip() or None,
                 str(u.get("ACTIVE", True)).lower() not in ("false", "n")) for u in rows]

    def closed_tasks(self, items: Sequence[tuple[str, int]]) -> dict[str, set[int]]:
        """Of these (action, CRM id) call tasks and to-dos, the ids completed in the CRM, by action
        (``tasks.task.list`` with ``STATUS`` 5; ``crm.activity.list`` with ``COMPLETED`` Y): for the report."""
        return self._run(self._closed_tasks(items))

    async def _closed_tasks(self, items: Sequence[tuple[str, int]]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for action in sorted({a for a, _ in items}):
            ids = sorted({i for a, i in items if a == action})
            for start in range(0, len(ids), 50):
                part = ids[start:start + 50]
                if action == "todo":
                    rows = await self._all("crm.activity.list", {"filter": {"@ID": part, "COMPLETED": "Y"}, "select": ["ID"]},
                                           lambda a: a.get("result") or [])
                else:
                    rows = await self._all("tasks.task.list", {"filter": {"ID": part, "STATUS": 5}, "select": ["ID"]},
                                           lambda a: (a.get("result") or {}).get("tasks") or [])
                out.setdefault(action, set()).update(int(r.get("id") or r.get("ID")) for r in rows)
        return out

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
        if row["action"] == "call_task":  # the marker in XML_ID (the task's external id), out of the rep's text
            return "tasks.task.add", {"fields": {
                "TITLE": p["title"], "DESCRIPTION": p["description"], "RESPONSIBLE_ID": row["responsible_id"],
                "DEADLINE": deadline, "UF_CRM_TASK": [owner], "XML_ID": marker(row["key"])}}
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
                "TITLE": p["title"], "DESCRIPTION": p["description"], "RESPONSIBLE_ID": row["responsible_id"],
                "DEADLINE": deadline, "UF_CRM_TASK": [f"D_{deal}", owner], "XML_ID": marker(row["key"])}}
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
                                                           "select": ["ID", "DESCRIPTION", "XML_ID"]}, lambda a: (a.get("result") or {}).get("tasks") or [])
                for task in tasks:  # the marker in XML_ID; tasks of earlier versions carry it in the description
                    if (str(task.get("xmlId") or task.get("XML_ID") or "") == marker(row["key"])
                            or marker(row["key"]) in str(task.get("description") or task.get("DESCRIPTION") or "")):
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
