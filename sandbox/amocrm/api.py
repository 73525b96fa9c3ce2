"""The ``/api/v4`` routes: lists with filters and paging, single entities, writes, and the rest.

Sources (shared/research/amocrm.md §2-§9): ``page`` from 1, ``limit`` default 50 and at most 250 (more ->
422 "Limit 250 per page"); HAL answers ``{"_page", "_links": {"self", "next" only when more}, "_embedded"}``
without a total for contacts/companies/leads; an empty page is HTTP 204 with no body; filters in PHP
bracket notation (``filter[id][]=1``, ``filter[id][0]=1``, ``filter[updated_at][from]=ts``) with inclusive
ranges; ``order[updated_at|created_at|id]=asc|desc``; ``with`` a comma list. Query strings and form
bodies are decoded like PHP's ``parse_str`` (sandbox.bitrix24.decode: amoCRM is PHP too).

Choices where the docs are silent: default order is ``id`` ascending (ties on other orders break by id);
unknown filter keys are ignored; a scalar range filter (``filter[updated_at]=ts``) means exactly that
second on entity lists and "at or after" on events (the events doc says "after"); events are listed
newest first and ``limit`` goes up to 250 (the Kommo doc; the RU doc says 100); custom fields come at most
50 a page (AR/custom-fields); a POST/PATCH body may be one object instead of an array; GET of a missing
or deleted entity by id is 204 (what Krukov/amocrm_api expects); ``next`` hrefs keep the request's query
with ``page`` replaced; tags POST with a known name returns the existing tag.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from sandbox.bitrix24.decode import DecodeError, parse_body

from .catalogs import bulk_links, catalog_routes, entity_links
from .errors import ApiError
from .model import PIPELINES, all_pipelines_json, pipeline_json
from .store import ENTITY_TYPES, NOTE_TYPES

if TYPE_CHECKING:
    from .account import Account

MAX_LIMIT = 250
DEFAULT_LIMIT = 50
EVENT_TYPES = ("lead_added", "lead_deleted", "lead_restored", "lead_status_changed", "contact_added",
               "contact_deleted", "contact_restored", "company_added", "company_deleted", "company_restored",
               "task_added", "task_completed", "entity_tag_added", "entity_tag_deleted", "common_note_added")
# ``with=entity_names`` (the documented example: per entity, per language, singular and plural forms with a
# default and, for Russian, the cases; ``gender``). Choice: leads, contacts and companies in ru and en.
ENTITY_NAMES = {
    "leads": {
        "ru": {"gender": "f",
               "singular_form": {"default": "сделка", "genitive": "сделки", "dative": "сделке",
                                 "accusative": "сделку", "instrumental": "сделкой", "prepositional": "сделке"},
               "plural_form": {"default": "сделки", "genitive": "сделок", "dative": "сделкам",
                               "accusative": "сделки", "instrumental": "сделками", "prepositional": "сделках"}},
        "en": {"gender": "f", "singular_form": {"default": "lead"}, "plural_form": {"default": "leads"}},
    },
    "contacts": {
        "ru": {"gender": "m", "singular_form": {"default": "контакт"}, "plural_form": {"default": "контакты"}},
        "en": {"gender": "m", "singular_form": {"default": "contact"}, "plural_form": {"default": "contacts"}},
    },
    "companies": {
        "ru": {"gender": "f", "singular_form": {"default": "компания"}, "plural_form": {"default": "компании"}},
        "en": {"gender": "f", "singular_form": {"default": "company"}, "plural_form": {"default": "companies"}},
    },
}
TASK_TYPES = [{"id": 1, "name": "Связаться", "color": None, "icon_id": None, "code": "FOLLOW_UP"},
              {"id": 2, "name": "Встреча", "color": None, "icon_id": None, "code": "MEETING"}]


class Request:
    def __init__(self, verb: str, path: str, query: str, params: dict, body: Any, user_id: int):
        self.verb, self.path, self.query, self.params, self.body, self.user_id = verb, path, query, params, body, user_id


def decode_body(content_type: str, raw: bytes) -> Any:
    """JSON (arrays kept as lists) or a PHP-style form body."""
    if not raw.strip():
        return None
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in ("application/json", "application/hal+json", "") or raw.lstrip()[:1] in (b"[", b"{"):
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if ctype in ("application/json", "application/hal+json"):
                raise ApiError(400, "Request body is not valid JSON") from None
    try:
        return parse_body(content_type, raw)
    except DecodeError as exc:
        raise ApiError(400, str(exc)) from None


# -- parameter helpers ------------------------------------------------------------------------------

def _limit(params: dict, maximum: int = MAX_LIMIT, cap: bool = False) -> int:
    raw = params.get("limit")
    try:
        limit = int(raw) if raw not in (None, "") else DEFAULT_LIMIT
    except (TypeError, ValueError):
        limit = DEFAULT_LIMIT
    if limit <= 0:
        limit = DEFAULT_LIMIT
    if limit > maximum:
        if cap:
            return maximum
        raise ApiError(422, f"Limit {maximum} per page")
    return limit


def _page(params: dict) -> int:
    try:
        return max(1, int(params.get("page") or 1))
    except (TypeError, ValueError):
        return 1


def _list(value: Any, *, split_commas: bool = False) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        value = [value]
    out = []
    for v in value:
        if split_commas and isinstance(v, str):
            out += [x.strip() for x in v.split(",") if x.strip()]
        elif v not in ("", None):
            out.append(v)
    return out


def _ints(value: Any, name: str) -> set[int]:
    try:
        return {int(v) for v in _list(value, split_commas=True)}
    except (TypeError, ValueError):
        raise ApiError(400, f"filter[{name}] must be integers") from None


def _range(value: Any, name: str, *, scalar_from: bool = False) -> tuple[float, float]:
    try:
        if isinstance(value, dict):
            lo = int(value["from"]) if value.get("from") not in (None, "") else float("-inf")
            hi = int(value["to"]) if value.get("to") not in (None, "") else float("inf")
            return lo, hi
        exact = int(value)
        return (exact, float("inf")) if scalar_from else (exact, exact)
    except (TypeError, ValueError):
        raise ApiError(400, f"filter[{name}] must be unix seconds or [from]/[to]") from None


def _stages(value: Any) -> list[tuple[int | None, int]]:
    """``filter[statuses][i][pipeline_id|status_id]`` -> [(pipeline or None, status)]: a stage is the pair
    (142/143 exist in every pipeline, so status 142 of pipeline A is not status 142 of pipeline B)."""
    stages = []
    for st in _list(value):
        if not isinstance(st, dict) or st.get("status_id") in (None, ""):
            continue
        try:
            status = int(st["status_id"])
            pipeline = int(st["pipeline_id"]) if st.get("pipeline_id") not in (None, "") else None
        except (TypeError, ValueError):
            raise ApiError(400, "filter[statuses] must be integers") from None
        stages.append((pipeline, status))
    return stages


def _with(params: dict) -> set[str]:
    return {w for w in _list(params.get("with"), split_commas=True) if isinstance(w, str)}


def _filters(params: dict) -> dict:
    f = params.get("filter")
    return f if isinstance(f, dict) else {}


def _order(params: dict, allowed: tuple[str, ...]) -> tuple[str, bool]:
    order = params.get("order")
    if isinstance(order, dict):
        for key, direction in order.items():
            if key in allowed:
                return key, str(direction).lower() == "desc"
    return "id", False


class Api:
    def __init__(self, account: "Account"):
        self.acct = account
        self._cache: dict[tuple, tuple[int, list[int]]] = {}

    @property
    def store(self):
        return self.acct.store

    # -- routing ---------------------------------------------------------------------------------

    def route_key(self, verb: str, path: str) -> str:
        return f"{verb} " + re.sub(r"/\d+(?=/|$)", "/{id}", path.rstrip("/") or "/")

    def handle(self, req: Request) -> tuple[int, Any]:
        if req.path.startswith("/api/v2/"):  # the one v2 route: Salesbot runs (sandbox/amocrm/salesbot.py)
            if req.path.rstrip("/") != "/api/v2/salesbot/run":
                raise ApiError(404, f"Cannot {req.verb} {self.acct.base_url}{req.path}")
            if req.verb != "POST":
                raise ApiError(405, f"Method {req.verb} is not allowed for {req.path}")
            from .salesbot import run

            return run(self, req)
        parts = [p for p in req.path[len("/api/v4/"):].split("/") if p]
        verb = req.verb
        routes = self._routes(parts)
        if routes is None:
            raise ApiError(404, f"Cannot {verb} {self.acct.base_url}{req.path}")
        handler = routes.get(verb)
        if handler is None:
            raise ApiError(405, f"Method {verb} is not allowed for {req.path}")
        return handler(req)

    def _routes(self, parts: list[str]) -> dict | None:
        n = len(parts)
        head = parts[0] if parts else ""
        if n == 1 and head == "account":
            return {"GET": self.account}
        if n == 1 and head == "webhooks":
            return self.acct.hooks.routes()
        if head == "users":
            if n == 1:
                return {"GET": self.users}
            if n == 2 and parts[1].isdigit():
                return {"GET": lambda r: self.user(int(parts[1]))}
        if head == "leads" and n >= 2 and parts[1] == "pipelines":
            if n == 2:
                return {"GET": self.pipelines}
            if parts[2].isdigit() and int(parts[2]) in PIPELINES:
                pid = int(parts[2])
                if n == 3:
                    return {"GET": lambda r: (200, pipeline_json(self.store.account_id, self.acct.base_url, pid))}
                if n == 4 and parts[3] == "statuses":
                    return {"GET": lambda r: self.statuses(r, pid)}
            return None
        if head == "tasks":
            if n == 1:
                return {"GET": self.list_tasks, "POST": self.post_tasks, "PATCH": self.patch_tasks}
            if n == 2 and parts[1].isdigit():
                tid = int(parts[1])
                return {"GET": lambda r: self.get_task(tid), "PATCH": lambda r: self.patch_task(r, tid)}
            return None
        if head == "events":
            if n == 1:
                return {"GET": self.list_events}
            if n == 2 and parts[1] == "types":
                return {"GET": self.event_types}
            if n == 2:
                return {"GET": lambda r: self.get_event(parts[1])}
            return None
        if head == "catalogs":
            return catalog_routes(self, parts)
        if head in ENTITY_TYPES:
            entity = head
            if n == 2 and parts[1] == "links":
                return {"GET": lambda r: bulk_links(self, r, entity)}
            if n == 3 and parts[1].isdigit() and parts[2] == "links":
                return {"GET": lambda r: entity_links(self, r, entity, int(parts[1]))}
            if n == 1:
                return {"GET": lambda r: self.list_entities(r, entity), "POST": lambda r: self.write(r, entity, True),
                        "PATCH": lambda r: self.write(r, entity, False)}
            if n == 2 and parts[1] == "tags":
                return {"GET": lambda r: self.list_tags(r, entity), "POST": lambda r: self.post_tags(r, entity)}
            if n == 2 and parts[1] == "custom_fields":
                return {"GET": lambda r: self.custom_fields(r, entity), "POST": lambda r: self.post_custom_fields(r, entity)}
            if n == 3 and parts[1] == "custom_fields" and parts[2].isdigit():
                return {"GET": lambda r: self.custom_field(entity, int(parts[2]))}
            if n == 2 and parts[1] == "notes":
                return {"GET": lambda r: self.list_notes(r, entity, None), "POST": lambda r: self.post_notes(r, entity, None)}
            if n == 3 and parts[1] == "notes" and parts[2].isdigit():
                return {"GET": lambda r: self.get_note(entity, None, int(parts[2]))}
            if n >= 2 and parts[1].isdigit():
                rid = int(parts[1])
                if n == 2:
                    return {"GET": lambda r: self.get_entity(r, entity, rid), "PATCH": lambda r: self.patch_one(r, entity, rid)}
                if n == 3 and parts[2] == "notes":
                    return {"GET": lambda r: self.list_notes(r, entity, rid), "POST": lambda r: self.post_notes(r, entity, rid)}
                if n == 4 and parts[2] == "notes" and parts[3].isdigit():
                    return {"GET": lambda r: self.get_note(entity, rid, int(parts[3]))}
        return None

    # -- paging ----------------------------------------------------------------------------------

    def _href(self, req: Request, page: int | None = None) -> dict:
        pairs = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k != "page"]
        if page is not None:
            pairs.append(("page", str(page)))
        query = urlencode(pairs)
        return {"href": f"{self.acct.base_url}{req.path}" + (f"?{query}" if query else "")}

    def _paged(self, req: Request, key: str, items: list, render, *, maximum: int = MAX_LIMIT, cap: bool = False,
               total: bool = False) -> tuple[int, Any]:
        limit = _limit(req.params, maximum, cap)
        page = _page(req.params)
        chunk = items[(page - 1) * limit: page * limit]
        if not chunk:
            return 204, None
        links = {"self": self._href(req, page)}
        if len(items) > page * limit:
            links["next"] = self._href(req, page + 1)
        if page > 1:
            links["prev"] = self._href(req, page - 1)
        body: dict[str, Any] = {}
        if total:
            body["_total_items"] = len(items)
        body.update({"_page": page, "_links": links, "_embedded": {key: [render(x) for x in chunk]}})
        if total:
            body["_page_count"] = -(-len(items) // limit)
        return 200, body

    # -- entities --------------------------------------------------------------------------------

    def _matches(self, entity: str, filters: dict, query: str | None):
        checks = []
        for name, value in filters.items():
            if name in ("id", "responsible_user_id", "created_by", "updated_by", "pipeline_id"):
                wanted = _ints(value, name)
                if wanted:
                    checks.append(lambda r, n=name, w=wanted: r.get(n) in w)
            elif name == "name":
                names = {str(v) for v in _list(value)}
                if names:
                    checks.append(lambda r, w=names: r["name"] in w)
            elif name in ("created_at", "updated_at", "closest_task_at", "closed_at", "price"):
                if name in ("closed_at", "price") and entity != "leads":
                    continue
                lo, hi = _range(value, name)
                checks.append(lambda r, n=name, lo=lo, hi=hi: r.get(n) is not None and lo <= r[n] <= hi)
            elif name == "statuses" and entity == "leads":
                stages = _stages(value)
                if stages:
                    checks.append(lambda r, w=stages: any(r["status_id"] == s and p in (None, r["pipeline_id"])
                                                          for p, s in w))
        if query:
            needle = query.strip().lower()
            digits = re.sub(r"\D", "", needle)

            def text_match(r, needle=needle, digits=digits):
                if needle in r["name"].lower():
                    return True
                for cf in r["custom_fields_values"] or []:
                    for v in cf["values"]:
                        s = str(v.get("value", "")).lower()
                        if needle in s or (len(digits) >= 5 and digits in re.sub(r"\D", "", s)):
                            return True
                return False
            checks.append(text_match)
        return lambda r: all(c(r) for c in checks)

    def _ordered_ids(self, entity: str, req: Request, deleted: bool) -> list[int]:
        filters = _filters(req.params)
        query = req.params.get("query")
        query = str(query) if query not in (None, "") else None
        key_name, desc = _order(req.params, ("id", "updated_at", "created_at"))
        cache_key = (entity, deleted, json.dumps(filters, sort_keys=True, default=str), query, key_name, desc)
        version = self.store.version
        hit = self._cache.get(cache_key)
        if hit and hit[0] == version:
            return hit[1]
        rows = self.store.trash[entity] if deleted else self.store.rows[entity]
        match = self._matches(entity, filters, query)
        recs = [r for r in rows.values() if match(r)]
        if key_name == "id":
            recs.sort(key=lambda r: r["id"], reverse=desc)
        else:
            recs.sort(key=lambda r: ((-r[key_name] if desc else r[key_name]), r["id"]))
        ids = [r["id"] for r in recs]
        if len(self._cache) > 32:
            self._cache.clear()
        self._cache[cache_key] = (version, ids)
        return ids

    def list_entities(self, req: Request, entity: str) -> tuple[int, Any]:
        with_ = _with(req.params)
        deleted = "only_deleted" in with_
        _limit(req.params)  # 422 before any work
        ids = self._ordered_ids(entity, req, deleted)
        rows = self.store.trash[entity] if deleted else self.store.rows[entity]
        return self._paged(req, entity, ids, lambda rid: self.store.render(entity, rows[rid], with_, deleted))

    def get_entity(self, req: Request, entity: str, rid: int) -> tuple[int, Any]:
        rec = self.store.rows[entity].get(rid)
        if rec is None:
            return 204, None
        return 200, self.store.render(entity, rec, _with(req.params))

    def _items(self, req: Request) -> list:
        body = req.body
        if body is None or body == [] or body == {}:
            raise ApiError(400, "Request data can not be empty")
        if isinstance(body, dict):
            keys = list(body)
            body = list(body.values()) if keys and all(k.isdigit() for k in keys) else [body]
        if not isinstance(body, list):
            raise ApiError(400, "Request data can not be empty")
        if len(body) > MAX_LIMIT:
            raise ApiError(422, f"Limit {MAX_LIMIT} per page")
        return body

    def write(self, req: Request, entity: str, create: bool) -> tuple[int, Any]:
        items = self._items(req)
        answer = self.store.write(entity, items, user_id=req.user_id, create=create)
        counters = self.acct.counters
        if create:
            counters.entities_created += len(answer)
        else:
            counters.entities_patched += len(answer)
            for item in answer:
                item["name"] = self.store.rows[entity][item["id"]]["name"]
        return 200, {"_links": {"self": {"href": f"{self.acct.base_url}/api/v4/{entity}"}},
                     "_embedded": {entity: answer}}

    def patch_one(self, req: Request, entity: str, rid: int) -> tuple[int, Any]:
        if not isinstance(req.body, dict) or not req.body:
            raise ApiError(400, "Request data can not be empty")
        item = dict(req.body)
        item["id"] = rid
        answer = self.store.write(entity, [item], user_id=req.user_id, create=False)[0]
        self.acct.counters.entities_patched += 1
        answer.pop("request_id", None)
        return 200, answer

    # -- tags ------------------------------------------------------------------------------------

    def list_tags(self, req: Request, entity: str) -> tuple[int, Any]:
        filters = _filters(req.params)
        tags = sorted(self.store.tags[entity].values(), key=lambda t: t["id"])
        if filters.get("name") not in (None, ""):
            name = str(filters["name"]).strip().lower()
            tags = [t for t in tags if t["name"].lower() == name]
        if filters.get("id") not in (None, ""):
            wanted = _ints(filters["id"], "id")
            tags = [t for t in tags if t["id"] in wanted]
        query = req.params.get("query")
        if query:
            tags = [t for t in tags if str(query).lower() in t["name"].lower()]
        return self._paged(req, "tags", tags, dict)

    def post_tags(self, req: Request, entity: str) -> tuple[int, Any]:
        from .errors import ValidationFailed

        items = self._items(req)
        problems = [(str(t.get("request_id", i)) if isinstance(t, dict) else str(i),
                     [("NotBlank", "name", "This value should not be blank.")])
                    for i, t in enumerate(items) if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"].strip()]
        if problems:
            raise ValidationFailed(problems)
        out = []
        for i, item in enumerate(items):
            tag = self.store.tag_by_name(entity, item["name"], create=True, color=item.get("color"))
            out.append({**tag, "request_id": str(item.get("request_id", i))})
        self.store.version += 1
        return 200, {"_total_items": len(out), "_embedded": {"tags": out}}

    # -- custom fields, pipelines, account, users ------------------------------------------------

    def custom_fields(self, req: Request, entity: str) -> tuple[int, Any]:
        fields = self.store.fields.render(entity, self.acct.base_url)
        types = {str(t) for t in _list(_filters(req.params).get("type"), split_commas=True)}
        if types:
            fields = [f for f in fields if f["type"] in types]
        return self._paged(req, "custom_fields", fields, dict, maximum=50, cap=True, total=True)

    def post_custom_fields(self, req: Request, entity: str) -> tuple[int, Any]:
        """``POST /api/v4/{entity}/custom_fields`` (crm_entities/custom-fields: an array of fields, ``name`` and
        ``type`` required, ``code``, ``sort``, ``is_api_only`` optional; the answer lists the new fields with their
        ``request_id``). The sandbox creates the simple types only (text, numeric, textarea, url, date, checkbox)."""
        out = []
        for i, item in enumerate(self._items(req)):
            if not isinstance(item, dict) or not str(item.get("name") or "").strip():
                raise ApiError(400, f"{i}.name: This value should not be blank.")
            ftype = str(item.get("type") or "")
            if ftype not in ("text", "numeric", "textarea", "url", "date", "checkbox"):
                raise ApiError(400, f"{i}.type: The value you selected is not a valid choice.")
            field = self.store.fields.add(entity, str(item["name"]).strip(), ftype, code=item.get("code") or None,
                                          sort=item.get("sort"))
            field["is_api_only"] = bool(item.get("is_api_only"))
            out.append({**field, "request_id": str(item.get("request_id", i)),
                        "_links": {"self": {"href": f"{self.acct.base_url}/api/v4/{entity}/custom_fields/{field['id']}"}}})
        self.store.version += 1
        return 200, {"_total_items": len(out), "_embedded": {"custom_fields": out}}

    def custom_field(self, entity: str, fid: int) -> tuple[int, Any]:
        for f in self.store.fields.render(entity, self.acct.base_url):
            if f["id"] == fid:
                return 200, f
        return 204, None

    def pipelines(self, req: Request) -> tuple[int, Any]:
        pipelines = all_pipelines_json(self.store.account_id, self.acct.base_url)
        return 200, {"_total_items": len(pipelines),
                     "_links": {"self": {"href": f"{self.acct.base_url}/api/v4/leads/pipelines"}},
                     "_embedded": {"pipelines": pipelines}}

    def statuses(self, req: Request, pipeline_id: int) -> tuple[int, Any]:
        statuses = pipeline_json(self.store.account_id, self.acct.base_url, pipeline_id)["_embedded"]["statuses"]
        return 200, {"_total_items": len(statuses), "_links": {"self": self._href(req)}, "_embedded": {"statuses": statuses}}

    def account(self, req: Request) -> tuple[int, Any]:
        acct = self.acct
        with_ = _with(req.params)
        out: dict[str, Any] = {
            "id": acct.account_id, "name": acct.account_name, "subdomain": acct.subdomain,
            "created_at": acct.created_at, "created_by": 0, "updated_at": acct.created_at, "updated_by": 0,
            "current_user_id": req.user_id, "country": "RU", "currency": "RUB", "currency_symbol": "₽",
            "customers_mode": "disabled", "is_unsorted_on": True, "mobile_feature_version": 0,
            "is_loss_reason_enabled": False, "is_helpbot_enabled": False, "is_technical_account": False,
            "contact_name_display_order": 1, "_links": {"self": {"href": f"{acct.base_url}/api/v4/account"}},
        }
        if "amojo_id" in with_:
            out["amojo_id"] = acct.amojo_id
        if "uuid" in with_:
            out["uuid"] = acct.amojo_id
        if "version" in with_:
            out["version"] = 9
        if "entity_names" in with_:
            out["entity_names"] = ENTITY_NAMES
        if "drive_url" in with_:
            out["drive_url"] = f"{acct.base_url}/drive"
        embedded: dict[str, Any] = {}
        if "amojo_rights" in with_:
            embedded["amojo_rights"] = {"can_direct": False, "can_create_groups": False}
        if "task_types" in with_:
            embedded["task_types"] = TASK_TYPES
        if "users_groups" in with_:
            embedded["users_groups"] = [{"id": 0, "name": "Отдел продаж", "uuid": None}]
        if "datetime_settings" in with_:
            offset = datetime.now(acct.tz).strftime("%z")
            embedded["datetime_settings"] = {
                "date_pattern": "d.m.Y H:i", "short_date_pattern": "d.m.Y", "short_time_pattern": "H:i",
                "date_format": "d.m.Y", "time_format": "H:i:s", "timezone": str(acct.tz),
                "timezone_offset": f"{offset[:3]}:{offset[3:]}"}
        if embedded:
            out["_embedded"] = embedded
        return 200, out

    def users(self, req: Request) -> tuple[int, Any]:
        users = sorted(self.store.users.values(), key=lambda u: u["id"])
        return self._paged(req, "users", users, lambda u: {**u, "_links": {"self": {"href": f"{self.acct.base_url}/api/v4/users/{u['id']}"}}},
                           total=True)

    def user(self, uid: int) -> tuple[int, Any]:
        u = self.store.users.get(uid)
        if u is None:
            return 204, None
        return 200, {**u, "_links": {"self": {"href": f"{self.acct.base_url}/api/v4/users/{uid}"}}}

    # -- tasks -----------------------------------------------------------------------------------

    def list_tasks(self, req: Request) -> tuple[int, Any]:
        f = _filters(req.params)
        tasks = list(self.store.tasks.values())
        for name in ("responsible_user_id", "id", "entity_id"):
            if f.get(name) not in (None, ""):
                wanted = _ints(f[name], name)
                tasks = [t for t in tasks if t[name] in wanted]
        types = f.get("task_type") if f.get("task_type") not in (None, "") else f.get("task_type_id")
        if types not in (None, ""):
            wanted = _ints(types, "task_type")
            tasks = [t for t in tasks if t["task_type_id"] in wanted]
        if f.get("is_completed") not in (None, ""):
            done = str(f["is_completed"]).lower() in ("1", "true")
            tasks = [t for t in tasks if t["is_completed"] == done]
        if f.get("entity_type") not in (None, ""):
            tasks = [t for t in tasks if t["entity_type"] == f["entity_type"]]
        if f.get("updated_at") not in (None, ""):
            lo, hi = _range(f["updated_at"], "updated_at", scalar_from=True)
            tasks = [t for t in tasks if lo <= t["updated_at"] <= hi]
        key, desc = _order(req.params, ("created_at", "complete_till", "id"))
        tasks.sort(key=lambda t: (t[key], t["id"]), reverse=desc)
        return self._paged(req, "tasks", tasks, self.store.render_task)

    def get_task(self, tid: int) -> tuple[int, Any]:
        task = self.store.tasks.get(tid)
        return (200, self.store.render_task(task)) if task else (204, None)

    def post_tasks(self, req: Request) -> tuple[int, Any]:
        out = self.store.add_tasks(self._items(req), user_id=req.user_id)
        return 200, {"_links": {"self": {"href": f"{self.acct.base_url}/api/v4/tasks"}}, "_embedded": {"tasks": out}}

    def patch_tasks(self, req: Request) -> tuple[int, Any]:
        out = self.store.update_tasks(self._items(req), user_id=req.user_id)
        return 200, {"_links": {"self": {"href": f"{self.acct.base_url}/api/v4/tasks"}}, "_embedded": {"tasks": out}}

    def patch_task(self, req: Request, tid: int) -> tuple[int, Any]:
        if not isinstance(req.body, dict) or not req.body:
            raise ApiError(400, "Request data can not be empty")
        out = self.store.update_tasks([{**req.body, "id": tid}], user_id=req.user_id)[0]
        out.pop("request_id", None)
        return 200, out

    # -- notes -----------------------------------------------------------------------------------

    def list_notes(self, req: Request, entity: str, rid: int | None) -> tuple[int, Any]:
        f = _filters(req.params)
        notes = [n for n in self.store.notes.values() if n["_entity"] == entity and (rid is None or n["entity_id"] == rid)]
        for name in ("id", "entity_id"):
            if f.get(name) not in (None, ""):
                wanted = _ints(f[name], name)
                notes = [n for n in notes if n[name] in wanted]
        if f.get("note_type") not in (None, ""):
            kinds = {str(k) for k in _list(f["note_type"], split_commas=True)}
            notes = [n for n in notes if n["note_type"] in kinds]
        if f.get("updated_at") not in (None, ""):
            lo, hi = _range(f["updated_at"], "updated_at", scalar_from=True)
            notes = [n for n in notes if lo <= n["updated_at"] <= hi]
        key, desc = _order(req.params, ("updated_at", "id"))
        notes.sort(key=lambda n: (n[key], n["id"]), reverse=desc)
        return self._paged(req, "notes", notes, self.store.render_note)

    def get_note(self, entity: str, rid: int | None, nid: int) -> tuple[int, Any]:
        note = self.store.notes.get(nid)
        if note is None or note["_entity"] != entity or (rid is not None and note["entity_id"] != rid):
            return 204, None
        return 200, self.store.render_note(note)

    def post_notes(self, req: Request, entity: str, rid: int | None) -> tuple[int, Any]:
        out = self.store.add_notes(entity, self._items(req), user_id=req.user_id, entity_id=rid)
        return 200, {"_links": {"self": self._href(req)}, "_embedded": {"notes": out}}

    # -- events ----------------------------------------------------------------------------------

    def list_events(self, req: Request) -> tuple[int, Any]:
        f = _filters(req.params)
        events = self.store.events
        if f.get("type") not in (None, ""):
            types = {str(t) for t in _list(f["type"], split_commas=True)}
            events = [e for e in events if e["type"] in types]
        if f.get("entity") not in (None, ""):
            kinds = {str(t) for t in _list(f["entity"], split_commas=True)}
            events = [e for e in events if e["entity_type"] in kinds]
        if f.get("entity_id") not in (None, ""):
            wanted = _ints(f["entity_id"], "entity_id")
            events = [e for e in events if e["entity_id"] in wanted]
        if f.get("created_by") not in (None, ""):
            wanted = _ints(f["created_by"], "created_by")
            events = [e for e in events if e["created_by"] in wanted]
        if f.get("id") not in (None, ""):
            wanted_ids = {str(x) for x in _list(f["id"], split_commas=True)}
            events = [e for e in events if e["id"] in wanted_ids]
        if f.get("created_at") not in (None, ""):
            lo, hi = _range(f["created_at"], "created_at", scalar_from=True)
            events = [e for e in events if lo <= e["created_at"] <= hi]
        events = sorted(events, key=lambda e: e["_seq"], reverse=True)
        return self._paged(req, "events", events, self.store.render_event)

    def get_event(self, event_id: str) -> tuple[int, Any]:
        for e in self.store.events:
            if e["id"] == event_id:
                return 200, self.store.render_event(e)
        return 204, None

    def event_types(self, req: Request) -> tuple[int, Any]:
        types = [{"key": t, "type": i + 1, "lang": {"ru": t, "en": t}} for i, t in enumerate(EVENT_TYPES)]
        return 200, {"_total_items": len(types), "_links": {"self": self._href(req)}, "_embedded": {"events_types": types}}


__all__ = ["Api", "Request", "decode_body", "NOTE_TYPES"]
