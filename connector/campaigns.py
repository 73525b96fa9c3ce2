"""Campaigns: which customer gets which call task or sales-generator deal, and when.

Everything here is pure: :func:`plan` turns (who entered and left, the ledger's history, the caps, the
calendar) into a list of :class:`PlannedAction`, each an action to take or a skip with its reason. The
sync stores that plan in the ledger in the same transaction as the membership change it comes from, so
a run killed after recording who entered can never lose the actions it owes them; the executor
(connector/executor.py) then applies whatever the ledger holds.

Keys. Every action has a deterministic key ``campaign/on_enter.0.call_task/customer/YYYY-MM-DD`` (the
day the customer entered or left), so planning the same entry twice gives the same key and the ledger
(key is its primary key) keeps one. A sales-generator deal is two ledger rows: the deal and the call task
on it (``.../deal`` and ``.../deal_task``), the task created once its deal exists.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Iterable
from zoneinfo import ZoneInfo

from adapters.base import marker  # noqa: F401 - re-exported: PlannedAction.marker, the tests
from connector.channels import CHANNELS
from connector.channels import payload as channel_payload
from connector.templates import LIMITS, TemplateError, check_template, cut
from connector.templates import render as render_template

if TYPE_CHECKING:
    from connector.store.ledger import LedgerHistory


def __getattr__(name: str) -> Any:
    """``LedgerHistory`` lives with the ledger (connector.store.ledger), which builds it; still importable here."""
    if name == "LedgerHistory":
        from connector.store.ledger import LedgerHistory

        return LedgerHistory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from rules.features import TRUE_WORDS  # noqa: E402 - the one list of true words


# -- config checks ---------------------------------------------------------------------------------

CARD_TYPES = {"id": "number", "name": "string", "phone": "string", "email": "string", "responsible_id": "string",
              "birthday": "date", "last_purchase": "date", "first_purchase": "date",
              "campaign": "string", "segment": "string"}
TEMPLATE_ATTRS = ("title", "description", "script", "task_title")


def template_types(engine: Any) -> dict[str, str]:
    """Every name a template may use, with its type: card fields, features, custom fields."""
    from rules.features import BUILTIN_FEATURES
    from rules.predict.scoring import PREDICTION_FEATURES

    fields = getattr(engine, "fields", {}) or {}
    return {**BUILTIN_FEATURES, **PREDICTION_FEATURES, **{name: f.type for name, f in fields.items()}, **CARD_TYPES}


def check_campaigns(settings: Any, engine: Any) -> None:
    """Config-time checks: names unique, segments known, templates valid (fields, formats, braces: each is
    rendered against a typed sample card). (Pipelines, stages and users are checked against the CRM when
    a run starts: see the executors' ``resolve``.)"""
    types = template_types(engine)
    seen: set[str] = set()
    for campaign in settings.campaign:
        where = f"[[campaign]] {campaign.name!r}"
        if campaign.name in seen:
            raise ValueError(f"{where}: a second campaign with this name; names must be unique")
        seen.add(campaign.name)
        if campaign.segment not in engine.segment_names:
            import difflib

            close = difflib.get_close_matches(campaign.segment, engine.segment_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: segment {campaign.segment!r} is not a segment{hint}; known: {', '.join(engine.segment_names)}")
        if not campaign.on_enter and not campaign.on_exit:
            raise ValueError(f"{where}: no on_enter or on_exit actions")
        for when, actions in (("on_enter", campaign.on_enter), ("on_exit", campaign.on_exit)):
            for i, action in enumerate(actions):
                for attr in TEMPLATE_ATTRS:
                    text = getattr(action, attr)
                    if not text:
                        continue
                    try:
                        check_template(text, types, limit=LIMITS[attr])
                    except TemplateError as exc:
                        raise ValueError(f"{where} {when}[{i}].{attr}: {exc}") from None
                from connector.channels import check_templates

                check_templates(action, types, f"{where} {when}[{i}]")
    audiences = settings.audiences
    needs = {"yandex": ("yandex_token",), "vk": ("vk_client_id", "vk_client_secret"),
             "google": ("google_access_token",), "meta": ("meta_access_token",)}
    for audience in settings.audience:
        where = f"[[audience]] {audience.segment!r} -> {audience.cabinet}"
        if audience.segment not in engine.segment_names:
            raise ValueError(f"{where}: {audience.segment!r} is not a segment; known: {', '.join(engine.segment_names)}")
        for key in needs[audience.cabinet]:
            if getattr(audiences, key) is None:
                raise ValueError(f"{where}: [audiences] {key} is not set (give it as LIFECYCLE_AUDIENCES__{key.upper()})")
    dnc = settings.pressure.do_not_contact
    if dnc is not None and not dnc.strip():
        raise ValueError("[pressure] do_not_contact: give a field name or leave it out")


def render(template: str, values: dict[str, Any], attr: str = "description") -> str:
    """The template for one customer, cut to the CRM's length for ``attr``; empty values render empty."""
    return render_template(template, values, limit=LIMITS[attr])


def template_values(values: dict[str, Any], as_of: date) -> dict[str, Any]:
    """A card's values with the dates templates may format: birthday as a date, and the first and last
    purchase dates (from ``first_purchase_days`` / ``recency_days`` before ``as_of``)."""
    out = dict(values)
    born = out.get("birthday")
    if isinstance(born, str):
        try:
            out["birthday"] = date.fromisoformat(born[:10])
        except ValueError:
            out["birthday"] = None
    for name, days in (("last_purchase", "recency_days"), ("first_purchase", "first_purchase_days")):
        n = out.get(days)
        if name not in out and isinstance(n, (int, float)) and not isinstance(n, bool) and n == n:
            try:
                out[name] = as_of - timedelta(days=int(n))
            except OverflowError:
                out[name] = None
    return out


# -- calendar --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkCalendar:
    holidays: frozenset[date] = frozenset()
    weekend: frozenset[int] = frozenset({6, 7})
    deadline_time: time = time(18, 0)

    @classmethod
    def from_settings(cls, calendar: Any) -> WorkCalendar:
        hours, minutes = (int(x) for x in calendar.deadline_time.split(":"))
        return cls(frozenset(calendar.holidays), frozenset(calendar.weekend), time(hours, minutes))

    def working(self, day: date) -> bool:
        return day.isoweekday() not in self.weekend and day not in self.holidays

    def add_working_days(self, start: date, days: int) -> date:
        """``days`` working days after ``start``; 0 = ``start`` itself, or the next working day."""
        day = start
        while not self.working(day):
            day += timedelta(days=1)
        for _ in range(days):
            day += timedelta(days=1)
            while not self.working(day):
                day += timedelta(days=1)
        return day

    def deadline(self, start: date, days: int, tz: ZoneInfo) -> datetime:
        return datetime.combine(self.add_working_days(start, days), self.deadline_time, tz)


# -- the plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedAction:
    key: str
    campaign: str
    action: str  # call_task | todo | deal | deal_task
    customer_id: int
    entry_date: date
    event: str  # enter | exit
    responsible_id: int | None
    payload: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None
    parent_key: str | None = None

    @property
    def marker(self) -> str:
        return marker(self.key)




@dataclass(frozen=True)
class Card:
    """What the planner knows of a customer: fields for templates and the do-not-contact flag."""

    values: dict[str, Any]
    responsible_id: int | None
    do_not_contact: bool = False


def is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in TRUE_WORDS


def plan(
    campaigns: Iterable[Any],
    entered: dict[str, list[int]],
    left: dict[str, list[int]],
    as_of: date,
    cards: dict[int, Card],
    history: LedgerHistory,
    calendar: WorkCalendar,
    pressure: Any,
    tz: ZoneInfo,
) -> list[PlannedAction]:
    """Actions (and skips, with reasons) for the customers who entered or left campaign segments today.

    Order: campaigns in config order, customers by id, so caps and round-robin are deterministic.
    """
    out: list[PlannedAction] = []
    touches = {cid: list(days) for cid, days in history.touches.items()}
    per_rep_day = Counter(history.per_rep_day)
    rr = Counter(history.per_campaign)
    period_start = as_of - timedelta(days=pressure.period_days - 1)
    for campaign in campaigns:
        for event, ids, actions in (("enter", entered.get(campaign.segment, []), campaign.on_enter),
                                    ("exit", left.get(campaign.segment, []), campaign.on_exit)):
            if not actions:
                continue
            for cid in sorted(ids):
                card = cards.get(cid) or Card({"id": cid}, None)
                reason = None
                last = history.last_by_campaign.get((campaign.name, cid))
                if card.do_not_contact:
                    reason = "do not contact"
                elif last is not None and campaign.cooldown_days and (as_of - last).days < campaign.cooldown_days:
                    reason = f"cooldown: last action {last.isoformat()}, {campaign.cooldown_days} days"
                elif pressure.max_touches is not None:
                    recent = [d for d in touches.get(cid, []) if d >= period_start]
                    if len(recent) >= pressure.max_touches:
                        reason = f"pressure: {len(recent)} touches in {pressure.period_days} days"
                responsible = None
                if reason is None:
                    responsible, reason = _assign(campaign, card, as_of, per_rep_day, rr)
                values = {**template_values(card.values, as_of), "campaign": campaign.name, "segment": campaign.segment}
                for i, action in enumerate(actions):
                    base = f"{campaign.name}/{'on_' + event}.{i}.{action.action}/{cid}/{as_of.isoformat()}"
                    common = dict(campaign=campaign.name, customer_id=cid, entry_date=as_of, event=event,
                                  responsible_id=responsible, skip_reason=reason)
                    deadline = calendar.deadline(as_of, action.due_in_days, tz).isoformat()
                    if action.action in CHANNELS:  # the CRM's own channels (connector/channels.py)
                        payload, own_skip = channel_payload(action, values)
                        out.append(PlannedAction(key=base, action=action.action, payload=payload,
                                                 **{**common, "skip_reason": reason or own_skip}))
                    elif action.action == "call_task":
                        kind = "todo" if action.kind == "todo" else "call_task"
                        payload = {"title": render(action.title, values, "title"),
                                   "description": render(action.description, values, "description"),
                                   "deadline": deadline}
                        out.append(PlannedAction(key=base, action=kind, payload=payload, **common))
                    else:
                        title = render(action.title, values, "title")
                        payload = {"title": title, "pipeline": action.pipeline, "stage": action.stage,
                                   "script": render(action.script, values, "script"), "deadline": deadline}
                        out.append(PlannedAction(key=base + "/deal", action="deal", payload=payload, **common))
                        task_title = (render(action.task_title, values, "task_title") if action.task_title
                                      else cut(f"Call: {title}", LIMITS["task_title"]))
                        task = {"title": task_title, "description": payload["script"], "deadline": deadline}
                        out.append(PlannedAction(key=base + "/deal_task", action="deal_task", payload=task,
                                                 parent_key=base + "/deal", **common))
                if reason is None:
                    touches.setdefault(cid, []).append(as_of)
                    if responsible is not None:
                        per_rep_day[(campaign.name, responsible, as_of)] += 1
                    rr[campaign.name] += 1
    return [a for a in out if a.key not in history.keys]


def _assign(campaign: Any, card: Card, as_of: date, per_rep_day: Counter, rr: Counter) -> tuple[int | None, str | None]:
    cap = campaign.daily_cap_per_rep
    if campaign.responsible == "owner":
        rep = card.responsible_id
        if rep is None:
            return None, "customer has no responsible user"
        if cap is not None and per_rep_day[(campaign.name, rep, as_of)] >= cap:
            return None, f"daily cap: user {rep} has {cap} actions today"
        return rep, None
    reps = list(campaign.responsible)
    start = rr[campaign.name]
    for step in range(len(reps)):
        rep = reps[(start + step) % len(reps)]
        if cap is None or per_rep_day[(campaign.name, rep, as_of)] < cap:
            return rep, None
    return None, f"daily cap: every user of the round-robin has {cap} actions today"


def group_members(frame: Any) -> dict[str, list[int]]:
    """A (segment, customer_id) polars frame -> segment: [ids]."""
    out: dict[str, list[int]] = defaultdict(list)
    for segment, cid in frame.iter_rows():
        out[segment].append(int(cid))
    return dict(out)
