"""Legacy CRM methods: ``crm.contact|company|deal.list|get|add|update|delete|fields`` and
``crm.deal.contact.items.get|set``.

Sources (b24restdocs): api-reference/crm/contacts/crm-contact-{list,get,add,update,delete,fields}.md,
companies/crm-company-*.md, deals/crm-deal-*.md, deals/contacts/crm-deal-contact-items-{get,set}.md.
Errors are the documented legacy ones: HTTP 400 with an empty ``error`` ("ID is not defined or invalid.",
"Not found", "Contact is not found", "Company is not found", "Parameter 'fields' must be array.");
crm.contact.delete on a missing id answers ERROR_CORE "Element not found" (crm-contact-delete.md).
``add`` returns the new id as an integer, ``update``/``delete`` return ``true``; ``crm.deal.contact.items.get``
returns integers (CONTACT_ID, SORT, ROLE_ID), unlike the legacy lists.
"""

from __future__ import annotations

from .decode import php_intval
from .errors import ApiError, core, legacy
from .fields import CATALOGUE
from .filters import parse_filter, parse_order, run_list
from .limits import WRITE_COST
from .records import apply_fields, create, delete, render, render_full, resolve_select
from .registry import Call, Result, method
from .userfields import uf_field_info

ENTITIES = ("contact", "company", "deal")
_UPDATE_MISSING = {"contact": "Contact is not found", "company": "Company is not found", "deal": "Not found"}


def _id(call: Call) -> int:
    value = php_intval(call.params.get("id"))
    if value <= 0:
        raise legacy("ID is not defined or invalid.")
    return value


def _fields(call: Call) -> dict:
    fields = call.params.get("fields")
    if fields == [] or fields is None:
        fields = {} if fields == [] else None
    if not isinstance(fields, dict):
        raise legacy("Parameter 'fields' must be array.")
    extra = call.params.get("params")
    if extra not in (None, "", []) and not isinstance(extra, dict):
        raise legacy("Parameter 'params' must be array.")
    return fields


def _register(entity: str) -> None:
    prefix = f"crm.{entity}"

    @method(f"{prefix}.list")
    def list_(call: Call) -> Result:
        store = call.store
        conds = parse_filter(store, entity, call.params.get("filter"), call.warn)
        known = lambda name: name in CATALOGUE[entity] or name in store.userfields[entity]
        order = parse_order(call.params.get("order"), known, call.warn, f"{prefix}.list")
        start = php_intval(call.params.get("start", 0))
        names = resolve_select(store, entity, call.params.get("select"), call.warn)
        rows, total, nxt, cost = run_list(store, entity, conds, order, start)
        return Result([render(store, entity, row, names) for row in rows], total=total, next=nxt, cost=cost)

    @method(f"{prefix}.get")
    def get(call: Call) -> Result:
        record_id = _id(call)
        row = call.store.tables[entity].rows.get(record_id)
        if row is None:
            raise legacy("Not found")
        return Result(render_full(call.store, entity, row))

    @method(f"{prefix}.add")
    def add(call: Call) -> Result:
        fields = _fields(call)
        new_id = create(call.store, entity, fields, user_id=call.user_id, now=call.now)
        call.portal.apps.emit(f"ONCRM{entity.upper()}ADD", new_id, call.user_id)
        return Result(new_id, cost=WRITE_COST)

    @method(f"{prefix}.update")
    def update(call: Call) -> Result:
        record_id = _id(call)
        table = call.store.tables[entity]
        if record_id not in table.rows:
            raise legacy(_UPDATE_MISSING[entity])
        fields = _fields(call)
        row = apply_fields(call.store, entity, table.rows[record_id], fields, is_new=False,
                           user_id=call.user_id, now=call.now)
        table.rows[record_id] = row
        call.portal.apps.emit(f"ONCRM{entity.upper()}UPDATE", record_id, call.user_id)
        return Result(True, cost=WRITE_COST)

    @method(f"{prefix}.delete")
    def delete_(call: Call) -> Result:
        record_id = _id(call)
        if record_id not in call.store.tables[entity].rows:
            if entity == "contact":
                raise core("Element not found")
            raise legacy(_UPDATE_MISSING[entity])
        delete(call.store, entity, record_id)
        call.portal.apps.emit(f"ONCRM{entity.upper()}DELETE", record_id, call.user_id)
        return Result(True, cost=WRITE_COST)

    @method(f"{prefix}.fields")
    def fields_(call: Call) -> Result:
        out = {name: spec.info() for name, spec in CATALOGUE[entity].items()}
        for name, definition in call.store.userfields[entity].items():
            out[name] = uf_field_info(definition)
        return Result(out)


for _entity in ENTITIES:
    _register(_entity)


def _deal(call: Call) -> dict:
    record_id = _id(call)
    row = call.store.tables["deal"].rows.get(record_id)
    if row is None:
        raise legacy("Not found")
    return row


@method("crm.deal.contact.items.get")
def deal_contacts_get(call: Call) -> Result:
    row = _deal(call)
    ids = row.get("CONTACT_IDS") or []
    return Result([{"CONTACT_ID": cid, "SORT": (i + 1) * 10, "ROLE_ID": 0, "IS_PRIMARY": "Y" if i == 0 else "N"}
                   for i, cid in enumerate(ids)])


@method("crm.deal.contact.items.set")
def deal_contacts_set(call: Call) -> Result:
    row = _deal(call)
    items = call.params.get("items")
    if items in (None, ""):
        raise ApiError(400, "", "The parameter items is not defined or invalid.")
    items = items if isinstance(items, list) else list(items.values()) if isinstance(items, dict) else []
    entries = []
    for pos, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        cid = php_intval(item.get("CONTACT_ID"))
        if cid <= 0:
            continue
        sort = php_intval(item.get("SORT")) or (pos + 1) * 10
        primary = str(item.get("IS_PRIMARY", "")).upper() == "Y"
        entries.append((not primary, sort, pos, cid))
    ids = [cid for *_, cid in sorted(entries)]
    fields = {"CONTACT_IDS": list(dict.fromkeys(ids))}
    new = apply_fields(call.store, "deal", row, fields, is_new=False, user_id=call.user_id, now=call.now)
    call.store.tables["deal"].rows[row["ID"]] = new
    return Result(True, cost=WRITE_COST)
