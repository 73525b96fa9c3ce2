"""``POST /api/v2/salesbot/run``: start Salesbots on contacts or leads (recorded, nothing is sent).

Sources: developers.kommo.com/reference/launch-salesbot (the body is an array of ``{"bot_id",
"entity_id", "entity_type"}``; "No more than 100 bots at a time"; ``Content-Type: application/hal+json``;
bot ids are read from the Salesbot list in the UI: there is no documented API listing bots), third-party
code for ``entity_type`` 1 = contact, 2 = lead, and for the answer ``{"success": true, "_links":
{"self": {"href", "method": "post"}}}`` (shared/research/wave2-crm-apis.md 2.2).

Choices (not documented): the status of a success (202 here, as an official-looking PHP library expects;
200 vs 202 is UNCONFIRMED); an unknown bot answers 404 "Бот не найден" (a third-party report of the
text); a body that is not an array, over 100 items, or an item without an existing entity answers 400
and runs nothing.

The bots (what the account's Salesbot builder would hold) are definitions a test can replace through
``POST /_sandbox/salesbots`` (``AccountHandle.salesbots``)::

    {"61564": {"name": "Win-back bot",
               "steps": [{"type": "change_field", "field": "crm-lifecycle bot", "value": "started"},
                         {"type": "message", "text": "We kept your discount"}]}}

A run performs its steps at once, in order, before the answer (a real bot runs later, from a queue):
``change_field`` sets a text field of the entity the bot runs on (``field``: the field's name or code;
a field that does not exist is skipped, as a bot step pointing at a deleted field does nothing), by the
bot's user, as a PATCH would; ``message`` is recorded with the run (nothing is sent). Other step types
are recorded and otherwise ignored. Bot 61564 is set up as docs/campaigns.md asks (its first step
overwrites the connector's "crm-lifecycle bot" contact field); bot 61565 is not.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError
from .model import ADMIN_USER_ID

MAX_RUNS = 100
BOT_FIELD = "crm-lifecycle bot"  # the contact field the connector creates (adapters/amocrm/channels.py)
DEFAULT_BOTS: dict[int, dict[str, Any]] = {
    61564: {"name": "Win-back bot", "steps": [{"type": "change_field", "field": BOT_FIELD, "value": "started"},
                                               {"type": "message", "text": "Мы сохранили вашу скидку"}]},
    61565: {"name": "Birthday greeting", "steps": [{"type": "message", "text": "С днём рождения!"}]},
}
ENTITY = {1: "contacts", 2: "leads"}
STEP_TYPES = ("change_field", "message")


def bots_of(store: Any) -> dict[int, dict[str, Any]]:
    if getattr(store, "salesbots", None) is None:
        store.salesbots = copy.deepcopy(DEFAULT_BOTS)
        store.salesbot_runs = []
    return store.salesbots


def set_bots(store: Any, body: Any, *, replace: bool) -> dict[str, Any]:
    """The control route: add (or with ``replace`` set) bot definitions; ValueError says what is wrong."""
    if not isinstance(body, dict) or not body:
        raise ValueError('send {"<bot id>": {"name": "...", "steps": [{"type": "change_field", "field": "...", '
                         '"value": "..."}, ...]}}')
    parsed: dict[int, dict[str, Any]] = {}
    for raw_id, bot in body.items():
        try:
            bot_id = int(raw_id)
        except (TypeError, ValueError):
            raise ValueError(f"bot id {raw_id!r} is not an integer") from None
        steps = (bot or {}).get("steps") if isinstance(bot, dict) else None
        if not isinstance(steps, list):
            raise ValueError(f"bot {bot_id}: steps must be a list")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("type") not in STEP_TYPES:
                raise ValueError(f"bot {bot_id} step {i}: type must be one of {', '.join(STEP_TYPES)}")
            if step["type"] == "change_field" and not (str(step.get("field") or "").strip() and "value" in step):
                raise ValueError(f"bot {bot_id} step {i}: change_field needs field and value")
        parsed[bot_id] = {"name": str(bot.get("name") or f"Bot {bot_id}"), "steps": copy.deepcopy(steps)}
    bots = bots_of(store)
    if replace:
        bots.clear()
    bots.update(parsed)
    return describe(store)


def describe(store: Any) -> dict[str, Any]:
    return {"bots": {str(k): v for k, v in bots_of(store).items()}}


def run(api: Any, req: Any) -> tuple[int, Any]:
    store = api.store
    bots = bots_of(store)
    body = req.body
    if not isinstance(body, list) or not body:
        raise ApiError(400, "The request body must be a non-empty array of {bot_id, entity_id, entity_type}")
    if len(body) > MAX_RUNS:
        raise ApiError(400, f"No more than {MAX_RUNS} bots at a time")
    runs = []
    for item in body:
        if not isinstance(item, dict):
            raise ApiError(400, "Each item must be an object {bot_id, entity_id, entity_type}")
        try:
            bot, entity_id, kind = int(item["bot_id"]), int(item["entity_id"]), int(item["entity_type"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, "bot_id, entity_id and entity_type are required integers") from None
        if bot not in bots:
            raise ApiError(404, "Бот не найден")
        table = ENTITY.get(kind)
        if table is None or entity_id not in store.rows[table]:
            raise ApiError(400, f"Entity {entity_id} of type {kind} not found")
        runs.append({"bot_id": bot, "entity_id": entity_id, "entity_type": kind, "at": store.now()})
    for one in runs:
        one["steps"] = [_step(store, step, ENTITY[one["entity_type"]], one["entity_id"])
                        for step in bots[one["bot_id"]]["steps"]]
    store.salesbot_runs.extend(runs)
    store.version += 1
    return 202, {"success": True, "_links": {"self": {"href": f"{api.acct.base_url}/api/v2/salesbot/run", "method": "post"}}}


def _step(store: Any, step: dict[str, Any], entity: str, entity_id: int) -> str:
    """Perform one step; what it did, for the run's record."""
    if step["type"] != "change_field":
        return step["type"]
    wanted = str(step["field"]).strip()
    field = store.fields.find(entity, code=wanted) or next(
        (f for f in store.fields.by_type[entity].values() if f["name"] == wanted), None)
    if field is None:
        return "change_field: no such field"
    store.write(entity, [{"id": entity_id, "custom_fields_values": [
        {"field_id": field["id"], "values": [{"value": str(step["value"])}]}]}], user_id=ADMIN_USER_ID, create=False)
    return "change_field"
