"""``crm.contact|company|deal.userfield.add|get|list|update|delete``.

Sources (b24restdocs): api-reference/crm/contacts/userfield/crm-contact-userfield-{add,get,list,update,
delete}.md, api-reference/data-types.md#uf_enum_element, crm/universal/crm-item-add.md (enumeration items
in field descriptions as ``items:[{"ID","VALUE"}]``).

* FIELD_NAME gets the ``UF_CRM_`` prefix (``X`` -> ``UF_CRM_X``, ``UF_X`` -> ``UF_CRM_X``); lower case is
  upper-cased; other characters than A-Z 0-9 _ or more than 50 characters -> ERROR_CORE.
* Missing FIELD_NAME / USER_TYPE_ID -> 400 with an empty code ("The 'FIELD_NAME' field is not found.").
* LABEL fills EDIT_FORM_LABEL, LIST_COLUMN_LABEL, LIST_FILTER_LABEL, ERROR_MESSAGE, HELP_MESSAGE when
  those are not given. ``boolean`` cannot be multiple.
* LIST (enumeration options ``{VALUE, DEF, SORT, XML_ID}``): on update an item with ``ID`` changes that
  option, ``DEL:"Y"`` deletes it, an item without ``ID`` adds one; options not mentioned stay. XML_ID is
  generated when missing and must be unique within the field (ERROR_CORE otherwise).
* A missing field id on get/update/delete -> ERROR_NOT_FOUND "The entity with ID 'N' is not found.".
* list output: strings for ID/SORT, ``LIST`` for enumeration fields; result also carries ``total``.
"""

from __future__ import annotations

import copy
import hashlib
import re

from .decode import php_intval
from .errors import ApiError, core, legacy
from .filters import simple_filter
from .limits import WRITE_COST
from .registry import Call, Result, method
from .store import UF_ENTITY

USER_TYPES = {"string", "integer", "double", "boolean", "datetime", "date", "money", "url", "address",
              "enumeration", "file", "employee", "crm_status", "iblock_section", "iblock_element", "crm"}
_LABELS = ("EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL", "ERROR_MESSAGE", "HELP_MESSAGE")
_FLAGS = ("MANDATORY", "SHOW_IN_LIST", "EDIT_IN_LIST", "IS_SEARCHABLE")


def _label(value) -> str | None:
    if isinstance(value, dict):
        return str(value.get("en") or next(iter(value.values()), "")) or None
    return None if value in (None, "") else str(value)


def _flag(value, default: str = "N") -> str:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return "Y" if value else "N"
    return "Y" if str(value).strip().upper() in ("Y", "1", "TRUE") else "N"


def normalize_name(raw: str) -> str:
    name = str(raw).strip().upper()
    if name.startswith("UF_CRM_"):
        full = name
    elif name.startswith("UF_"):
        full = "UF_CRM_" + name[3:]
    else:
        full = "UF_CRM_" + name
    if not re.fullmatch(r"[A-Z0-9_]+", full):
        raise core("Field name contains invalid characters. Allowed characters are: A-Z, 0-9 and _")
    if len(full) > 50:
        raise core("Field name is too long (more than 50 characters).")
    return full


def _apply_list(call: Call, definition: dict, items) -> None:
    options = definition.setdefault("LIST", [])
    items = items if isinstance(items, list) else list(items.values()) if isinstance(items, dict) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        option_id = php_intval(item.get("ID"))
        existing = next((o for o in options if o["ID"] == option_id), None) if option_id else None
        if existing is not None:
            if _flag(item.get("DEL")) == "Y":
                options.remove(existing)
                continue
            target = existing
        else:
            if option_id or item.get("VALUE") in (None, ""):
                continue
            target = {"ID": call.store.new_enum_id(), "VALUE": "", "DEF": "N", "SORT": 100, "XML_ID": None}
            options.append(target)
        if item.get("VALUE") not in (None, ""):
            target["VALUE"] = str(item["VALUE"])
        if "DEF" in item:
            target["DEF"] = _flag(item["DEF"])
        if "SORT" in item:
            target["SORT"] = php_intval(item["SORT"])
        if item.get("XML_ID") not in (None, ""):
            target["XML_ID"] = str(item["XML_ID"])
        if not target["XML_ID"]:
            target["XML_ID"] = hashlib.md5(f"{definition['FIELD_NAME']}:{target['ID']}".encode()).hexdigest()
        clash = [o for o in options if o is not target and o["XML_ID"] == target["XML_ID"]]
        if clash:
            raise core(f"A list item with XML_ID={target['XML_ID']} already exists")
    options.sort(key=lambda o: (o["SORT"], o["ID"]))


def render_definition(definition: dict) -> dict:
    out = {k: v for k, v in definition.items() if k != "LIST"}
    out["ID"] = str(definition["ID"])
    out["SORT"] = str(definition["SORT"])
    if definition["USER_TYPE_ID"] == "enumeration":
        out["LIST"] = [{"ID": str(o["ID"]), "SORT": str(o["SORT"]), "VALUE": o["VALUE"], "DEF": o["DEF"],
                        "XML_ID": o["XML_ID"]} for o in definition.get("LIST", [])]
    return out


def uf_field_info(definition: dict) -> dict:
    """How ``crm.<entity>.fields`` describes a user field."""
    label = definition.get("EDIT_FORM_LABEL") or definition["FIELD_NAME"]
    info = {"type": definition["USER_TYPE_ID"], "isRequired": definition["MANDATORY"] == "Y", "isReadOnly": False,
            "isImmutable": False, "isMultiple": definition["MULTIPLE"] == "Y", "isDynamic": True,
            "title": definition["FIELD_NAME"], "listLabel": definition.get("LIST_COLUMN_LABEL") or label,
            "formLabel": label, "filterLabel": definition.get("LIST_FILTER_LABEL") or label,
            "settings": definition.get("SETTINGS") or {}}
    if definition["USER_TYPE_ID"] == "enumeration":
        info["items"] = [{"ID": str(o["ID"]), "VALUE": o["VALUE"]} for o in definition.get("LIST", [])]
    return info


def add_userfield(call: Call, entity: str, fields: dict) -> int:
    if not isinstance(fields, dict):
        raise legacy("Parameter 'fields' must be array.")
    if fields.get("FIELD_NAME") in (None, ""):
        raise legacy("The 'FIELD_NAME' field is not found.")
    if fields.get("USER_TYPE_ID") in (None, ""):
        raise legacy("The 'USER_TYPE_ID' field is not found.")
    kind = str(fields["USER_TYPE_ID"])
    if kind not in USER_TYPES:
        raise core("Incorrect custom type specified.")
    name = normalize_name(fields["FIELD_NAME"])
    if name in call.store.userfields[entity]:
        raise core(f"The field {name} already exists.")
    label = _label(fields.get("LABEL"))
    definition = {
        "ID": call.store.new_uf_id(), "ENTITY_ID": UF_ENTITY[entity], "FIELD_NAME": name, "USER_TYPE_ID": kind,
        "XML_ID": _label(fields.get("XML_ID")), "SORT": php_intval(fields.get("SORT")) or 100,
        "MULTIPLE": "N" if kind == "boolean" else _flag(fields.get("MULTIPLE")),
        "MANDATORY": _flag(fields.get("MANDATORY")), "SHOW_FILTER": str(fields.get("SHOW_FILTER") or "N"),
        "SHOW_IN_LIST": _flag(fields.get("SHOW_IN_LIST"), "Y"), "EDIT_IN_LIST": _flag(fields.get("EDIT_IN_LIST"), "Y"),
        "IS_SEARCHABLE": _flag(fields.get("IS_SEARCHABLE")), "SETTINGS": fields.get("SETTINGS") or {},
    }
    for key in _LABELS:
        definition[key] = _label(fields.get(key)) or label
    if kind == "enumeration":
        _apply_list(call, definition, fields.get("LIST") or [])
    call.store.userfields[entity][name] = definition
    return definition["ID"]


def _find(call: Call, entity: str) -> dict:
    uf_id = php_intval(call.params.get("id"))
    if uf_id <= 0:
        raise legacy("ID is not defined or invalid.")
    for definition in call.store.userfields[entity].values():
        if definition["ID"] == uf_id:
            return definition
    raise ApiError(400, "ERROR_NOT_FOUND", f"The entity with ID '{uf_id}' is not found.")


def _register(entity: str) -> None:
    prefix = f"crm.{entity}.userfield"

    @method(f"{prefix}.add")
    def add(call: Call) -> Result:
        return Result(add_userfield(call, entity, call.params.get("fields")), cost=WRITE_COST * 2)

    @method(f"{prefix}.get")
    def get(call: Call) -> Result:
        return Result(render_definition(_find(call, entity)))

    @method(f"{prefix}.list")
    def list_(call: Call) -> Result:
        rows = [render_definition(d) for d in call.store.userfields[entity].values()]
        rows = simple_filter(rows, call.params.get("filter"))
        order = call.params.get("order")
        order = order if isinstance(order, dict) and order else {"SORT": "ASC", "ID": "ASC"}
        for key, direction in reversed(list(order.items())):
            numeric = key in ("ID", "SORT")
            rows.sort(key=lambda r: (int(r.get(key) or 0) if numeric else str(r.get(key) or "")),
                      reverse=str(direction).upper() == "DESC")
        return Result(rows, total=len(rows))

    @method(f"{prefix}.update")
    def update(call: Call) -> Result:
        original = _find(call, entity)
        definition = copy.deepcopy(original)  # committed only when every change is valid
        fields = call.params.get("fields")
        if not isinstance(fields, dict):
            raise legacy("Parameter 'fields' must be array.")
        for key in _FLAGS:
            if key in fields:
                definition[key] = _flag(fields[key])
        if "SHOW_FILTER" in fields:
            definition["SHOW_FILTER"] = str(fields["SHOW_FILTER"])
        if "XML_ID" in fields:
            definition["XML_ID"] = _label(fields["XML_ID"])
        if "SORT" in fields and php_intval(fields["SORT"]) > 0:
            definition["SORT"] = php_intval(fields["SORT"])
        if isinstance(fields.get("SETTINGS"), dict):
            definition["SETTINGS"] = {**definition.get("SETTINGS", {}), **fields["SETTINGS"]}
        label = _label(fields.get("LABEL"))
        for key in _LABELS:
            if _label(fields.get(key)) or label:
                definition[key] = _label(fields.get(key)) or label
        if definition["USER_TYPE_ID"] == "enumeration" and "LIST" in fields:
            _apply_list(call, definition, fields["LIST"])
        call.store.userfields[entity][definition["FIELD_NAME"]] = definition
        return Result(True, cost=WRITE_COST * 2)

    @method(f"{prefix}.delete")
    def delete(call: Call) -> Result:
        definition = _find(call, entity)
        name = definition["FIELD_NAME"]
        del call.store.userfields[entity][name]
        for row in call.store.tables[entity].rows.values():
            row.pop(name, None)
        return Result(True, cost=WRITE_COST * 2)


for _entity in ("contact", "company", "deal"):
    _register(_entity)
