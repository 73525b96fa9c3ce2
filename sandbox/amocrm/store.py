"""Contacts, companies, leads, tags, tasks, notes and events of one account, and their API JSON.

Entity JSON follows the models in shared/research/amocrm.md §2 (developers.kommo.com/reference
contacts-list / leads-list, Krukov/amocrm_api tests/data, amocrm-api-php Models): timestamps are unix
seconds (int), ``custom_fields_values`` is ``null`` when empty, ``_embedded.tags`` is always present,
``_embedded.companies`` holds at most one ``{id, _links}``, leads get ``_embedded.contacts`` with
``is_main`` only with ``with=contacts``, contacts ``_embedded.leads`` only with ``with=leads``.

Writes (POST/PATCH, §3 and §5): ``_embedded.tags`` replaces the entity's tags (``null`` detaches all; each
tag by ``id`` or ``name``; an unknown name creates the tag); ``tags_to_add`` / ``tags_to_delete`` at the
entity's top level change tags incrementally and are ignored when ``_embedded.tags`` is present
(amocrm-api-php MutateTagsTrait). ``custom_fields_values`` changes only the fields it names (a field with
``values: null`` or ``[]`` is cleared). Every write sets ``updated_at`` (wall clock, one-second resolution)
and ``updated_by`` unless the body sets them. A bulk request is validated as a whole first: one bad item
-> 400 ``validation-errors`` and nothing is written (choice; the docs show the error shape only).

Other choices: tag names match case-insensitively (the stored spelling is the first one used); tag ids
come from one counter (so the same name has different ids for leads and contacts, as documented);
moving a lead to 142/143 sets ``closed_at`` to now unless the body gives it, leaving them clears it;
deleting (a UI action, ``/_sandbox/delete``) moves the entity to the recycle bin (served with
``with=only_deleted``, ``is_deleted: true``) and unlinks it from leads without touching their
``updated_at``; adding an open task sets the entity's ``closest_task_at`` (earliest open deadline)
without touching ``updated_at``; seeded data has no events (events start with the sandbox).
"""

from __future__ import annotations

import copy
import os
import time
from datetime import datetime, time as dtime, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from .catalogs import Catalogs
from .errors import ValidationFailed
from .model import (ADMIN_USER_ID, FIRST_WORKING_STATUS, LOST, PIPELINE_ID, PIPELINE_STATUS_IDS, PIPELINES, WON,
                    FieldRegistry, pipeline_of_status)

ENTITY_TYPES = ("contacts", "companies", "leads")
SINGULAR = {"contacts": "contact", "companies": "company", "leads": "lead"}
NOTE_TYPES = ("common", "call_in", "call_out", "service_message", "extended_service_message", "geolocation",
              "sms_in", "sms_out", "attachment", "message_cashier", "invoice_paid")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class Invalid(Exception):
    def __init__(self, code: str, path: str, detail: str):
        super().__init__(detail)
        self.error = (code, path, detail)


def ulid(ms: int) -> str:
    """A ULID-like event id (26 lowercase Crockford base32 characters: 48-bit time + 80 random bits)."""
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def birthday_ts(day, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, dtime(0, 0), tz).timestamp())


def _int(value: Any, path: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid("InvalidType", path, "This value should be of type int.")
    try:
        number = int(value) if not isinstance(value, float) else int(value)
        if isinstance(value, str) and str(number) != value.strip():
            raise ValueError
    except ValueError:
        raise Invalid("InvalidType", path, "This value should be of type int.") from None
    return number


class Store:
    def __init__(self, tz: ZoneInfo, account_id: int, clock_real=time.time):
        self.tz = tz
        self.account_id = account_id
        self.now = clock_real
        self.base = ""
        self.rows: dict[str, dict[int, dict]] = {t: {} for t in ENTITY_TYPES}
        self.trash: dict[str, dict[int, dict]] = {t: {} for t in ENTITY_TYPES}
        self.fields = FieldRegistry(account_id)
        self.tags: dict[str, dict[int, dict]] = {t: {} for t in ENTITY_TYPES}
        self._tag_names: dict[str, dict[str, int]] = {t: {} for t in ENTITY_TYPES}
        self.tasks: dict[int, dict] = {}
        self.notes: dict[int, dict] = {}
        self.events: list[dict] = []
        self.users: dict[int, dict] = {}
        self.overrides: dict[tuple[str, int], dict] = {}
        self.leads_of_contact: dict[int, set[int]] = {}
        self.leads_of_company: dict[int, set[int]] = {}
        self.contacts_of_company: dict[int, set[int]] = {}
        self.version = 0  # bumped on every write (list caches key on it)
        self._next = {"contacts": 1, "companies": 1, "leads": 1, "tag": 500001, "task": 1, "note": 1}
        self._event_seq = 0
        self.on_change = None  # hooks.py: called with (entity, actions, record, old values) after each write
        self.catalogs = Catalogs(account_id, int(clock_real()))
        self.ensure_user(ADMIN_USER_ID, name="Администратор")

    # -- users -----------------------------------------------------------------------------------

    def ensure_user(self, user_id: int, name: str | None = None) -> int:
        if user_id not in self.users:
            self.users[user_id] = {
                "id": user_id, "name": name or f"Менеджер {user_id}", "email": f"user{user_id}@example.com",
                "lang": "ru", "rights": {"leads": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
                                         "contacts": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
                                         "companies": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
                                         "tasks": {"edit": "A", "delete": "A"}, "mail_access": False,
                                         "catalog_access": False, "is_admin": user_id == ADMIN_USER_ID,
                                         "is_free": False, "is_active": True, "group_id": None, "role_id": None}}
        return user_id

    # -- seeding (no validation, ids kept) -------------------------------------------------------

    def insert(self, entity: str, rec: dict) -> None:
        rid = rec["id"]
        base = {"name": "", "responsible_user_id": ADMIN_USER_ID, "group_id": 0, "created_by": ADMIN_USER_ID,
                "updated_by": ADMIN_USER_ID, "closest_task_at": None, "custom_fields_values": None, "tags": [],
                "company_id": None}
        if entity == "contacts":
            base.update(first_name="", last_name="")
        if entity == "leads":
            base.update(price=0, status_id=FIRST_WORKING_STATUS, pipeline_id=PIPELINE_ID, loss_reason_id=None,
                        closed_at=None, score=None, labor_cost=None, contacts=[])
        base.update(rec)
        self.rows[entity][rid] = base
        self._next[entity] = max(self._next[entity], rid + 1)
        self._index(entity, base, add=True)
        self.version += 1

    def _index(self, entity: str, rec: dict, *, add: bool) -> None:
        def touch(index: dict, key, value):
            if key is None:
                return
            bucket = index.setdefault(key, set())
            (bucket.add if add else bucket.discard)(value)

        if entity == "leads":
            for cid, _ in rec.get("contacts", []):
                touch(self.leads_of_contact, cid, rec["id"])
            touch(self.leads_of_company, rec.get("company_id"), rec["id"])
        elif entity == "contacts":
            touch(self.contacts_of_company, rec.get("company_id"), rec["id"])

    # -- tags ------------------------------------------------------------------------------------

    def tag_by_name(self, entity: str, name: str, *, create: bool, color: str | None = None) -> dict | None:
        tid = self._tag_names[entity].get(name.strip().lower())
        if tid is not None:
            return self.tags[entity][tid]
        if not create:
            return None
        tid = self._next["tag"]
        self._next["tag"] += 1
        tag = {"id": tid, "name": name.strip(), "color": color if entity == "leads" else None}
        self.tags[entity][tid] = tag
        self._tag_names[entity][tag["name"].lower()] = tid
        return tag

    def _tag_refs(self, entity: str, refs: Any, path: str, *, must_exist_ids: bool = True) -> list[tuple]:
        """Validate a list of ``{"id"}`` / ``{"name"}`` refs -> [("id", 5) | ("name", "x")]."""
        if not isinstance(refs, list):
            raise Invalid("InvalidType", path, "This value should be of type array.")
        out = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or (ref.get("id") is None and not ref.get("name")):
                raise Invalid("NotBlank", f"{path}.{i}", "Tag id or name is required.")
            if ref.get("id") is not None:
                tid = _int(ref["id"], f"{path}.{i}.id")
                if must_exist_ids and tid not in self.tags[entity]:
                    raise Invalid("NotFound", f"{path}.{i}.id", "Tag not found.")
                out.append(("id", tid))
            else:
                if not isinstance(ref["name"], str):
                    raise Invalid("InvalidType", f"{path}.{i}.name", "This value should be of type string.")
                out.append(("name", ref["name"]))
        return out

    def _resolve(self, entity: str, refs: list[tuple], *, create: bool) -> list[int]:
        ids = []
        for kind, value in refs:
            if kind == "id":
                if value in self.tags[entity]:
                    ids.append(value)
            else:
                tag = self.tag_by_name(entity, value, create=create)
                if tag is not None:
                    ids.append(tag["id"])
        return list(dict.fromkeys(ids))

    # -- rendering -------------------------------------------------------------------------------

    def link(self, entity: str, rid: int) -> dict:
        return {"self": {"href": f"{self.base}/api/v4/{entity}/{rid}"}}

    def render(self, entity: str, rec: dict, with_: set[str] = frozenset(), deleted: bool = False) -> dict:
        rid = rec["id"]
        out: dict[str, Any] = {"id": rid, "name": rec["name"]}
        if entity == "contacts":
            out.update(first_name=rec["first_name"], last_name=rec["last_name"])
        if entity == "leads":
            out["price"] = rec["price"]
        out.update(responsible_user_id=rec["responsible_user_id"], group_id=rec["group_id"])
        if entity == "leads":
            out.update(status_id=rec["status_id"], pipeline_id=rec["pipeline_id"], loss_reason_id=rec["loss_reason_id"])
        out.update(created_by=rec["created_by"], updated_by=rec["updated_by"], created_at=rec["created_at"],
                   updated_at=rec["updated_at"])
        if entity == "leads":
            out["closed_at"] = rec["closed_at"]
        out["closest_task_at"] = rec["closest_task_at"]
        out["is_deleted"] = deleted
        if entity == "contacts":
            out["is_unsorted"] = False
        out["custom_fields_values"] = copy.deepcopy(rec["custom_fields_values"]) if rec["custom_fields_values"] else None
        if entity == "leads":
            out.update(score=rec["score"], labor_cost=rec["labor_cost"])
        out["account_id"] = self.account_id
        out["_links"] = self.link(entity, rid)
        tags = [dict(self.tags[entity][t]) for t in rec["tags"] if t in self.tags[entity]]
        embedded: dict[str, Any] = {"tags": tags}
        if entity == "leads" and "contacts" in with_:
            embedded["contacts"] = [{"id": cid, "is_main": main, "_links": self.link("contacts", cid)}
                                    for cid, main in rec["contacts"]]
        if entity != "companies":
            cid = rec.get("company_id")
            embedded["companies"] = [{"id": cid, "_links": self.link("companies", cid)}] if cid else []
        if entity == "companies" and "contacts" in with_:
            embedded["contacts"] = [{"id": c, "_links": self.link("contacts", c)}
                                    for c in sorted(self.contacts_of_company.get(rid, ()))]
        if entity in ("contacts", "companies") and "leads" in with_:
            index = self.leads_of_contact if entity == "contacts" else self.leads_of_company
            embedded["leads"] = [{"id": lid, "_links": self.link("leads", lid)} for lid in sorted(index.get(rid, ()))]
        if "catalog_elements" in with_:
            embedded["catalog_elements"] = Catalogs.embedded(rec) if entity == "leads" else []
        if entity == "leads" and "loss_reason" in with_:
            embedded["loss_reason"] = []
        out["_embedded"] = embedded
        raw = self.overrides.get((entity, rid))
        if raw:
            out.update(copy.deepcopy(raw))
        return out

    # -- events ----------------------------------------------------------------------------------

    def event(self, etype: str, entity: str, entity_id: int, *, by: int, before=None, after=None) -> None:
        now = self.now()
        self._event_seq += 1
        singular = SINGULAR.get(entity, entity)
        self.events.append({
            "id": ulid(int(now * 1000)), "type": etype, "entity_id": entity_id, "entity_type": singular,
            "created_by": by, "created_at": int(now), "value_after": after or [], "value_before": before or [],
            "account_id": self.account_id, "_seq": self._event_seq,
        })

    def _field_events(self, entity: str, rec: dict, old_name: Any, old_fields: dict, user_id: int) -> None:
        """An update that changes the name or custom field values leaves ``name_field_changed`` and
        ``custom_field_{FIELD_ID}_value_changed`` events (docs events-and-notes: the event types; Kommo
        events-filtration: the per-field type name). Choice: ``value_before``/``value_after`` carry
        ``{"name_field_value": {"name"}}`` and ``{"custom_field_value": {"field_id", "field_type", "text"}}``."""
        if rec.get("name") != old_name:
            self.event("name_field_changed", entity, rec["id"], by=user_id,
                       before=[{"name_field_value": {"name": old_name}}],
                       after=[{"name_field_value": {"name": rec.get("name")}}])
        new_fields = {v["field_id"]: v for v in rec.get("custom_fields_values") or []}

        def shown(item: dict | None) -> list[dict]:
            if item is None:
                return []
            text = ", ".join(str(v.get("value", "")) for v in item.get("values") or [])
            return [{"custom_field_value": {"field_id": item["field_id"], "field_type": item["field_type"], "text": text}}]

        for field_id in sorted(old_fields.keys() | new_fields.keys()):
            before, after = old_fields.get(field_id), new_fields.get(field_id)
            if (before or {}).get("values") != (after or {}).get("values"):
                self.event(f"custom_field_{field_id}_value_changed", entity, rec["id"], by=user_id,
                           before=shown(before), after=shown(after))

    def render_event(self, ev: dict) -> dict:
        out = {k: v for k, v in ev.items() if k != "_seq"}
        entity = ev["entity_type"] + ("s" if ev["entity_type"] != "company" else "")
        entity = "companies" if ev["entity_type"] == "company" else entity
        out["_links"] = {"self": {"href": f"{self.base}/api/v4/events/{ev['id']}"}}
        out["_embedded"] = {"entity": {"id": ev["entity_id"], "_links": self.link(entity, ev["entity_id"])}}
        return out

    # -- writes ----------------------------------------------------------------------------------

    def write(self, entity: str, items: list, *, user_id: int, create: bool) -> list[dict]:
        """Validate then apply a POST (create) or PATCH (update) batch; returns the answer items."""
        problems: list[tuple[str, list]] = []
        prepared = []
        for index, item in enumerate(items):
            request_id = str(item.get("request_id", index)) if isinstance(item, dict) else str(index)
            try:
                if not isinstance(item, dict):
                    raise Invalid("InvalidType", "", "This value should be of type object.")
                prepared.append((request_id, self._prepare(entity, item, create=create)))
            except Invalid as exc:
                problems.append((request_id, [exc.error]))
        if problems:
            raise ValidationFailed(problems)
        return [self._apply(entity, plan, request_id, user_id=user_id, create=create) for request_id, plan in prepared]

    @staticmethod
    def _prepare_stage(item: dict, rec: dict | None, sets: dict) -> None:
        """pipeline_id / status_id of a lead (§2: a stage is the pair; 142/143 exist in every pipeline).

        Choices (the docs only say status_id defaults to the first stage of the main pipeline): a
        status without a pipeline moves the lead to that status's pipeline (142/143 keep the lead's
        pipeline); a pipeline without a status puts the lead on that pipeline's first working status
        unless it already is in it; a status that is not in the given pipeline is NotSupportedChoice on
        ``status_id``, an unknown pipeline NotSupportedChoice on ``pipeline_id``.
        """
        current = rec["pipeline_id"] if rec is not None else PIPELINE_ID
        pipeline = None
        if "pipeline_id" in item:
            pipeline = _int(item["pipeline_id"], "pipeline_id")
            if pipeline not in PIPELINES:
                raise Invalid("NotSupportedChoice", "pipeline_id", "The value you selected is not a valid choice.")
        if "status_id" in item:
            status = _int(item["status_id"], "status_id")
            target = pipeline or pipeline_of_status(status) or current
            if status not in PIPELINE_STATUS_IDS[target]:
                raise Invalid("NotSupportedChoice", "status_id", "The value you selected is not a valid choice.")
            sets["status_id"], sets["pipeline_id"] = status, target
        elif pipeline is not None and (rec is None or pipeline != current):
            sets["status_id"], sets["pipeline_id"] = PIPELINES[pipeline][4], pipeline

    def _prepare(self, entity: str, item: dict, *, create: bool) -> dict:
        plan: dict[str, Any] = {"set": {}}
        rec = None
        if not create:
            if item.get("id") is None:
                raise Invalid("NotBlank", "id", "This value should not be blank.")
            rid = _int(item["id"], "id")
            rec = self.rows[entity].get(rid)
            if rec is None:
                raise Invalid("NotFound", "id", "Entity not found.")
            plan["id"] = rid
        sets = plan["set"]
        for key in ("name", "first_name", "last_name") if entity == "contacts" else ("name",):
            if key in item:
                if item[key] is not None and not isinstance(item[key], str):
                    raise Invalid("InvalidType", key, "This value should be of type string.")
                sets[key] = item[key] or ""
        for key in ("responsible_user_id", "created_by", "updated_by"):
            if key in item:
                uid = _int(item[key], key)
                if uid not in self.users and not (key == "created_by" and uid == 0):
                    raise Invalid("NotSupportedChoice", key, "The value you selected is not a valid choice.")
                sets[key] = uid
        for key in ("created_at", "updated_at"):
            if key in item:
                sets[key] = _int(item[key], key)
        if entity == "leads":
            if "price" in item:
                sets["price"] = _int(item["price"], "price", allow_none=True) or 0
            self._prepare_stage(item, rec, sets)
            if "closed_at" in item:
                sets["closed_at"] = _int(item["closed_at"], "closed_at", allow_none=True)
            if "loss_reason_id" in item:
                sets["loss_reason_id"] = _int(item["loss_reason_id"], "loss_reason_id", allow_none=True)
        if "custom_fields_values" in item:
            plan["fields"] = self._prepare_fields(entity, item["custom_fields_values"])
        embedded = item.get("_embedded")
        if embedded is not None and not isinstance(embedded, dict):
            raise Invalid("InvalidType", "_embedded", "This value should be of type object.")
        embedded = embedded or {}
        if "tags" in embedded:
            plan["tags_replace"] = [] if embedded["tags"] is None else self._tag_refs(entity, embedded["tags"], "_embedded.tags")
        else:
            if item.get("tags_to_add") is not None:
                plan["tags_add"] = self._tag_refs(entity, item["tags_to_add"], "tags_to_add")
            if item.get("tags_to_delete") is not None:
                plan["tags_delete"] = self._tag_refs(entity, item["tags_to_delete"], "tags_to_delete", must_exist_ids=False)
        if embedded.get("companies"):
            ref = embedded["companies"][0] if isinstance(embedded["companies"], list) else None
            cid = _int((ref or {}).get("id"), "_embedded.companies.0.id")
            if cid not in self.rows["companies"]:
                raise Invalid("NotFound", "_embedded.companies.0.id", "Company not found.")
            sets["company_id"] = cid
        if entity == "leads" and embedded.get("contacts"):
            links = []
            for i, ref in enumerate(embedded["contacts"] if isinstance(embedded["contacts"], list) else []):
                cid = _int((ref or {}).get("id"), f"_embedded.contacts.{i}.id")
                if cid not in self.rows["contacts"]:
                    raise Invalid("NotFound", f"_embedded.contacts.{i}.id", "Contact not found.")
                links.append((cid, bool(ref.get("is_main"))))
            plan["contacts"] = links
        if create and entity == "contacts" and "name" not in sets:
            sets["name"] = " ".join(x for x in (sets.get("first_name"), sets.get("last_name")) if x)
        return plan

    def _prepare_fields(self, entity: str, values: Any) -> list[tuple[dict, list | None]]:
        if not isinstance(values, list):
            raise Invalid("InvalidType", "custom_fields_values", "This value should be of type array.")
        out = []
        for i, item in enumerate(values):
            path = f"custom_fields_values.{i}"
            if not isinstance(item, dict):
                raise Invalid("InvalidType", path, "This value should be of type object.")
            field = self.fields.find(entity, field_id=item.get("field_id"), code=item.get("field_code"))
            if field is None:
                raise Invalid("NotSupportedChoice", f"{path}.field_id", "The value you selected is not a valid choice.")
            raw = item.get("values")
            if raw is None or raw == []:
                out.append((field, None))
                continue
            if not isinstance(raw, list):
                raise Invalid("InvalidType", f"{path}.values", "This value should be of type array.")
            rendered = []
            for j, value in enumerate(raw):
                vpath = f"{path}.values.{j}"
                if not isinstance(value, dict) or "value" not in value:
                    raise Invalid("NotBlank", f"{vpath}.value", "This value should not be blank.")
                rendered.append(self._field_value(field, value, vpath))
            out.append((field, rendered))
        return out

    def _field_value(self, field: dict, value: dict, path: str) -> dict:
        ftype = field["type"]
        raw = value["value"]
        if ftype == "multitext":
            enum = self.fields.enum_of(field, value.get("enum_id"), value.get("enum_code") or
                                       (None if value.get("enum_id") is not None else "WORK"))
            if enum is None:
                raise Invalid("NotSupportedChoice", f"{path}.enum_code", "The value you selected is not a valid choice.")
            return {"value": str(raw), "enum_id": enum["id"], "enum_code": enum["value"]}
        if ftype in ("birthday", "date", "date_time"):
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return {"value": int(raw)}
            try:
                moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            except ValueError:
                raise Invalid("InvalidType", f"{path}.value", "This value is not a valid date.") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=self.tz)
            if ftype != "date_time":
                moment = datetime.combine(moment.date(), dtime(0, 0), self.tz)
            return {"value": int(moment.timestamp())}
        if ftype == "numeric":
            return {"value": str(raw)}
        if ftype == "checkbox":
            return {"value": bool(raw)}
        return {"value": raw if isinstance(raw, str) else str(raw)}

    def _apply(self, entity: str, plan: dict, request_id: str, *, user_id: int, create: bool) -> dict:
        now = int(self.now())
        if create:
            rid = self._next[entity]
            rec = {"id": rid, "created_at": now, "updated_at": now, "created_by": user_id, "updated_by": user_id,
                   "responsible_user_id": user_id}
            self.insert(entity, rec)
            rec = self.rows[entity][rid]
            if entity == "leads":
                rec["name"] = f"Сделка #{rid}"
            if entity == "companies":
                rec["name"] = f"Компания #{rid}"
        else:
            rec = self.rows[entity][plan["id"]]
            rid = rec["id"]
        self._index(entity, rec, add=False)
        old_status, old_pipeline = rec.get("status_id"), rec.get("pipeline_id")
        old_responsible = rec.get("responsible_user_id")
        old_tags = list(rec["tags"])
        old_name = rec.get("name")
        old_fields = {v["field_id"]: v for v in rec.get("custom_fields_values") or []}
        sets = dict(plan["set"])
        rec.update({k: v for k, v in sets.items() if k not in ("updated_at", "updated_by")})
        if "fields" in plan:
            current = {v["field_id"]: v for v in rec["custom_fields_values"] or []}
            for field, values in plan["fields"]:
                if values is None:
                    current.pop(field["id"], None)
                else:
                    current[field["id"]] = self.fields.value(field, values)
            rec["custom_fields_values"] = list(current.values()) or None
        if "tags_replace" in plan:
            rec["tags"] = self._resolve(entity, plan["tags_replace"], create=True)
        else:
            if "tags_add" in plan:
                rec["tags"] = list(dict.fromkeys(rec["tags"] + self._resolve(entity, plan["tags_add"], create=True)))
            if "tags_delete" in plan:
                gone = set(self._resolve(entity, plan["tags_delete"], create=False))
                rec["tags"] = [t for t in rec["tags"] if t not in gone]
        if "contacts" in plan:
            known = dict(rec["contacts"])
            for cid, main in plan["contacts"]:
                known[cid] = main
            if known and not any(known.values()):
                first = next(iter(known))
                known[first] = True
            if sum(known.values()) > 1:  # one main contact: the last one named as main wins
                mains = [cid for cid, main in plan["contacts"] if main]
                keep = mains[-1] if mains else next(c for c, m in known.items() if m)
                known = {c: c == keep for c in known}
            rec["contacts"] = list(known.items())
        if entity == "leads":
            if rec["status_id"] in (WON, LOST):
                if "closed_at" not in sets and (old_status not in (WON, LOST) or rec["closed_at"] is None):
                    rec["closed_at"] = now
            elif "closed_at" not in sets:
                rec["closed_at"] = None
        rec["updated_at"] = sets.get("updated_at", now)
        rec["updated_by"] = sets.get("updated_by", user_id)
        self._index(entity, rec, add=True)
        self.version += 1
        if create:
            after = ([{"lead_status": {"id": rec["status_id"], "pipeline_id": rec["pipeline_id"]}}]
                     if entity == "leads" else [])
            self.event(f"{SINGULAR[entity]}_added", entity, rid, by=user_id, after=after)
        elif entity == "leads" and (old_status, old_pipeline) != (rec["status_id"], rec["pipeline_id"]):
            self.event("lead_status_changed", entity, rid, by=user_id,
                       before=[{"lead_status": {"id": old_status, "pipeline_id": old_pipeline}}],
                       after=[{"lead_status": {"id": rec["status_id"], "pipeline_id": rec["pipeline_id"]}}])
        if not create:
            self._field_events(entity, rec, old_name, old_fields, user_id)
        added = [t for t in rec["tags"] if t not in old_tags]
        removed = [t for t in old_tags if t not in rec["tags"]]
        if added:
            self.event("entity_tag_added", entity, rid, by=user_id,
                       after=[{"tag": {"name": self.tags[entity][t]["name"]}} for t in added])
        if removed:
            self.event("entity_tag_deleted", entity, rid, by=user_id,
                       before=[{"tag": {"name": self.tags[entity][t]["name"]}} for t in removed if t in self.tags[entity]])
        if self.on_change is not None:
            actions = ["add"] if create else ["update"]
            if not create and entity == "leads" and (old_status, old_pipeline) != (rec["status_id"], rec["pipeline_id"]):
                actions.append("status")
            if not create and old_responsible != rec["responsible_user_id"]:
                actions.append("responsible")
            self.on_change(entity, actions, rec, {"status_id": old_status, "pipeline_id": old_pipeline,
                                                  "responsible_user_id": old_responsible})
        out = {"id": rid, "request_id": request_id} if create else {"id": rid, "updated_at": rec["updated_at"]}
        if not create:
            out["request_id"] = request_id
        out["_links"] = self.link(entity, rid)
        return out

    def delete(self, entity: str, rid: int, *, user_id: int = ADMIN_USER_ID) -> bool:
        rec = self.rows[entity].pop(rid, None)
        if rec is None:
            return False
        self._index(entity, rec, add=False)
        self.trash[entity][rid] = rec
        if entity == "contacts":
            for lid in self.leads_of_contact.pop(rid, set()):
                lead = self.rows["leads"].get(lid)
                if lead:
                    lead["contacts"] = [(c, m) for c, m in lead["contacts"] if c != rid]
        if entity == "companies":
            for table, ids in (("leads", self.leads_of_company.pop(rid, set())),
                               ("contacts", self.contacts_of_company.pop(rid, set()))):
                for other in ids:
                    if other in self.rows[table]:
                        self.rows[table][other]["company_id"] = None
        self.version += 1
        self.event(f"{SINGULAR[entity]}_deleted", entity, rid, by=user_id)
        if self.on_change is not None:
            self.on_change(entity, ["delete"], rec, {})
        return True

    # -- tasks and notes -------------------------------------------------------------------------

    def add_tasks(self, items: list, *, user_id: int) -> list[dict]:
        problems, plans = [], []
        for index, item in enumerate(items):
            request_id = str(item.get("request_id", index)) if isinstance(item, dict) else str(index)
            errs = []
            if not isinstance(item, dict):
                problems.append((request_id, [("InvalidType", "", "This value should be of type object.")]))
                continue
            if not item.get("text") or not isinstance(item.get("text"), str):
                errs.append(("NotBlank", "text", "This value should not be blank."))
            if item.get("complete_till") is None:
                errs.append(("NotBlank", "complete_till", "This value should not be blank."))
            try:
                till = _int(item.get("complete_till"), "complete_till") if item.get("complete_till") is not None else 0
                etype = item.get("entity_type")
                eid = _int(item["entity_id"], "entity_id") if item.get("entity_id") is not None else None
                if (etype is None) != (eid is None):
                    raise Invalid("NotBlank", "entity_type" if etype is None else "entity_id",
                                  "entity_id and entity_type go together.")
                if etype is not None and (etype not in ENTITY_TYPES or eid not in self.rows[etype]):
                    raise Invalid("NotSupportedChoice", "entity_id", "The value you selected is not a valid choice.")
                responsible = _int(item.get("responsible_user_id", user_id), "responsible_user_id")
                if responsible not in self.users:
                    raise Invalid("NotSupportedChoice", "responsible_user_id", "The value you selected is not a valid choice.")
                task_type = _int(item.get("task_type_id", 1), "task_type_id")
                if task_type not in (1, 2):
                    raise Invalid("NotSupportedChoice", "task_type_id", "The value you selected is not a valid choice.")
            except Invalid as exc:
                errs.append(exc.error)
            if errs:
                problems.append((request_id, errs))
            else:
                plans.append((request_id, item, till, etype, eid, responsible, task_type))
        if problems:
            raise ValidationFailed(problems)
        out = []
        now = int(self.now())
        for request_id, item, till, etype, eid, responsible, task_type in plans:
            tid = self._next["task"]
            self._next["task"] += 1
            done = bool(item.get("is_completed", False))
            self.tasks[tid] = {"id": tid, "created_by": user_id, "updated_by": user_id, "created_at": now,
                               "updated_at": now, "responsible_user_id": responsible, "group_id": 0,
                               "entity_id": eid, "entity_type": etype, "duration": int(item.get("duration") or 0),
                               "is_completed": done, "task_type_id": task_type, "text": item["text"],
                               "result": item.get("result") or [], "complete_till": till, "account_id": self.account_id}
            if etype and not done:
                self._closest_task(etype, eid)
            self.event("task_added", "tasks", tid, by=user_id)
            out.append({"id": tid, "request_id": request_id, "_links": self.link("tasks", tid)})
        self.version += 1
        return out

    def update_tasks(self, items: list, *, user_id: int) -> list[dict]:
        problems = []
        for index, item in enumerate(items):
            rid = str(item.get("request_id", index)) if isinstance(item, dict) else str(index)
            if not isinstance(item, dict) or item.get("id") not in self.tasks:
                problems.append((rid, [("NotFound", "id", "Task not found.")]))
        if problems:
            raise ValidationFailed(problems)
        out = []
        now = int(self.now())
        for index, item in enumerate(items):
            task = self.tasks[item["id"]]
            for key in ("text", "complete_till", "is_completed", "result", "responsible_user_id", "task_type_id", "duration"):
                if key in item:
                    task[key] = item[key]
            task["updated_at"], task["updated_by"] = now, user_id
            if task["entity_type"]:
                self._closest_task(task["entity_type"], task["entity_id"])
            if item.get("is_completed"):
                self.event("task_completed", "tasks", task["id"], by=user_id)
            out.append({"id": task["id"], "updated_at": now, "request_id": str(item.get("request_id", index)),
                        "_links": self.link("tasks", task["id"])})
        self.version += 1
        return out

    def _closest_task(self, entity: str, eid: int) -> None:
        rec = self.rows[entity].get(eid)
        if rec is not None:
            open_tills = [t["complete_till"] for t in self.tasks.values()
                          if t["entity_type"] == entity and t["entity_id"] == eid and not t["is_completed"]]
            rec["closest_task_at"] = min(open_tills) if open_tills else None

    def render_task(self, task: dict) -> dict:
        return {**task, "_links": self.link("tasks", task["id"])}

    def add_notes(self, entity: str, items: list, *, user_id: int, entity_id: int | None = None) -> list[dict]:
        problems, plans = [], []
        for index, item in enumerate(items):
            request_id = str(item.get("request_id", index)) if isinstance(item, dict) else str(index)
            if not isinstance(item, dict):
                problems.append((request_id, [("InvalidType", "", "This value should be of type object.")]))
                continue
            eid = entity_id if entity_id is not None else item.get("entity_id")
            errs = []
            try:
                eid = _int(eid, "entity_id")
                if eid not in self.rows[entity]:
                    raise Invalid("NotSupportedChoice", "entity_id", "The value you selected is not a valid choice.")
            except Invalid as exc:
                errs.append(exc.error)
            if item.get("note_type") not in NOTE_TYPES:
                errs.append(("NotSupportedChoice", "note_type", "The value you selected is not a valid choice."))
            if not isinstance(item.get("params", {}), dict):
                errs.append(("InvalidType", "params", "This value should be of type object."))
            if errs:
                problems.append((request_id, errs))
            else:
                plans.append((request_id, item, eid))
        if problems:
            raise ValidationFailed(problems)
        now = int(self.now())
        out = []
        for request_id, item, eid in plans:
            nid = self._next["note"]
            self._next["note"] += 1
            self.notes[nid] = {"id": nid, "entity_id": eid, "created_by": user_id, "updated_by": user_id,
                               "created_at": now, "updated_at": now, "responsible_user_id": user_id, "group_id": 0,
                               "note_type": item["note_type"], "params": item.get("params") or {},
                               "account_id": self.account_id, "_entity": entity}
            if item["note_type"] == "common":
                self.event("common_note_added", entity, eid, by=user_id, after=[{"note": {"id": nid}}])
            out.append({"id": nid, "entity_id": eid, "request_id": request_id,
                        "_links": {"self": {"href": f"{self.base}/api/v4/{entity}/{eid}/notes/{nid}"}}})
        self.version += 1
        return out

    def render_note(self, note: dict) -> dict:
        out = {k: v for k, v in note.items() if k != "_entity"}
        out["_links"] = {"self": {"href": f"{self.base}/api/v4/{note['_entity']}/{note['entity_id']}/notes/{note['id']}"}}
        return out

    # -- state -----------------------------------------------------------------------------------

    def counts(self) -> dict:
        return {t: len(self.rows[t]) for t in ENTITY_TYPES}

    def state(self, entity: str | None = None) -> dict:
        from .model import all_pipelines_json

        out: dict[str, Any] = {}
        if entity in (None, "catalog_elements"):  # the products linked to each lead
            out["catalog_elements"] = {str(rid): Catalogs.embedded(r) for rid, r in sorted(self.rows["leads"].items())
                                       if r.get("catalog_elements")}
        for t in ENTITY_TYPES:
            if entity in (None, t):
                with_ = {"contacts"} if t == "leads" else {"leads"}
                out[t] = [self.render(t, r, with_) for r in sorted(self.rows[t].values(), key=lambda r: r["id"])]
        if entity is None:
            out["tasks"] = [self.render_task(t) for t in self.tasks.values()]
            out["notes"] = [self.render_note(n) for n in self.notes.values()]
            out["events"] = [self.render_event(e) for e in self.events]
            out["tags"] = {t: list(self.tags[t].values()) for t in ENTITY_TYPES}
            out["custom_fields"] = {t: self.fields.render(t, self.base) for t in ENTITY_TYPES}
            out["users"] = list(self.users.values())
            out["pipelines"] = all_pipelines_json(self.account_id, self.base)
            out["deleted"] = {t: sorted(self.trash[t]) for t in ENTITY_TYPES}
            out["salesbot_runs"] = list(getattr(self, "salesbot_runs", []))
        return out


def iter_ids(values: Iterable) -> list[int]:
    return [int(v) for v in values]
