"""Business processes, e-mail activities and timeline comment lists: the CRM's own channels.

Sources (b24restdocs): api-reference/bizproc/template/bizproc-workflow-template-list.md (``SELECT``
default ``['ID']``, ``FILTER`` with ``= ! != < <= > >=`` prefixes and any-case names, ``ORDER`` default
``{ID: 'ASC'}``, 50 a page, ``total``; 403 ``ACCESS_DENIED`` "Access denied!" for a non-administrator),
api-reference/bizproc/bizproc-workflow-start.md (``TEMPLATE_ID``, ``DOCUMENT_ID`` ``[module, entity,
"CONTACT_7"]``, ``PARAMETERS``; answers the instance id string; 400 ``ERROR_WRONG_WORKFLOW_ID`` "Empty
TEMPLATE_ID" / "Template not found", 400 with an empty code "Wrong DOCUMENT_ID!", "Incorrect document
type!", "Template type and DOCUMENT_ID mismatch!", 403 ``ACCESS_DENIED`` "Access denied!"; only on paid
plans), api-reference/bizproc/bizproc-workflow-instances.md (running workflows only: ID, MODIFIED,
OWNED_UNTIL, MODULE_ID, ENTITY, DOCUMENT_ID ``"CONTACT_7"``, STARTED, STARTED_BY, TEMPLATE_ID; default
select ``['ID','MODIFIED','OWNED_UNTIL']``, order ``{MODIFIED: 'desc'}``), helpdesk.bitrix24.com/open/22381584
(at most two workflows with waiting steps run at once on one CRM item; a third starts only when one of
them finishes), tutorials/crm/how-to-add-crm-objects/how-to-send-email.md and
api-reference/crm/timeline/activities/activity-base/crm-activity-add.md (TYPE_ID 4 + DIRECTION 2 +
COMPLETED Y sends the e-mail; "Email send error. \\"To\\" is not found" / "\\"From\\" is not found" /
"Invalid email is specified": the activity is created, the e-mail not sent; answer: the new id),
api-reference/mail/mailbox/mail-mailbox-senders.md (REST 3.0: ``{"result": {"items": [{"email", "name",
"sender"}]}}``),
api-reference/crm/timeline/comments/crm-timeline-comment-list.md (filter ENTITY_ID + ENTITY_TYPE
required, order by ID/CREATED/AUTHOR_ID, 50 a page).

Choices (not in the docs): the error a portal on a plan without REST business processes returns is not
documented; the sandbox answers 403 ``ACCESS_DENIED`` with the system error text "REST API is available
only on commercial plans" (_includes/system-errors.md). A queued third workflow is not listed by
``bizproc.workflow.instances`` until it starts. E-mail is recorded as sent (``SENT_TO``), never sent.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .decode import php_intval
from .errors import ApiError
from .filters import simple_filter
from .limits import WRITE_COST
from .registry import Call, Result, method

DOCS = {"CCrmDocumentContact": ("contact", "CONTACT"), "CCrmDocumentCompany": ("company", "COMPANY"),
        "CCrmDocumentDeal": ("deal", "DEAL"), "CCrmDocumentLead": ("lead", "LEAD")}
DEFAULT_TEMPLATES = [
    # waits: portal seconds a workflow of the template keeps running (its "Pause execution" steps); 0 = none
    {"ID": 1, "NAME": "Win-back e-mail", "ENTITY": "CCrmDocumentContact", "waits": 0},
    {"ID": 2, "NAME": "SMS, then a reminder in three days", "ENTITY": "CCrmDocumentContact", "waits": 3 * 86400},
    {"ID": 3, "NAME": "Company follow-up", "ENTITY": "CCrmDocumentCompany", "waits": 0},
    {"ID": 4, "NAME": "Deal approval", "ENTITY": "CCrmDocumentDeal", "waits": 0},
]
PLAN_DENIED = "REST API is available only on commercial plans"
PAGE = 50


class Bizproc:
    """The portal's workflow templates, workflows and the rights to start them."""

    def __init__(self) -> None:
        self.templates: dict[int, dict] = {t["ID"]: {**t, "PARAMETERS": {}, "AUTO_EXECUTE": 0, "USER_ID": 1}
                                           for t in DEFAULT_TEMPLATES}
        self.workflows: list[dict] = []  # every start: id, template, document, started, ends, state
        self.senders = ["Shop <shop@example.com>"]  # mail.mailbox.senders of the webhook's user (besides its own)
        self.admin = True  # the webhook's user is an administrator
        self.paid = True  # the plan allows business processes through REST

    def configure(self, body: dict) -> dict:
        if "admin" in body:
            self.admin = bool(body["admin"])
        if "paid" in body:
            self.paid = bool(body["paid"])
        if "senders" in body:
            self.senders = [str(x) for x in body["senders"]]
        for t in body.get("templates") or []:
            tid = int(t["ID"])
            self.templates[tid] = {"ID": tid, "NAME": str(t["NAME"]), "ENTITY": str(t.get("ENTITY", "CCrmDocumentContact")),
                                   "waits": float(t.get("waits", 0)), "PARAMETERS": t.get("PARAMETERS") or {},
                                   "AUTO_EXECUTE": 0, "USER_ID": 1}
        return self.describe()

    def describe(self) -> dict:
        return {"admin": self.admin, "paid": self.paid, "senders": self.senders,
                "templates": [{k: v for k, v in t.items()} for t in self.templates.values()]}

    def tick(self, now: float) -> None:
        """Finish what ran its course and start queued workflows in order (two running per document)."""
        for wf in self.workflows:
            if wf["state"] == "running" and wf["ends"] <= now:
                wf["state"] = "completed"
        running: dict[tuple, int] = {}
        for wf in self.workflows:
            if wf["state"] == "running" and wf["waits"]:
                running[wf["document"]] = running.get(wf["document"], 0) + 1
        for wf in self.workflows:
            if wf["state"] == "queued" and running.get(wf["document"], 0) < 2:
                wf["state"] = "running"
                wf["started"] = now
                wf["ends"] = now + wf["waits"]
                running[wf["document"]] = running.get(wf["document"], 0) + 1

    def check_rights(self) -> None:
        if not self.paid:
            raise ApiError(403, "ACCESS_DENIED", PLAN_DENIED)
        if not self.admin:
            raise ApiError(403, "ACCESS_DENIED", "Access denied!")


def _bp(call: Call) -> Bizproc:
    store = call.store
    if not hasattr(store, "bizproc"):
        store.bizproc = Bizproc()
    bp: Bizproc = store.bizproc
    bp.tick(call.portal.clock.portal())  # waiting steps last portal time (time_scale)
    return bp


def _upper_keys(raw: Any) -> dict:
    if not isinstance(raw, dict):
        return {}
    out = {}
    for k, v in raw.items():
        key = str(k)
        prefix = key[:len(key) - len(key.lstrip("!<>=%@"))]
        out[prefix + key[len(prefix):].upper()] = v
    return out


def _select(raw: Any, default: list[str]) -> list[str]:
    names = raw if isinstance(raw, list) else list(raw.values()) if isinstance(raw, dict) else []
    return [str(n).upper() for n in names] or default


def _page(call: Call, rows: list[dict]) -> Result:
    start = max(php_intval(call.params.get("start")) or 0, 0)
    page = rows[start:start + PAGE]
    nxt = start + PAGE if start + PAGE < len(rows) else None
    return Result(page, total=len(rows), next=nxt)


def _order(rows: list[dict], order: Any, default: dict) -> list[dict]:
    order = _upper_keys(order) or default
    for key, direction in reversed(list(order.items())):
        rows.sort(key=lambda r: (0, int(r[key]), "") if str(r.get(key) or "").isdigit() else (1, 0, str(r.get(key) or "")),
                  reverse=str(direction).upper() == "DESC")
    return rows


@method("bizproc.workflow.template.list")
def template_list(call: Call) -> Result:
    bp = _bp(call)
    bp.check_rights()
    p = call.params
    rows = []
    for t in bp.templates.values():
        entity = DOCS.get(t["ENTITY"], ("", ""))[1]
        rows.append({"ID": str(t["ID"]), "MODULE_ID": "crm", "ENTITY": t["ENTITY"], "DOCUMENT_TYPE": entity,
                     "AUTO_EXECUTE": str(t["AUTO_EXECUTE"]), "NAME": t["NAME"], "TEMPLATE": [],
                     "PARAMETERS": t["PARAMETERS"], "VARIABLES": [], "CONSTANTS": [], "MODIFIED": "",
                     "IS_MODIFIED": "N", "USER_ID": str(t["USER_ID"]), "SYSTEM_CODE": ""})
    rows = simple_filter(rows, _upper_keys(p.get("filter")))
    rows = _order(rows, p.get("order"), {"ID": "ASC"})
    wanted = _select(p.get("select"), ["ID"])
    page = _page(call, rows)
    page.result = [{k: r[k] for k in wanted if k in r} for r in page.result]
    return page


def _document(raw: Any) -> tuple[str, str, int]:
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw, key=lambda k: php_intval(k) or 0)]
    if not isinstance(raw, list) or len(raw) != 3:
        raise ApiError(400, "", "Wrong DOCUMENT_ID!")
    module, entity, element = (str(x) for x in raw)
    kind = DOCS.get(entity)
    if module != "crm" or kind is None:
        raise ApiError(400, "", "Incorrect document type!")
    m = re.fullmatch(rf"{kind[1]}_(\d+)", element)
    if m is None:
        raise ApiError(400, "", "Wrong DOCUMENT_ID!")
    return entity, kind[0], int(m.group(1))


@method("bizproc.workflow.start")
def workflow_start(call: Call) -> Result:
    bp = _bp(call)
    bp.check_rights()
    p = call.params
    raw_id = p.get("TEMPLATE_ID")
    if raw_id in (None, "", 0, "0"):
        raise ApiError(400, "ERROR_WRONG_WORKFLOW_ID", "Empty TEMPLATE_ID")
    template = bp.templates.get(php_intval(raw_id) or 0)
    if template is None:
        raise ApiError(400, "ERROR_WRONG_WORKFLOW_ID", "Template not found")
    entity, table, element = _document(p.get("DOCUMENT_ID"))
    if table not in call.store.tables or element not in call.store.tables[table].rows:
        raise ApiError(400, "", "Wrong DOCUMENT_ID!")
    if entity != template["ENTITY"]:
        raise ApiError(400, "", "Template type and DOCUMENT_ID mismatch!")
    document = ("crm", entity, f"{DOCS[entity][1]}_{element}")
    waits = float(template["waits"])
    running = sum(1 for wf in bp.workflows if wf["document"] == document and wf["state"] == "running" and wf["waits"])
    wid = f"{secrets.token_hex(6)}{secrets.token_hex(1)[:1]}.{secrets.randbelow(10**8):08d}"
    state = "queued" if waits and running >= 2 else "running"
    params = p.get("PARAMETERS")
    now = call.portal.clock.portal()
    bp.workflows.append({"ID": wid, "template": template["ID"], "document": document, "waits": waits,
                         "started": now, "ends": now + waits, "state": state, "started_by": call.user_id,
                         "parameters": params if isinstance(params, dict) else {}})
    bp.tick(now)
    return Result(wid, cost=WRITE_COST * 2)


@method("bizproc.workflow.instances", "bizproc.workflow.instance.list")
def workflow_instances(call: Call) -> Result:
    bp = _bp(call)
    bp.check_rights()
    p = call.params
    from .other_methods import _iso

    real = call.portal.clock.to_real
    rows = [{"ID": wf["ID"], "MODIFIED": _iso(call, real(wf["started"])), "OWNED_UNTIL": None, "MODULE_ID": "crm",
             "ENTITY": wf["document"][1], "DOCUMENT_ID": wf["document"][2], "STARTED": _iso(call, real(wf["started"])),
             "STARTED_BY": str(wf["started_by"]), "TEMPLATE_ID": str(wf["template"])}
            for wf in bp.workflows if wf["state"] == "running"]
    rows = simple_filter(rows, _upper_keys(p.get("filter")))
    rows = _order(rows, p.get("order"), {"MODIFIED": "DESC"})
    wanted = _select(p.get("select"), ["ID", "MODIFIED", "OWNED_UNTIL"])
    page = _page(call, rows)
    page.result = [{k: r[k] for k in wanted if k in r} for r in page.result]
    return page


# -- e-mail activities ---------------------------------------------------------------------------

EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _address(text: str) -> str:
    m = re.search(r"<([^<>]*)>\s*$", text)
    return (m.group(1) if m else text).strip()


@method("crm.activity.add")
def activity_add(call: Call) -> Result:
    from .other_methods import OWNER_TYPES, _iso

    fields = _upper_keys(call.params.get("fields"))
    if not fields:
        raise ApiError(400, "", "The parameter 'fields' must be array.")
    type_id = php_intval(fields.get("TYPE_ID"))
    if type_id not in (1, 2, 4, 6):
        raise ApiError(400, "", "Activity type is not supported.")
    owner_type, owner_id = php_intval(fields.get("OWNER_TYPE_ID")), php_intval(fields.get("OWNER_ID"))
    entity = OWNER_TYPES.get(owner_type or 0)
    if entity is None or owner_id not in call.store.tables[entity].rows:
        raise ApiError(400, "", "Owner not found.")
    subject = str(fields.get("SUBJECT") or "")
    if not subject.strip():
        raise ApiError(400, "", "The field SUBJECT is required.")
    comms = fields.get("COMMUNICATIONS")
    comms = list(comms.values()) if isinstance(comms, dict) else comms if isinstance(comms, list) else []
    if not comms:
        raise ApiError(400, "", "The field COMMUNICATIONS is not defined or invalid.")
    settings = _upper_keys(fields.get("SETTINGS"))
    direction, completed = php_intval(fields.get("DIRECTION")), str(fields.get("COMPLETED") or "N").upper()
    activity = {"TYPE": "email" if type_id == 4 else "activity", "TYPE_ID": type_id, "OWNER_TYPE_ID": owner_type,
                "OWNER_ID": owner_id, "SUBJECT": subject, "TITLE": subject, "DESCRIPTION": str(fields.get("DESCRIPTION") or ""),
                "DESCRIPTION_TYPE": php_intval(fields.get("DESCRIPTION_TYPE")) or 1, "DIRECTION": direction,
                "COMPLETED": "Y" if completed == "Y" else "N", "RESPONSIBLE_ID": php_intval(fields.get("RESPONSIBLE_ID")) or call.user_id,
                "DEADLINE": _iso(call, call.now), "CREATED": _iso(call, call.now), "AUTHOR_ID": call.user_id,
                "PROVIDER_ID": "CRM_EMAIL" if type_id == 4 else "CRM_ACTIVITY", "PROVIDER_TYPE_ID": "EMAIL" if type_id == 4 else "",
                "ORIGINATOR_ID": fields.get("ORIGINATOR_ID"), "ORIGIN_ID": fields.get("ORIGIN_ID"),
                "SETTINGS": settings, "SENT_TO": []}
    new_id = call.store.activities.insert(activity)
    if type_id == 4 and direction == 2 and completed == "Y":
        to = [str(_upper_keys(c).get("VALUE") or "").strip() for c in comms if isinstance(c, dict)]
        to = [a for a in to if a]
        sender = str(settings.get("MESSAGE_FROM") or "").strip()
        if not to:
            raise ApiError(400, "", 'Email send error. "To" is not found')
        if not sender:
            raise ApiError(400, "", 'Email send error. "From" is not found')
        if not EMAIL.match(_address(sender)) or not all(EMAIL.match(a) for a in to):
            raise ApiError(400, "", "Email send error. Invalid email is specified")
        activity["SENT_TO"] = to  # recorded as sent; nothing leaves the sandbox
        activity["SENT_FROM"] = sender
    return Result(new_id, cost=WRITE_COST * 2)


@method("crm.timeline.comment.list")
def comment_list(call: Call) -> Result:
    from .other_methods import ENTITY_TYPES

    p = call.params
    filt = _upper_keys(p.get("filter"))
    if filt.get("ENTITY_ID") in (None, "") or filt.get("ENTITY_TYPE") in (None, ""):
        raise ApiError(400, "", "ENTITY_ID and ENTITY_TYPE are required in the filter")
    entity = ENTITY_TYPES.get(str(filt["ENTITY_TYPE"]).lower())
    owner = php_intval(filt["ENTITY_ID"])
    rows = [{"ID": str(c["ID"]), "CREATED": c["CREATED"], "ENTITY_ID": str(c["ENTITY_ID"]), "ENTITY_TYPE": c["ENTITY_TYPE"],
             "AUTHOR_ID": str(c["AUTHOR_ID"]), "COMMENT": c["COMMENT"], "FILES": []}
            for c in call.store.comments.rows.values() if c["ENTITY_TYPE"] == entity and c["ENTITY_ID"] == owner]
    rows = _order(rows, p.get("order"), {"ID": "ASC"})
    wanted = _select(p.get("select"), list(rows[0]) if rows else ["ID"])
    page = _page(call, rows)
    page.result = [{k: r[k] for k in wanted if k in r} for r in page.result]
    return page


@method("mail.mailbox.senders")
def mailbox_senders(call: Call) -> Result:
    """REST 3.0 (api-reference/mail/mailbox/mail-mailbox-senders.md): ``{"items": [{"email", "name",
    "sender"}]}`` for the current user: its own address, then the configured mailboxes."""
    bp = _bp(call)
    user = call.store.users.get(call.user_id) or {}
    own = f"{user.get('NAME', '')} {user.get('LAST_NAME', '')}".strip()
    senders = ([f"{own} <{user['EMAIL']}>"] if user.get("EMAIL") else []) + list(bp.senders)
    items = []
    for text in senders:
        address = _address(text)
        name = text[: text.rfind("<")].strip() if "<" in text else address
        items.append({"email": address, "name": name, "sender": f"{name} <{address}>"})
    return Result({"items": items})
