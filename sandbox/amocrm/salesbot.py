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
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError

MAX_RUNS = 100
DEFAULT_BOTS = {61564: "Win-back bot", 61565: "Birthday greeting"}
ENTITY = {1: "contacts", 2: "leads"}


def run(api: Any, req: Any) -> tuple[int, Any]:
    store = api.store
    bots = getattr(store, "salesbots", None)
    if bots is None:
        bots = store.salesbots = dict(DEFAULT_BOTS)
        store.salesbot_runs = []
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
    store.salesbot_runs.extend(runs)
    store.version += 1
    return 202, {"success": True, "_links": {"self": {"href": f"{api.acct.base_url}/api/v2/salesbot/run", "method": "post"}}}
