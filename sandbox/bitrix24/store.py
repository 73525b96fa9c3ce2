"""The portal's data: CRM tables, user fields, users, reference lists, tasks, to-dos and comments.

Sources (b24restdocs): api-reference/crm/status/crm-status-list.md (DEAL_STAGE rows, SEMANTICS /
EXTRA), api-reference/crm/universal/category/crm-category-list.md (pipelines, "General" id 0),
api-reference/user/user-get.md (user rows), api-reference/crm/deals/crm-deal-get.md (stage ids such as
``NEW``/``C1:NEW``, STAGE_SEMANTIC_ID P/S/F). Records are kept sparse (only set values) with typed
values; :mod:`records` renders them. One portal-wide lock (in :class:`portal.Portal`) guards all of it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator
from zoneinfo import ZoneInfo


class Table:
    """Rows by integer id plus a sorted id index (for ``order ID`` + ``>ID`` seeks)."""

    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}
        self.ids: list[int] = []
        self.next_id = 1

    def __len__(self) -> int:
        return len(self.rows)

    def insert(self, row: dict, record_id: int | None = None) -> int:
        if record_id is None:
            record_id = self.next_id
        row["ID"] = record_id
        if record_id in self.rows:
            raise KeyError(record_id)
        self.rows[record_id] = row
        if not self.ids or record_id > self.ids[-1]:
            self.ids.append(record_id)
        else:
            bisect.insort(self.ids, record_id)
        self.next_id = max(self.next_id, record_id + 1)
        return record_id

    def delete(self, record_id: int) -> None:
        del self.rows[record_id]
        pos = bisect.bisect_left(self.ids, record_id)
        if pos < len(self.ids) and self.ids[pos] == record_id:
            del self.ids[pos]

    def scan(self, *, desc: bool = False, lo: tuple[int, bool] | None = None,
             hi: tuple[int, bool] | None = None) -> Iterator[dict]:
        """Rows in id order within optional bounds ``(value, inclusive)``."""
        start, stop = 0, len(self.ids)
        if lo is not None:
            start = (bisect.bisect_left if lo[1] else bisect.bisect_right)(self.ids, lo[0])
        if hi is not None:
            stop = (bisect.bisect_right if hi[1] else bisect.bisect_left)(self.ids, hi[0])
        indexes = range(stop - 1, start - 1, -1) if desc else range(start, stop)
        for i in indexes:
            yield self.rows[self.ids[i]]


_DEAL_STAGES = [
    # (category, STATUS_ID, NAME, SORT, semantics P/S/F, color)
    (0, "NEW", "New", 10, "P", "#39A8EF"),
    (0, "PREPARATION", "Document preparation", 20, "P", "#2FC6F6"),
    (0, "PREPAYMENT_INVOICE", "Prepayment invoice", 30, "P", "#55D0E0"),
    (0, "EXECUTING", "In progress", 40, "P", "#47E4C2"),
    (0, "FINAL_INVOICE", "Final invoice", 50, "P", "#FFA900"),
    (0, "WON", "Deal won", 60, "S", "#7BD500"),
    (0, "LOSE", "Deal lost", 70, "F", "#FF5752"),
    (0, "APOLOGY", "Analyze failure", 80, "F", "#FF5752"),
    (1, "C1:NEW", "New", 10, "P", "#39A8EF"),
    (1, "C1:PREPARATION", "Offer", 20, "P", "#2FC6F6"),
    (1, "C1:EXECUTING", "In progress", 30, "P", "#47E4C2"),
    (1, "C1:WON", "Deal won", 40, "S", "#7BD500"),
    (1, "C1:LOSE", "Deal lost", 50, "F", "#FF5752"),
]
_SEMANTIC_WORD = {"P": "process", "S": "success", "F": "failure"}

_REFERENCE = {
    "SOURCE": ["CALL:Call", "EMAIL:E-Mail", "WEB:Website", "ADVERTISING:Advertising", "PARTNER:Existing client",
               "RECOMMENDATION:By recommendation", "TRADE_SHOW:Show/Exhibition", "WEBFORM:CRM form",
               "CALLBACK:Callback", "RC_GENERATOR:Sales boost", "STORE:Online Store", "OTHER:Other"],
    "CONTACT_TYPE": ["CLIENT:Clients", "SUPPLIER:Suppliers", "PARTNER:Partners", "OTHER:Other"],
    "COMPANY_TYPE": ["CUSTOMER:Client", "SUPPLIER:Supplier", "COMPETITOR:Competitor", "PARTNER:Partner",
                     "OTHER:Other"],
    "DEAL_TYPE": ["SALE:Sales", "COMPLEX:Integrated sale", "GOODS:Merchandise sales", "SERVICES:Service sales",
                  "SERVICE:After-sales service"],
    "HONORIFIC": ["HNR_EN_1:Mr.", "HNR_EN_2:Mrs.", "HNR_EN_3:Ms.", "HNR_EN_4:Dr."],
    "INDUSTRY": ["IT:Information Technology", "TELECOM:Telecommunication", "MANUFACTURING:Manufacturing",
                 "BANKING:Banking Services", "CONSULTING:Consulting", "FINANCE:Finance", "OTHER:Other"],
    "EMPLOYEES": ["EMPLOYEES_1:less than 50", "EMPLOYEES_2:50-250", "EMPLOYEES_3:250-500",
                  "EMPLOYEES_4:over 500"],
}

CATEGORIES = {0: "General", 1: "Repeat sales"}
UF_ENTITY = {"contact": "CRM_CONTACT", "company": "CRM_COMPANY", "deal": "CRM_DEAL"}


def _build_statuses() -> list[dict]:
    rows: list[dict] = []
    next_id = 101
    for entity, values in _REFERENCE.items():
        for sort, item in enumerate(values, start=1):
            code, name = item.split(":", 1)
            rows.append({"ID": str(next_id), "ENTITY_ID": entity, "STATUS_ID": code, "NAME": name,
                         "NAME_INIT": name, "SORT": str(sort * 10), "SYSTEM": "Y", "CATEGORY_ID": None,
                         "COLOR": None, "SEMANTICS": None})
            next_id += 1
    for category, code, name, sort, sem, color in _DEAL_STAGES:
        rows.append({
            "ID": str(next_id), "ENTITY_ID": "DEAL_STAGE" if category == 0 else f"DEAL_STAGE_{category}",
            "STATUS_ID": code, "NAME": name, "NAME_INIT": name if sem != "P" or sort == 10 else "",
            "SORT": str(sort), "SYSTEM": "Y" if sem != "P" or sort == 10 else "N",
            "CATEGORY_ID": None if category == 0 else str(category), "COLOR": color,
            "SEMANTICS": None if sem == "P" else sem, "EXTRA": {"SEMANTICS": _SEMANTIC_WORD[sem], "COLOR": color},
        })
        next_id += 1
    return rows


@dataclass
class Store:
    tz: ZoneInfo
    tables: dict[str, Table] = field(default_factory=lambda: {"contact": Table(), "company": Table(), "deal": Table()})
    userfields: dict[str, dict[str, dict]] = field(default_factory=lambda: {"contact": {}, "company": {}, "deal": {}})
    users: dict[int, dict] = field(default_factory=dict)
    statuses: list[dict] = field(default_factory=_build_statuses)
    tasks: Table = field(default_factory=Table)
    activities: Table = field(default_factory=Table)
    comments: Table = field(default_factory=Table)
    task_comments: Table = field(default_factory=Table)  # task.commentitem.add
    # catalogue and deal product rows (sandbox/bitrix24/products.py)
    products: Table = field(default_factory=Table)
    sections: Table = field(default_factory=Table)
    product_rows: Table = field(default_factory=Table)
    rows_of_deal: dict[int, list[int]] = field(default_factory=dict)
    next_multifield_id: int = 1
    next_uf_id: int = 100
    next_enum_id: int = 1000

    # -- reference data --------------------------------------------------------------------------

    def stage(self, stage_id: str) -> dict | None:
        for row in self.statuses:
            if row["STATUS_ID"] == stage_id and row["ENTITY_ID"].startswith("DEAL_STAGE"):
                return row
        return None

    def stage_category(self, stage_row: dict) -> int:
        return int(stage_row["CATEGORY_ID"] or 0)

    def first_stage(self, category: int) -> str:
        entity = "DEAL_STAGE" if category == 0 else f"DEAL_STAGE_{category}"
        rows = sorted((r for r in self.statuses if r["ENTITY_ID"] == entity), key=lambda r: int(r["SORT"]))
        return rows[0]["STATUS_ID"]

    @staticmethod
    def semantic(stage_row: dict) -> str:
        return {"process": "P", "success": "S", "failure": "F"}[stage_row["EXTRA"]["SEMANTICS"]]

    def ensure_user(self, user_id: int, now: float, name: str | None = None) -> dict:
        if user_id not in self.users:
            stamp = datetime.fromtimestamp(now, timezone.utc).astimezone(self.tz)
            self.users[user_id] = {
                "ID": str(user_id), "ACTIVE": True, "NAME": name or f"User{user_id}", "LAST_NAME": "Sandbox",
                "SECOND_NAME": "", "EMAIL": f"user{user_id}@sandbox.local",
                "LAST_LOGIN": stamp.isoformat(timespec="seconds"),
                "DATE_REGISTER": stamp.replace(hour=0, minute=0, second=0).isoformat(timespec="seconds"),
                "TIME_ZONE": "", "IS_ONLINE": "N", "PERSONAL_GENDER": "", "PERSONAL_BIRTHDAY": "",
                "WORK_POSITION": "Manager" if user_id != 1 else "Administrator", "UF_EMPLOYMENT_DATE": "",
                "UF_DEPARTMENT": [1], "USER_TYPE": "employee",
            }
        return self.users[user_id]

    def new_multifield_id(self) -> int:
        self.next_multifield_id += 1
        return self.next_multifield_id - 1

    def new_uf_id(self) -> int:
        self.next_uf_id += 1
        return self.next_uf_id - 1

    def new_enum_id(self) -> int:
        self.next_enum_id += 1
        return self.next_enum_id - 1

    def uf_by_id(self, uf_id: int) -> tuple[str, dict] | None:
        for entity, defs in self.userfields.items():
            for definition in defs.values():
                if definition["ID"] == uf_id:
                    return entity, definition
        return None
