"""The account's fixed furniture: users, the pipeline with its statuses, custom-field definitions.

Sources (shared/research/amocrm.md §2, §8): every pipeline has an incoming status (``type`` 1,
«Неразобранное»), 142 «Успешно реализовано» (won) and 143 «Закрыто и не реализовано» (lost), the same
ids in every pipeline [kommo api_v4 leads-pipelines-and-statuses; amocrm-api-php LeadModel
WON_STATUS_ID/LOST_STATUS_ID]. Contacts and companies have the predefined multitext fields PHONE and EMAIL
(enum codes WORK, WORKDD, MOB, FAX, HOME, OTHER / WORK, PRIV, OTHER); a ``birthday`` field holds unix
seconds of midnight in the account time zone (a real Kommo answer in the research file).

Choices: ids (pipeline 7000001, statuses 70000010..; a second pipeline 7000002 «Повторные продажи», statuses
70000020..; fields from 900001, users as given), the working
status names, the Russian field names, and that the full enum lists beyond WORK/MOB/WORKDD (UNCONFIRMED in
the research) are the ones the amoCRM UI shows.
"""

from __future__ import annotations

ADMIN_USER_ID = 1
PIPELINE_ID = 7000001
INCOMING_STATUS = 70000010
FIRST_WORKING_STATUS = 70000011
WON, LOST = 142, 143

STATUSES = [  # id, name, sort, is_editable, color, type
    (INCOMING_STATUS, "Неразобранное", 10, False, "#c1c1c1", 1),
    (FIRST_WORKING_STATUS, "Первичный контакт", 20, True, "#99ccff", 0),
    (70000012, "Переговоры", 30, True, "#ffff99", 0),
    (70000013, "Принимают решение", 40, True, "#ffcc66", 0),
    (WON, "Успешно реализовано", 10000, False, "#CCFF66", 0),
    (LOST, "Закрыто и не реализовано", 11000, False, "#D5D8DB", 0),
]

# A second, non-main pipeline (choice: ids, name and working statuses). 142/143 are shared (§2).
REPEAT_PIPELINE_ID = 7000002
REPEAT_FIRST_WORKING_STATUS = 70000021
REPEAT_STATUSES = [
    (70000020, "Неразобранное", 10, False, "#c1c1c1", 1),
    (REPEAT_FIRST_WORKING_STATUS, "Новый запрос", 20, True, "#99ccff", 0),
    (70000022, "Предложение отправлено", 30, True, "#ffff99", 0),
    (70000023, "Согласование", 40, True, "#ffcc66", 0),
    (WON, "Успешно реализовано", 10000, False, "#CCFF66", 0),
    (LOST, "Закрыто и не реализовано", 11000, False, "#D5D8DB", 0),
]

# pipeline id -> (name, sort, is_main, statuses, first working status)
PIPELINES = {
    PIPELINE_ID: ("Воронка", 1, True, STATUSES, FIRST_WORKING_STATUS),
    REPEAT_PIPELINE_ID: ("Повторные продажи", 2, False, REPEAT_STATUSES, REPEAT_FIRST_WORKING_STATUS),
}

PHONE_ENUMS = ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")
EMAIL_ENUMS = ("WORK", "PRIV", "OTHER")
FIELD_TYPES = ("text", "numeric", "checkbox", "select", "multiselect", "multitext", "date", "url", "textarea",
               "radiobutton", "streetaddress", "smart_address", "birthday", "date_time", "price", "monetary")


def pipeline_json(account_id: int, base: str, pipeline_id: int = PIPELINE_ID) -> dict:
    name, order, is_main, rows, _ = PIPELINES[pipeline_id]
    statuses = [{"id": sid, "name": sname, "sort": sort, "is_editable": editable, "pipeline_id": pipeline_id,
                 "color": color, "type": stype, "account_id": account_id,
                 "_links": {"self": {"href": f"{base}/api/v4/leads/pipelines/{pipeline_id}/statuses/{sid}"}}}
                for sid, sname, sort, editable, color, stype in rows]
    return {"id": pipeline_id, "name": name, "sort": order, "is_main": is_main, "is_unsorted_on": True,
            "is_archive": False, "account_id": account_id,
            "_links": {"self": {"href": f"{base}/api/v4/leads/pipelines/{pipeline_id}"}},
            "_embedded": {"statuses": statuses}}


def all_pipelines_json(account_id: int, base: str) -> list[dict]:
    return [pipeline_json(account_id, base, pid) for pid in sorted(PIPELINES, key=lambda p: PIPELINES[p][1])]


STATUS_IDS = {s[0] for s in STATUSES}  # the main pipeline's
PIPELINE_STATUS_IDS = {pid: {s[0] for s in spec[3]} for pid, spec in PIPELINES.items()}


def pipeline_of_status(status_id: int) -> int | None:
    """The pipeline a working/incoming status belongs to (None for 142/143, which every pipeline has)."""
    if status_id in (WON, LOST):
        return None
    for pid, ids in PIPELINE_STATUS_IDS.items():
        if status_id in ids:
            return pid
    return None


class FieldRegistry:
    """Custom-field definitions per entity type (``GET /api/v4/{type}/custom_fields``)."""

    def __init__(self, account_id: int):
        self.account_id = account_id
        self.by_type: dict[str, dict[int, dict]] = {"contacts": {}, "companies": {}, "leads": {}}
        self._next_field = 900001
        self._next_enum = 1500001
        for entity in ("contacts", "companies"):
            self.add(entity, "Телефон", "multitext", code="PHONE", enums=PHONE_ENUMS, predefined=True)
            self.add(entity, "Email", "multitext", code="EMAIL", enums=EMAIL_ENUMS, predefined=True)
        self.birthday_id = self.add("contacts", "День рождения", "birthday")["id"]

    def add(self, entity: str, name: str, ftype: str, *, code: str | None = None, enums=None,
            predefined: bool = False, sort: int | None = None) -> dict:
        fid = self._next_field
        self._next_field += 1
        enum_rows = None
        if enums:
            enum_rows = []
            for i, value in enumerate(enums):
                enum_rows.append({"id": self._next_enum, "value": value, "sort": (i + 1) * 2})
                self._next_enum += 1
        field = {"id": fid, "name": name, "type": ftype, "account_id": self.account_id, "code": code,
                 "sort": sort if sort is not None else 500 + len(self.by_type[entity]), "is_api_only": False,
                 "enums": enum_rows, "group_id": None, "required_statuses": [], "is_deletable": not predefined,
                 "is_predefined": predefined, "entity_type": entity, "remind": "never" if ftype == "birthday" else None,
                 "settings": None}
        self.by_type[entity][fid] = field
        return field

    def text_field(self, entity: str, name: str) -> dict:
        for field in self.by_type[entity].values():
            if field["name"] == name and field["type"] == "text":
                return field
        return self.add(entity, name, "text")

    def find(self, entity: str, field_id=None, code=None) -> dict | None:
        fields = self.by_type[entity]
        if field_id is not None:
            try:
                return fields.get(int(field_id))
            except (TypeError, ValueError):
                return None
        if code is not None:
            for field in fields.values():
                if field["code"] and field["code"].upper() == str(code).upper():
                    return field
        return None

    def render(self, entity: str, base: str) -> list[dict]:
        return [{**f, "_links": {"self": {"href": f"{base}/api/v4/{entity}/custom_fields/{f['id']}"}}}
                for f in sorted(self.by_type[entity].values(), key=lambda f: (f["sort"], f["id"]))]

    def value(self, field: dict, values: list[dict]) -> dict:
        """One entity value item in the read shape."""
        return {"field_id": field["id"], "field_name": field["name"], "field_code": field["code"],
                "field_type": field["type"], "values": values}

    def enum_of(self, field: dict, enum_id=None, enum_code=None) -> dict | None:
        for row in field.get("enums") or []:
            if enum_id is not None and str(row["id"]) == str(enum_id):
                return row
            if enum_id is None and enum_code is not None and row["value"].upper() == str(enum_code).upper():
                return row
        return None
