"""Non-CRUD methods: reference lists, users, tasks, to-dos, timeline comments, and small helpers.

Sources (b24restdocs): api-reference/crm/status/crm-status-list.md, crm/universal/category/
crm-category-list.md (``{"categories":[...]}``, camelCase, ``total``), api-reference/user/user-get.md
(``sort``/``order``/``FILTER``, filter fields also accepted at the top level, 50 per page),
api-reference/tasks/tasks-task-add.md and tasks-task-list.md (``{"task":{...}}`` / ``{"tasks":[...]}``
with camelCase keys and string values, default order ID DESC, ERROR_CORE on a missing title or
responsible person, ``UF_CRM_TASK`` such as ``["C_7","D_10"]`` only when selected),
api-reference/crm/timeline/activities/todo/crm-activity-todo-add.md (top-level camelCase params,
``{"id":N}``, errors 100 / OWNER_NOT_FOUND / WRONG_DATETIME_FORMAT),
api-reference/crm/timeline/activities/activity-base/crm-activity-list.md (see ACTIVITY_FIELDS below),
api-reference/crm/timeline/comments/crm-timeline-comment-add.md (only lower-case ``fields`` is read;
OWNER_NOT_FOUND, INVALID_ARG_VALUE for an empty comment, 100 when fields are missing),
api-reference/tasks/tasks-task-complete.md (``taskId``; the page gives no answer: the sandbox answers like
the other tasks.task.* methods, ``{"task":{...}}``, status 5 = completed; completing a completed task is
refused with ERROR_CORE, a choice), api-reference/tasks/comment-item/task-comment-item-add.md (``TASKID``,
``FIELDS.POST_MESSAGE``; the new comment's id; ERROR_CORE for an empty text or a task not accessible).
"""

from __future__ import annotations

from datetime import datetime, timezone

from .decode import php_intval
from .errors import ApiError, core
from .fields import BadValue, fmt_datetime, parse_datetime
from .filters import PAGE, simple_filter
from .limits import WRITE_COST
from .registry import Call, Result, method
from .store import CATEGORIES

OWNER_TYPES = {2: "deal", 3: "contact", 4: "company"}
ENTITY_TYPES = {"deal": "deal", "contact": "contact", "company": "company"}
TASK_KEYS = [
    ("ID", "id"), ("PARENT_ID", "parentId"), ("TITLE", "title"), ("DESCRIPTION", "description"), ("MARK", "mark"),
    ("PRIORITY", "priority"), ("STATUS", "status"), ("MULTITASK", "multitask"), ("NOT_VIEWED", "notViewed"),
    ("REPLICATE", "replicate"), ("GROUP_ID", "groupId"), ("STAGE_ID", "stageId"), ("CREATED_BY", "createdBy"),
    ("CREATED_DATE", "createdDate"), ("RESPONSIBLE_ID", "responsibleId"), ("CHANGED_BY", "changedBy"),
    ("CHANGED_DATE", "changedDate"), ("STATUS_CHANGED_BY", "statusChangedBy"), ("CLOSED_BY", "closedBy"),
    ("CLOSED_DATE", "closedDate"), ("ACTIVITY_DATE", "activityDate"), ("DATE_START", "dateStart"),
    ("DEADLINE", "deadline"), ("START_DATE_PLAN", "startDatePlan"), ("END_DATE_PLAN", "endDatePlan"),
    ("GUID", "guid"), ("XML_ID", "xmlId"), ("COMMENTS_COUNT", "commentsCount"),
    ("ALLOW_CHANGE_DEADLINE", "allowChangeDeadline"), ("ALLOW_TIME_TRACKING", "allowTimeTracking"),
    ("TASK_CONTROL", "taskControl"), ("ADD_IN_REPORT", "addInReport"), ("TIME_ESTIMATE", "timeEstimate"),
    ("TIME_SPENT_IN_LOGS", "timeSpentInLogs"), ("MATCH_WORK_TIME", "matchWorkTime"),
    ("DESCRIPTION_IN_BBCODE", "descriptionInBbcode"), ("SUB_STATUS", "subStatus"), ("UF_CRM_TASK", "ufCrmTask"),
]
_CAMEL = dict(TASK_KEYS)
_DEFAULT_TASK_SELECT = [k for k, _ in TASK_KEYS if k != "UF_CRM_TASK"]


def _iso(call: Call, ts: float) -> str:
    return fmt_datetime(ts, call.store.tz)


@method("crm.status.list")
def status_list(call: Call) -> Result:
    rows = simple_filter([dict(r) for r in call.store.statuses], call.params.get("filter"))
    order = call.params.get("order")
    if isinstance(order, dict):
        for key, direction in reversed(list(order.items())):
            numeric = key in ("ID", "SORT")
            rows.sort(key=lambda r: int(r.get(key) or 0) if numeric else str(r.get(key) or ""),
                      reverse=str(direction).upper() == "DESC")
    return Result(rows, total=len(rows))


@method("crm.category.list")
def category_list(call: Call) -> Result:
    entity_type = php_intval(call.params.get("entityTypeId")) or 2
    items = []
    for cat_id, name in CATEGORIES.items():
        if entity_type != 2 and cat_id != 0:
            continue
        item = {"id": cat_id, "name": name, "sort": 300 if cat_id == 0 else 200, "entityTypeId": entity_type,
                "isDefault": "Y" if cat_id == 0 else "N"}
        if cat_id:
            item.update(originId="", originatorId="")
        items.append(item)
    items.sort(key=lambda i: (i["sort"], i["id"]))
    return Result({"categories": items}, total=len(items))


def _paginate(call: Call, rows: list) -> Result:
    start = php_intval(call.params.get("start", 0))
    if start == -1:
        return Result(rows[:PAGE], total=0)
    offset = (max(start, 0) // PAGE) * PAGE
    nxt = offset + PAGE if offset + PAGE < len(rows) else None
    return Result(rows[offset:offset + PAGE], total=len(rows), next=nxt)


def _yes_no(value):
    """ACTIVE is a boolean on the user row; true, "Y", "true" and "1" (a form-encoded true) mean yes (choice)."""
    if isinstance(value, (list, dict)):
        return value
    return str(value).strip().lower() in ("y", "true", "1") if not isinstance(value, bool) else value


@method("user.get")
def user_get(call: Call) -> Result:
    filt = call.params.get("FILTER")
    if not isinstance(filt, dict):
        skip = {"sort", "order", "start", "admin_mode", "auth", "select", "filter"}
        filt = {k: v for k, v in call.params.data.items() if str(k).lower() not in skip}
    filt = {k: (_yes_no(v) if str(k).lstrip("!=").upper() == "ACTIVE" else v) for k, v in filt.items()}
    rows = simple_filter([dict(u) for u in call.store.users.values()], filt)
    sort_field = str(call.params.get("sort") or "ID")
    desc = str(call.params.get("order") or "ASC").upper() == "DESC"
    rows.sort(key=lambda r: int(r["ID"]) if sort_field == "ID" else str(r.get(sort_field) or ""), reverse=desc)
    return _paginate(call, rows)


@method("user.current")
def user_current(call: Call) -> Result:
    return Result(dict(call.store.ensure_user(call.user_id, call.now)))


@method("profile")
def profile(call: Call) -> Result:
    user = call.store.ensure_user(call.user_id, call.now)
    return Result({"ID": user["ID"], "ADMIN": call.user_id == 1, "NAME": user["NAME"], "LAST_NAME": user["LAST_NAME"],
                   "PERSONAL_GENDER": "", "TIME_ZONE": str(call.store.tz), "TIME_ZONE_OFFSET": 0})


@method("scope")
def scope(call: Call) -> Result:
    if call.scopes is not None:
        return Result(sorted(call.scopes))
    return Result(["crm", "catalog", "task", "tasks", "user", "user_brief", "user_basic", "bizproc", "mail", "basic"])


@method("server.time")
def server_time(call: Call) -> Result:
    return Result(_iso(call, call.now))


# -- tasks ---------------------------------------------------------------------------------------

def _render_task(call: Call, task: dict, select: list[str]) -> dict:
    out = {}
    for key in select:
        value = task.get(key)
        if key == "UF_CRM_TASK":
            out["ufCrmTask"] = list(value or [])
        elif isinstance(value, datetime):
            out[_CAMEL[key]] = value.astimezone(call.store.tz).isoformat(timespec="seconds")
        else:
            out[_CAMEL[key]] = None if value is None else str(value)
    return out


@method("tasks.task.add")
def task_add(call: Call) -> Result:
    fields = call.params.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise ApiError(400, "100", "Could not find value for parameter {fields}")
    title = str(fields.get("TITLE") or "").strip()
    if not title:
        raise core("Task title is not specified<br>")
    responsible = php_intval(fields.get("RESPONSIBLE_ID"))
    if responsible <= 0:
        raise core("Responsible person is not specified<br>")
    if responsible not in call.store.users:
        raise core("Responsible person not found<br>")
    moment = datetime.fromtimestamp(call.now, timezone.utc)
    deadline = None
    if fields.get("DEADLINE") not in (None, ""):
        try:
            deadline = parse_datetime(fields["DEADLINE"], call.store.tz)
        except BadValue:
            raise core("Wrong deadline format<br>") from None
    links = fields.get("UF_CRM_TASK") or []
    links = links if isinstance(links, list) else list(links.values()) if isinstance(links, dict) else [links]
    task = {
        "PARENT_ID": php_intval(fields.get("PARENT_ID")) or None, "TITLE": title,
        "DESCRIPTION": str(fields.get("DESCRIPTION") or ""), "MARK": None, "PRIORITY": str(fields.get("PRIORITY") or 1),
        "STATUS": 2, "MULTITASK": "N", "NOT_VIEWED": "N", "REPLICATE": "N", "GROUP_ID": php_intval(fields.get("GROUP_ID")),
        "STAGE_ID": 0, "CREATED_BY": php_intval(fields.get("CREATED_BY")) or call.user_id, "CREATED_DATE": moment,
        "RESPONSIBLE_ID": responsible, "CHANGED_BY": call.user_id, "CHANGED_DATE": moment,
        "STATUS_CHANGED_BY": call.user_id, "CLOSED_BY": None, "CLOSED_DATE": None, "ACTIVITY_DATE": moment,
        "DATE_START": None, "DEADLINE": deadline, "START_DATE_PLAN": None, "END_DATE_PLAN": None,
        "GUID": "{" + f"{abs(hash((title, call.now))):032x}"[:32] + "}",
        "XML_ID": str(fields["XML_ID"]) if fields.get("XML_ID") not in (None, "") else None, "COMMENTS_COUNT": None,
        "ALLOW_CHANGE_DEADLINE": "Y", "ALLOW_TIME_TRACKING": "N", "TASK_CONTROL": "N", "ADD_IN_REPORT": "N",
        "TIME_ESTIMATE": 0, "TIME_SPENT_IN_LOGS": None, "MATCH_WORK_TIME": "N", "DESCRIPTION_IN_BBCODE": "Y",
        "SUB_STATUS": 2, "UF_CRM_TASK": [str(x) for x in links if x not in (None, "")],
    }
    call.store.tasks.insert(task)
    return Result({"task": _render_task(call, task, _DEFAULT_TASK_SELECT)}, cost=WRITE_COST * 3)


def _task_select(raw) -> list[str]:
    names = raw if isinstance(raw, list) else list(raw.values()) if isinstance(raw, dict) else []
    names = [str(n).upper() for n in names if str(n).upper() in _CAMEL]
    if not names:
        return _DEFAULT_TASK_SELECT
    return ["ID"] + [n for n in names if n != "ID"]


@method("tasks.task.list")
def task_list(call: Call) -> Result:
    flat = []
    for task in call.store.tasks.rows.values():
        row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in task.items()}
        row["REAL_STATUS"] = row["STATUS"]
        flat.append(row)
    filt = call.params.get("filter")
    if isinstance(filt, dict):
        filt = {(k[:len(k) - len(k.lstrip("!<>=%@"))] + k.lstrip("!<>=%@").upper()): v for k, v in filt.items()}
    matched_ids = {r["ID"] for r in simple_filter(flat, filt)}
    tasks = [t for t in call.store.tasks.rows.values() if t["ID"] in matched_ids]
    order = call.params.get("order")
    order = order if isinstance(order, dict) and order else {"ID": "DESC"}
    for key, direction in reversed(list(order.items())):
        key = str(key).upper()
        tasks.sort(key=lambda t: (t.get(key) is not None, str(t.get(key)) if not isinstance(t.get(key), int)
                                  else t.get(key)), reverse=str(direction).upper() == "DESC")
    select = _task_select(call.params.get("select"))
    page = _paginate(call, tasks)
    page.result = {"tasks": [_render_task(call, t, select) for t in page.result]}
    return page


@method("tasks.task.get")
def task_get(call: Call) -> Result:
    task = call.store.tasks.rows.get(php_intval(call.params.get("taskId")))
    if task is None:
        raise ApiError(400, "ERROR_CORE", "Task not found or not accessible")
    return Result({"task": _render_task(call, task, _task_select(call.params.get("select")))})


@method("tasks.task.complete")
def task_complete(call: Call) -> Result:
    task = call.store.tasks.rows.get(php_intval(call.params.get("taskId")))
    if task is None:
        raise ApiError(400, "ERROR_CORE", "Task not found or not accessible")
    if int(task["STATUS"]) == 5:
        raise ApiError(400, "ERROR_CORE", "Action not allowed")
    moment = datetime.fromtimestamp(call.now, timezone.utc)
    task.update(STATUS=5, SUB_STATUS=5, CLOSED_BY=call.user_id, CLOSED_DATE=moment, CHANGED_BY=call.user_id,
                CHANGED_DATE=moment, STATUS_CHANGED_BY=call.user_id)
    return Result({"task": _render_task(call, task, _DEFAULT_TASK_SELECT)}, cost=WRITE_COST)


@method("task.commentitem.add")
def task_comment_add(call: Call) -> Result:
    task = call.store.tasks.rows.get(php_intval(call.params.get("TASKID")))
    fields = call.params.get("FIELDS")
    if task is None:
        raise ApiError(400, "ERROR_CORE", "Insufficient permissions to add a comment.<br>")
    text = str((fields or {}).get("POST_MESSAGE") or "").strip() if isinstance(fields, dict) else ""
    if not text:
        raise ApiError(400, "ERROR_CORE", "Comment text not specified<br>")
    row = {"TASK_ID": task["ID"], "POST_MESSAGE": text, "AUTHOR_ID": php_intval(fields.get("AUTHOR_ID")) or call.user_id,
           "POST_DATE": _iso(call, call.now)}
    return Result(call.store.task_comments.insert(row), cost=WRITE_COST)


@method("task.commentitem.getlist")
def task_comment_list(call: Call) -> Result:
    """rest_help/tasks/task/commentitem/getlist.php: ``TASKID`` (required), ``ORDER`` (default ID desc),
    ``FILTER`` (ID, AUTHOR_ID, POST_DATE; equality only here); every comment, no paging."""
    task = call.store.tasks.rows.get(php_intval(call.params.get("TASKID")))
    if task is None:
        raise ApiError(400, "ERROR_CORE", "Task not found or not accessible")
    filt = call.params.get("FILTER") if isinstance(call.params.get("FILTER"), dict) else {}
    rows = [{"ID": str(c["ID"]), "AUTHOR_ID": str(c["AUTHOR_ID"]), "POST_MESSAGE": c["POST_MESSAGE"],
             "POST_DATE": c["POST_DATE"]} for c in call.store.task_comments.rows.values() if c["TASK_ID"] == task["ID"]]
    rows = [r for r in rows if all(str(r.get(str(k).upper())) == str(v) for k, v in filt.items())]
    order = call.params.get("ORDER") if isinstance(call.params.get("ORDER"), dict) else {"ID": "desc"}
    descending = str(next(iter(order.values()), "desc")).lower() == "desc"
    return Result(sorted(rows, key=lambda r: int(r["ID"]), reverse=descending))


# -- activities and comments -----------------------------------------------------------------------

@method("crm.activity.todo.add", exact_params=True)
def todo_add(call: Call) -> Result:
    p = call.params
    for name in ("ownerTypeId", "ownerId", "deadline"):
        if p.exact(name) in (None, ""):
            raise ApiError(400, "100", f"Required fields are missing: {name}")
    owner_type, owner_id = php_intval(p.exact("ownerTypeId")), php_intval(p.exact("ownerId"))
    entity = OWNER_TYPES.get(owner_type)
    if entity is None or owner_id not in call.store.tables[entity].rows:
        raise ApiError(400, "OWNER_NOT_FOUND", "Owner of the entity not found")
    try:
        deadline = parse_datetime(p.exact("deadline"), call.store.tz)
    except BadValue:
        raise ApiError(400, "WRONG_DATETIME_FORMAT", "Incorrect date format") from None
    responsible = php_intval(p.exact("responsibleId")) or call.user_id
    title = str(p.exact("title") or "")
    activity = {"TYPE": "todo", "OWNER_TYPE_ID": owner_type, "OWNER_ID": owner_id,
                "DEADLINE": _iso(call, deadline.timestamp()), "TITLE": title,
                "DESCRIPTION": str(p.exact("description") or ""), "RESPONSIBLE_ID": responsible,
                "COLOR_ID": p.exact("colorId"), "PING_OFFSETS": p.exact("pingOffsets"), "COMPLETED": "N",
                "CREATED": _iso(call, call.now), "AUTHOR_ID": call.user_id,
                # what crm.activity.list shows for a universal to-do (choice, see ACTIVITY_FIELDS)
                "TYPE_ID": 6, "PROVIDER_ID": "CRM_TODO", "PROVIDER_TYPE_ID": "TODO", "SUBJECT": title}
    return Result({"id": call.store.activities.insert(activity)}, cost=WRITE_COST * 2)


# crm.activity.list (api-reference/crm/timeline/activities/activity-base/crm-activity-list.md; the old
# rest_help page: "filter[PROVIDER_ID]=CRM_TODO" selects universal to-dos): a legacy list, UPPER_CASE keys,
# string values, 50 a page with total/next, the usual filter prefixes, ``select`` of these names or "*".
# Choices (the docs do not show a to-do's row): TYPE_ID "6" (provider activity), PROVIDER_ID "CRM_TODO",
# PROVIDER_TYPE_ID "TODO", SUBJECT = the to-do's title, DESCRIPTION_TYPE "1" (plain text), DIRECTION "0",
# STATUS "1" (waiting) / "2" when COMPLETED, START_TIME = END_TIME = DEADLINE; default order ID ASC.
ACTIVITY_FIELDS = ["ID", "OWNER_ID", "OWNER_TYPE_ID", "TYPE_ID", "PROVIDER_ID", "PROVIDER_TYPE_ID",
                   "PROVIDER_GROUP_ID", "ASSOCIATED_ENTITY_ID", "SUBJECT", "CREATED", "LAST_UPDATED",
                   "START_TIME", "END_TIME", "DEADLINE", "COMPLETED", "STATUS", "RESPONSIBLE_ID", "PRIORITY",
                   "NOTIFY_TYPE", "NOTIFY_VALUE", "DESCRIPTION", "DESCRIPTION_TYPE", "DIRECTION", "LOCATION",
                   "SETTINGS", "ORIGINATOR_ID", "ORIGIN_ID", "AUTHOR_ID", "EDITOR_ID"]


def _activity_row(activity: dict) -> dict:
    completed = activity.get("COMPLETED") == "Y"
    row = {
        "ID": activity["ID"], "OWNER_ID": activity["OWNER_ID"], "OWNER_TYPE_ID": activity["OWNER_TYPE_ID"],
        "TYPE_ID": activity.get("TYPE_ID", 6), "PROVIDER_ID": activity.get("PROVIDER_ID", "CRM_TODO"),
        "PROVIDER_TYPE_ID": activity.get("PROVIDER_TYPE_ID", "TODO"), "PROVIDER_GROUP_ID": None,
        "ASSOCIATED_ENTITY_ID": 0, "SUBJECT": activity.get("SUBJECT", activity.get("TITLE", "")),
        "CREATED": activity["CREATED"], "LAST_UPDATED": activity["CREATED"], "START_TIME": activity["DEADLINE"],
        "END_TIME": activity["DEADLINE"], "DEADLINE": activity["DEADLINE"], "COMPLETED": "Y" if completed else "N",
        "STATUS": 2 if completed else 1, "RESPONSIBLE_ID": activity["RESPONSIBLE_ID"], "PRIORITY": 2,
        "NOTIFY_TYPE": 0, "NOTIFY_VALUE": 0, "DESCRIPTION": activity.get("DESCRIPTION", ""), "DESCRIPTION_TYPE": 1,
        "DIRECTION": activity.get("DIRECTION", 0), "LOCATION": "", "SETTINGS": [],
        "ORIGINATOR_ID": activity.get("ORIGINATOR_ID"), "ORIGIN_ID": activity.get("ORIGIN_ID"),
        "AUTHOR_ID": activity["AUTHOR_ID"], "EDITOR_ID": activity["AUTHOR_ID"],
    }
    return {k: (None if v is None else v if isinstance(v, list) else str(v)) for k, v in row.items()}


@method("crm.activity.list")
def activity_list(call: Call) -> Result:
    rows = [_activity_row(a) for a in call.store.activities.rows.values()]
    filt = call.params.get("filter")
    if isinstance(filt, dict):
        filt = {(k[:len(k) - len(k.lstrip("!<>=%@"))] + k.lstrip("!<>=%@").upper()): v for k, v in filt.items()}
        rows = simple_filter(rows, filt)
    order = call.params.get("order")
    order = order if isinstance(order, dict) and order else {"ID": "ASC"}
    for key, direction in reversed(list(order.items())):
        key = str(key).upper()
        rows.sort(key=lambda r: (0, int(r[key]), "") if str(r.get(key) or "").isdigit() else (1, 0, str(r.get(key) or "")),
                  reverse=str(direction).upper() == "DESC")
    raw = call.params.get("select")
    names = raw if isinstance(raw, list) else list(raw.values()) if isinstance(raw, dict) else []
    names = [str(n).upper() for n in names]
    wanted = ACTIVITY_FIELDS if not names or "*" in names else ["ID"] + [n for n in ACTIVITY_FIELDS if n in names and n != "ID"]
    page = _paginate(call, rows)
    page.result = [{k: r[k] for k in wanted} for r in page.result]
    return page


@method("crm.timeline.comment.add", exact_params=True)
def comment_add(call: Call) -> Result:
    fields = call.params.exact("fields")
    if not isinstance(fields, dict):
        raise ApiError(400, "100", "Required fields are not provided")
    for name in ("ENTITY_ID", "ENTITY_TYPE"):
        if fields.get(name) in (None, ""):
            raise ApiError(400, "100", f"Required fields are not provided: {name}")
    entity = ENTITY_TYPES.get(str(fields["ENTITY_TYPE"]).lower())
    owner_id = php_intval(fields["ENTITY_ID"])
    if entity is None or owner_id not in call.store.tables[entity].rows:
        raise ApiError(400, "OWNER_NOT_FOUND", "Owner of the item not found")
    comment = str(fields.get("COMMENT") or "").strip()
    if not comment:
        raise ApiError(400, "INVALID_ARG_VALUE", "Empty comment")
    row = {"ENTITY_TYPE": entity, "ENTITY_ID": owner_id, "COMMENT": comment, "AUTHOR_ID": call.user_id,
           "CREATED": _iso(call, call.now)}
    return Result(call.store.comments.insert(row), cost=WRITE_COST)
