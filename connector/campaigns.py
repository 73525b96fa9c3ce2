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
              "campaign": "string", "segment": "string", "segment_label": "string", "last_amount": "number"}
TEMPLATE_ATTRS = ("title", "description", "script", "task_title")


def template_types(engine: Any) -> dict[str, str]:
    """Every name a template may use, with its type: card fields, features, custom fields."""
    from rules.features import BUILTIN_FEATURES
    from rules.predict.names import PREDICTION_FEATURES
    from rules.reorder import REORDER_FEATURES

    fields = getattr(engine, "fields", {}) or {}
    return {**BUILTIN_FEATURES, **PREDICTION_FEATURES, **REORDER_FEATURES, **{name: f.type for name, f in fields.items()},
            **CARD_TYPES}


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
    status: str | None = None  # None: "planned" (or "skipped" with a reason); "waiting" (approval) | "holdout"

    @property
    def marker(self) -> str:
        return marker(self.key)

    @property
    def ledger_status(self) -> str:
        return self.status or ("skipped" if self.skip_reason else "planned")


WHY = {
    "en": {"why": "Why: {label}.", "purchases": "Purchases: {n}", "last": "last on {day} for {amount}",
           "total": "total {total}", "none": "No purchases yet."},
    "ru": {"why": "Почему: {label}.", "purchases": "Покупок: {n}", "last": "последняя {day} на {amount}",
           "total": "всего {total}", "none": "Покупок пока нет."},
}


def _money(value: Any) -> str:
    return f"{float(value):,.0f}".replace(",", "\u00a0")


def why_text(values: dict[str, Any], language: str = "en") -> str:
    """The default text of a campaign's task or deal when the config gives none: why this customer (the
    segment's label), their purchases, the last purchase's date and amount, and the total."""
    t = WHY.get(language, WHY["en"])
    lines = [t["why"].format(label=values.get("segment_label") or values.get("segment") or "")]
    n = values.get("purchases")
    if isinstance(n, (int, float)) and n == n and n > 0:
        parts = [t["purchases"].format(n=int(n))]
        day, amount = values.get("last_purchase"), values.get("last_amount")
        if isinstance(day, date):
            parts.append(t["last"].format(day=day.strftime("%d.%m.%Y"), amount=_money(amount) if isinstance(
                amount, (int, float)) and amount == amount else "-"))
        total = values.get("monetary")
        if isinstance(total, (int, float)) and total == total:
            parts.append(t["total"].format(total=_money(total)))
        lines.append("; ".join(parts) + ".")
    else:
        lines.append(t["none"])
    return cut(" ".join(lines), LIMITS["description"])


HOLDOUT_REASON = "holdout group"


def in_holdout(customer_id: int, campaign: str, percent: float) -> bool:
    """Whether ``customer_id`` is in ``campaign``'s holdout group: a hash of both, so the answer never changes
    from run to run (and differs between campaigns)."""
    if not percent:
        return False
    import hashlib

    digest = hashlib.sha256(f"{campaign}\x00{int(customer_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent




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
    existing: dict[str, list[int]] | None = None,
    waiting: frozenset[str] | set[str] = frozenset(),
    labels: dict[str, str] | None = None,
    language: str = "en",
) -> list[PlannedAction]:
    """Actions (and skips, with reasons) for the customers who entered or left campaign segments today.

    ``existing``: campaign name -> customers already in its segment to act on once, as if they entered
    today (``include_current_members``). ``waiting``: campaigns whose actions wait for approval.
    Holdout members (``holdout_percent``) get rows with status ``holdout`` and no action.
    Order: campaigns in config order, customers by id, so caps and round-robin are deterministic.
    """
    out: list[PlannedAction] = []
    touches = {cid: list(days) for cid, days in history.touches.items()}
    per_rep_day = Counter(history.per_rep_day)
    rr = Counter(history.per_campaign)
    period_start = as_of - timedelta(days=pressure.period_days - 1)
    for campaign in campaigns:
        extra = (existing or {}).get(campaign.name, [])
        enter_ids = sorted(set(entered.get(campaign.segment, [])) | set(extra)) if extra else entered.get(campaign.segment, [])
        holdout_pct = getattr(campaign, "holdout_percent", 0) or 0
        for event, ids, actions in (("enter", enter_ids, campaign.on_enter),
                                    ("exit", left.get(campaign.segment, []), campaign.on_exit)):
            if not actions:
                continue
            for cid in sorted(ids):
                card = cards.get(cid) or Card({"id": cid}, None)
                reason = None
                last = history.last_by_campaign.get((campaign.name, cid))
                status = "waiting" if campaign.name in waiting else None
                if card.do_not_contact:
                    reason = "do not contact"
                elif in_holdout(cid, campaign.name, holdout_pct):
                    reason, status = HOLDOUT_REASON, "holdout"
                elif last is not None and campaign.cooldown_days and (as_of - last).days < campaign.cooldown_days:
                    reason = f"cooldown: last action {last.isoformat()}, {campaign.cooldown_days} days"
                elif pressure.max_touches is not None:
                    recent = [d for d in touches.get(cid, []) if d >= period_start]
                    if len(recent) >= pressure.max_touches:
                        reason = f"pressure: {len(recent)} touches in {pressure.period_days} days"
                responsible = None
                if reason is None:
                    responsible, reason = _assign(campaign, card, as_of, per_rep_day, rr)
                values = {**template_values(card.values, as_of), "campaign": campaign.name, "segment": campaign.segment,
                          "segment_label": (labels or {}).get(campaign.segment, campaign.segment)}
                for i, action in enumerate(actions):
                    base = f"{campaign.name}/{'on_' + event}.{i}.{action.action}/{cid}/{as_of.isoformat()}"
                    common = dict(campaign=campaign.name, customer_id=cid, entry_date=as_of, event=event,
                                  responsible_id=responsible, skip_reason=reason,
                                  status=status if (reason is None or status == "holdout") else None)
                    deadline = calendar.deadline(as_of, action.due_in_days, tz).isoformat()
                    if action.action in CHANNELS:  # the CRM's own channels (connector/channels.py)
                        payload, own_skip = channel_payload(action, values)
                        out.append(PlannedAction(key=base, action=action.action, payload=payload,
                                                 **{**common, "skip_reason": reason or own_skip}))
                    elif action.action == "call_task":
                        kind = "todo" if action.kind == "todo" else "call_task"
                        payload = {"title": render(action.title, values, "title"),
                                   "description": (render(action.description, values, "description") if action.description
                                                   else why_text(values, language)),
                                   "deadline": deadline}
                        out.append(PlannedAction(key=base, action=kind, payload=payload, **common))
                    else:
                        title = render(action.title, values, "title")
                        payload = {"title": title, "pipeline": action.pipeline, "stage": action.stage,
                                   "script": render(action.script, values, "script") if action.script else why_text(values, language),
                                   "deadline": deadline}
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


CLOSE_TEXTS = {
    "en": {"bought": "Closed by crm-lifecycle: the customer bought on {day}.",
           "left": "Closed by crm-lifecycle: the customer left the segment {segment} on {day}."},
    "ru": {"bought": "Закрыто crm-lifecycle: клиент купил {day}.",
           "left": "Закрыто crm-lifecycle: клиент вышел из сегмента {segment} {day}."},
}


def plan_closing(campaigns: Iterable[Any], left: dict[str, list[int]], done: Iterable[Any], as_of: date,
                 last_purchase: dict[int, date], history_keys: set[str], language: str = "ru",
                 labels: dict[str, str] | None = None) -> list[PlannedAction]:
    """``close_on_exit``: for each customer who left a campaign's segment today, close what the campaign
    created for them on entry and is still open in the CRM (call tasks; deals when ``close_deal_stage`` is
    set), with a comment saying why. ``done``: the ledger's done rows of these customers. Keys are the
    created object's key + ``/close``, so a close is planned once."""
    texts = CLOSE_TEXTS.get(language, CLOSE_TEXTS["en"])
    by_campaign = {c.name: c for c in campaigns if getattr(c, "close_on_exit", False)}
    leaving = {(name, cid) for name, c in by_campaign.items() for cid in left.get(c.segment, [])}
    out: list[PlannedAction] = []
    for row in sorted(done, key=lambda r: r.key):
        campaign = by_campaign.get(row.campaign)
        if campaign is None or (row.campaign, row.customer_id) not in leaving or row.event != "enter":
            continue
        if row.action in ("call_task", "deal_task"):
            kind = "close_task"
        elif row.action == "deal" and campaign.close_deal_stage:
            kind = "close_deal"
        else:
            continue
        target = (row.result or {}).get("id")
        key = f"{row.key}/close"
        if target is None or key in history_keys:
            continue
        bought = last_purchase.get(row.customer_id)
        if bought is not None and bought >= row.entry_date:
            comment = texts["bought"].format(day=bought.isoformat())
        else:
            segment = (labels or {}).get(campaign.segment, campaign.segment)
            comment = texts["left"].format(segment=segment, day=as_of.isoformat())
        payload = {"target": int(target), "target_action": row.action, "comment": comment,
                   "pipeline": row.payload.get("pipeline"), "stage": campaign.close_deal_stage if kind == "close_deal" else None}
        out.append(PlannedAction(key=key, campaign=row.campaign, action=kind, customer_id=row.customer_id, entry_date=as_of,
                                 event="exit", responsible_id=row.responsible_id, payload=payload))
    return out


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
