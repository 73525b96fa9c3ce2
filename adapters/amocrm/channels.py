"""amoCRM's own channels as campaign actions: Salesbot runs and Digital Pipeline stage moves.

* ``stage``: the contact's newest open lead of the configured pipeline moves into the configured status
  (``PATCH /api/v4/leads``), so the status's Digital Pipeline trigger (Salesbot, e-mail, webhook) fires;
  a contact with no open lead there gets a new lead in that status (named like a sales-generator lead,
  the marker ending the name). A lead already in that status is left alone (moving it would not fire the
  trigger again). An interrupted run looks for the lead by its marker (``?query=``) or for a
  ``lead_status_changed`` event into that status on one of the contact's leads since the entry day
  (``GET /api/v4/events``), and only moves what it does not find.
* ``salesbot``: ``POST /api/v2/salesbot/run`` with ``[{"bot_id", "entity_id", "entity_type": 1}]`` (a
  contact), at most 100 a call. amoCRM keeps nothing an API can list about a bot run (no event type, no
  run list), so the connector makes the bot leave a trace in something amoCRM does keep: a contact text
  field it creates, "crm-lifecycle bot" (code CRM_LIFECYCLE_BOT, editable, so a bot step can write it).
  A run goes in recorded steps: a note on the contact carrying the action's marker (what reps see); the
  field set to ``pending <marker> <unix time>`` (``PATCH /api/v4/contacts``); the ledger records that
  step (``{"note", "step": "run", "pending"}``, still ``sending``); then the run. The bot's first step,
  set up as docs/campaigns.md says (a "change field" step), overwrites the field. A run that dies before
  the ledger record never asked amoCRM to start the bot: it is sent again. One that dies after it (the run
  request in flight, or its answer lost) reads the field back: overwritten, the bot ran (done); still this
  action's pending value after ``confirm_minutes`` (the action's option, default 10: amoCRM starts bots
  from a queue), it never started (sent again); younger, the action stays in doubt for a later run.
  So each planned run starts exactly once, provided the bot has that first step. Whether it has is
  checked on every later sync: a done run whose field is still pending after ``confirm_minutes`` means the
  bot lacks the step; the bot is then reported (a warning once per bot, naming the campaign; ``lifecycle plan``) and its runs fall
  back to at most once: an unknown outcome counts as done with ``"unverified": true``, never resent.
  Two runs for one contact never share a batch (the field holds one pending value): the second waits for
  the next run.
"""

from __future__ import annotations

import logging
import time as clock
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from adapters.amocrm.client import AmoError, AmoHTTPError
from adapters.amocrm.pipelines import statuses_of
from adapters.amocrm.pipelines import status as find_status
from adapters.amocrm.source import iter_list
from adapters.base import AdapterConfigError, marker
from adapters.channels import channel_actions, is_channel, wrong_crm  # noqa: F401 - is_channel: used by actions.py

if TYPE_CHECKING:
    from adapters.amocrm.actions import AmoActions

log = logging.getLogger("lifecycle.executor")

SYSTEM_STATUSES = {142, 143}
MAX_RUNS = 100
CONTACT = 1  # salesbot entity_type: 1 contact, 2 lead
BOT_FIELD_NAME = "crm-lifecycle bot"  # the contacts' text field a bot's first step overwrites
BOT_FIELD_CODE = "CRM_LIFECYCLE_BOT"
PENDING = "pending"
CONFIRM_MINUTES = 10  # default: how long amoCRM may take to start a queued bot


def pending_value(key: str, stamp: float) -> str:
    return f"{PENDING} {marker(key)} {int(stamp)}"


def pending_of(value: str | None) -> str | None:
    """The marker a pending value names (None: not a pending value)."""
    parts = str(value or "").split()
    return parts[1] if len(parts) == 3 and parts[0] == PENDING and parts[2].isdigit() else None


def pending_age(value: str | None, now: float) -> float | None:
    """Seconds since a pending value was written (None: not a pending value)."""
    parts = str(value or "").split()
    if len(parts) != 3 or parts[0] != PENDING or not parts[2].isdigit():
        return None
    return now - int(parts[2])


def bot_setup(rows: Sequence[Any]) -> dict[int, str]:
    """bot id -> "seen" (the bot overwrote the field: its runs are exactly once) or "missing" (it did not:
    at most once), from the latest checked run of each bot in the ledger; unchecked bots are absent. A bot's
    steps are the same in every campaign that runs it, so the state is the bot's."""
    latest: dict[int, tuple[float, str]] = {}
    for r in rows:
        result = r["result"] if isinstance(r["result"], dict) else {}
        if r["action"] != "salesbot" or result.get("bot_step") not in ("seen", "missing"):
            continue
        at, bot = float(result.get("checked_at") or 0), int(r["payload"]["bot_id"])
        if bot not in latest or at >= latest[bot][0]:
            latest[bot] = (at, result["bot_step"])
    return {b: step for b, (_, step) in latest.items()}


class AmoChannels:
    def __init__(self, actions: AmoActions):
        self.actions = actions
        self.stages: dict[tuple[str, str], tuple[int, int]] = {}  # (pipeline, stage) -> (pipeline id, status id)
        self.announced: dict[str, str] = {}  # bot runs whose pending step this process recorded: key -> value
        self.bot_field: int | None = None  # the contacts' "crm-lifecycle bot" field (created before the first run)
        self.setup: dict[int, str] = {}  # bot id -> "seen" / "missing" (bot_setup), refreshed by review
        self.undecided: set[str] = set()  # runs whose outcome cannot be told yet (find leaves them in doubt)
        self.deferred: set[str] = set()  # runs held back to a later run (a second run for one contact)

    @property
    def client(self) -> Any:
        return self.actions.client

    # -- start-up checks -----------------------------------------------------------------------------

    def resolve(self, campaigns: Sequence[Any]) -> None:
        wrong = wrong_crm(campaigns, "amocrm")
        if wrong:
            raise AdapterConfigError(f"[[campaign]] {wrong[0]!r}: action {wrong[1]!r} is a Bitrix24 channel; amoCRM "
                                     f"campaigns send through 'salesbot' or 'stage' (a Digital Pipeline trigger)")
        bots = channel_actions(campaigns, "salesbot")
        if bots and self.actions.plural != "contacts":
            raise AdapterConfigError(f"[[campaign]] {bots[0][0].name!r}: a Salesbot runs on contacts (or leads); with "
                                     f"[crm] customer = \"company\" use action 'stage' instead")
        moves = channel_actions(campaigns, "stage")
        if not moves:
            return
        for campaign, action in moves:
            pipeline = self.actions.pipelines.pipeline(campaign, action.pipeline)
            statuses = [s for s in statuses_of(pipeline) if int(s["id"]) not in SYSTEM_STATUSES]
            status = find_status(campaign, statuses, action.stage,
                                 f"status {action.stage!r} is not a status of pipeline {pipeline.get('name')!r}")
            self.stages[(str(action.pipeline), str(action.stage))] = (int(pipeline["id"]), int(status["id"]))

    # -- sending -------------------------------------------------------------------------------------

    def create(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        self.undecided, self.deferred = set(), set()
        done: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        bots = [r for r in rows if r["action"] == "salesbot"]
        for i in range(0, len(bots), MAX_RUNS):
            self._run_bots(bots[i:i + MAX_RUNS], done, errors)
        moves = [r for r in rows if r["action"] == "stage"]
        if moves:
            self._move(moves, done, errors)
        return done, errors

    def _run_bots(self, rows: list[dict[str, Any]], done: dict, errors: dict) -> None:
        seen: set[int] = set()
        batch = []
        for r in rows:  # one pending value per contact: a second run for it waits for the next run
            if int(r["customer_id"]) in seen:
                self.deferred.add(r["key"])
            else:
                seen.add(int(r["customer_id"]))
                batch.append(r)
        rows = batch
        notes = [{"entity_id": int(r["customer_id"]), "note_type": "common", "request_id": str(i),
                  "params": {"text": f"{r['payload']['title']}\nSalesbot {r['payload']['bot_id']} [{marker(r['key'])}]"}}
                 for i, r in enumerate(rows)]
        try:
            answer = self.client.post(f"/api/v4/{self.actions.plural}/notes", notes)
            field = self._bot_field_id()
        except AmoHTTPError as exc:
            if exc.status >= 500:
                raise
            for r in rows:
                errors[r["key"]] = str(exc)
            return
        created = {str(n.get("request_id")): n for n in ((answer or {}).get("_embedded") or {}).get("notes") or []}
        announced = [(r, created[str(i)]) for i, r in enumerate(rows) if str(i) in created]
        for i, r in enumerate(rows):
            if str(i) not in created:
                errors[r["key"]] = "amoCRM did not add the note announcing this bot run"
        if not announced:
            return
        stamp = clock.time()
        pending = {r["key"]: pending_value(r["key"], stamp) for r, _ in announced}
        try:
            for i in range(0, len(announced), 50):
                self.client.patch(f"/api/v4/{self.actions.plural}", [
                    {"id": int(r["customer_id"]), "custom_fields_values": [{"field_id": field, "values": [{"value": pending[r["key"]]}]}]}
                    for r, _ in announced[i:i + 50]])
        except AmoHTTPError as exc:
            if exc.status >= 500:
                raise
            for r, _ in announced:  # nothing ran; a retry writes another note and the field again
                errors[r["key"]] = str(exc)
            return
        # The run's intent: from here on, a run that dies reads the field back to know whether the bot started.
        self.actions.checkpoint({r["key"]: {"note": int(note["id"]), "step": "run", "pending": pending[r["key"]]}
                                 for r, note in announced})
        self.announced.update(pending)
        body = [{"bot_id": int(r["payload"]["bot_id"]), "entity_id": int(r["customer_id"]), "entity_type": CONTACT}
                for r, _ in announced]
        try:
            self.client.post("/api/v2/salesbot/run", body)
        except AmoHTTPError as exc:
            if exc.status < 500:  # refused: nothing ran; the note stays, a retry writes another
                for r, _ in announced:
                    errors[r["key"]] = str(exc)
                return
            self._settle([(r, int(note["id"]), pending[r["key"]]) for r, note in announced], done, errors)
            return
        except AmoError:
            self._settle([(r, int(note["id"]), pending[r["key"]]) for r, note in announced], done, errors)
            return
        for r, note in announced:
            done[r["key"]] = {"note": int(note["id"]), "bot_id": int(r["payload"]["bot_id"]), "pending": pending[r["key"]]}

    def _settle(self, runs: list[tuple[Any, int | None, str | None]], done: dict, errors: dict) -> None:
        """Runs whose request's fate is unknown: the field tells (done / sent again / still in doubt)."""
        found = self._bot_outcomes(runs)
        for r, _, _ in runs:
            if r["key"] in found:
                done[r["key"]] = found[r["key"]]
            elif r["key"] not in self.undecided:
                errors[r["key"]] = "the Salesbot did not start (its field is still pending); sent again"

    def _bot_outcomes(self, runs: list[tuple[Any, int | None, str | None]]) -> dict[str, dict[str, Any]]:
        """Of runs recorded as requested, as (row, note id, pending value): the ones that ran, or count as
        done unverified (the bot lacks its first step, an earlier version wrote no field, or the field
        cannot tell); those whose outcome is not known yet go to :attr:`undecided`; the rest never started."""
        found: dict[str, dict[str, Any]] = {}
        values = self._field_values([int(r["customer_id"]) for r, _, _ in runs]) if runs else {}
        now = clock.time()
        for r, note, mine in runs:
            base = {"note": note, "bot_id": int(r["payload"]["bot_id"])}
            if not mine or self.bot_field is None or self.setup.get(int(r["payload"]["bot_id"])) == "missing":
                found[r["key"]] = {**base, "unverified": True}  # at most once: never resent (or the field is gone)
                continue
            value = values.get(int(r["customer_id"]))
            if int(r["customer_id"]) not in values:
                found[r["key"]] = {**base, "unverified": True}  # the contact is gone: nothing to tell by
            elif pending_of(value) == marker(r["key"]):  # still this run's pending value
                age = pending_age(value, now) or 0.0
                if age < 60 * float(r["payload"].get("confirm_minutes", CONFIRM_MINUTES)):
                    self.undecided.add(r["key"])  # amoCRM may not have taken it from its queue yet
                # else: the bot never started: not found, sent again
            elif pending_of(value):
                found[r["key"]] = {**base, "unverified": True}  # another run's pending value: cannot tell
            else:
                found[r["key"]] = {**base, "pending": mine, "bot_step": "seen", "checked_at": int(now), "read_back": True}
        return found

    def _field_values(self, contact_ids: list[int]) -> dict[int, str | None]:
        """contact id -> the value of its "crm-lifecycle bot" field."""
        field = self.bot_field if self.bot_field is not None else self._find_bot_field()
        out: dict[int, str | None] = {}
        ids = sorted(set(contact_ids))
        for i in range(0, len(ids), 50):
            for page in iter_list(self.client, f"/api/v4/{self.actions.plural}", self.actions.plural,
                                  {"filter[id][]": ids[i:i + 50]}, limit=50):
                for item in page:
                    value = next((str(v.get("value")) for cf in item.get("custom_fields_values") or []
                                  if field is not None and int(cf.get("field_id") or 0) == field
                                  for v in cf.get("values") or []), None)
                    out[int(item["id"])] = value
        return out

    def _find_bot_field(self) -> int | None:
        for page in iter_list(self.client, f"/api/v4/{self.actions.plural}/custom_fields", "custom_fields", {}):
            for field in page:
                if str(field.get("code") or "").upper() == BOT_FIELD_CODE or field.get("name") == BOT_FIELD_NAME:
                    self.bot_field = int(field["id"])
                    return self.bot_field
        return None

    def _bot_field_id(self) -> int:
        """The contacts' "crm-lifecycle bot" field, created (``POST /api/v4/contacts/custom_fields``) before the
        first run: a write, so never at start-up. Not API-only: the bot's step must be able to write it."""
        if self.bot_field is None and self._find_bot_field() is None:
            answer = self.client.post(f"/api/v4/{self.actions.plural}/custom_fields", [
                {"name": BOT_FIELD_NAME, "type": "text", "code": BOT_FIELD_CODE, "sort": 10001}], idempotent=False)
            created = ((answer or {}).get("_embedded") or {}).get("custom_fields") or []
            self.bot_field = int(created[0]["id"]) if created else self._find_bot_field()
            if self.bot_field is None:
                raise ValueError("amoCRM did not create the contact field for crm-lifecycle's Salesbot runs")
        return self.bot_field  # type: ignore[return-value]

    def review(self, rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """Check done Salesbot runs old enough (``confirm_minutes``) for their field: overwritten, the
        campaign's bot has its first step; still pending, it has not (warned once per bot; its runs
        fall back to at most once). Returns the checked rows' new results; reads only."""
        self.setup = bot_setup(rows)
        now = clock.time()
        due = []
        for r in rows:
            result = r["result"] if isinstance(r["result"], dict) else {}
            if (r["action"] == "salesbot" and result.get("pending") and not result.get("bot_step")
                    and not result.get("unverified")
                    and (pending_age(result["pending"], now) or 0.0) >= 60 * float(r["payload"].get("confirm_minutes", CONFIRM_MINUTES))):
                due.append(r)
        if not due:
            return {}
        values = self._field_values([int(r["customer_id"]) for r in due])
        if self.bot_field is None:  # the field was deleted: nothing to check by
            values = {}
        checked: dict[str, dict[str, Any]] = {}
        for r in due:
            value = values.get(int(r["customer_id"]))
            step = ("unknown" if int(r["customer_id"]) not in values else "missing" if pending_of(value) == marker(r["key"])
                    else "unknown" if pending_of(value) else "seen")
            checked[r["key"]] = {**r["result"], "bot_step": step, "checked_at": int(now)}
            bot = int(r["payload"]["bot_id"])
            if step == "missing" and self.setup.get(bot) != "missing":
                log.warning("campaign %r: Salesbot %s did not overwrite the contact field %r in its first step; its "
                            "runs are now at most once (a run interrupted mid-request is not resent). Add the step: "
                            "docs/campaigns.md, 'Salesbot set-up'", r["campaign"], r["payload"].get("bot_id"), BOT_FIELD_NAME)
            if step in ("seen", "missing"):
                self.setup[bot] = step
        return checked

    def _leads_of(self, contact_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """contact id -> its leads (id, pipeline_id, status_id), newest first."""
        links: dict[int, list[int]] = {}
        for i in range(0, len(contact_ids), 50):
            part = contact_ids[i:i + 50]
            params = {"with": "leads", "filter[id][]": part}
            for page in iter_list(self.client, f"/api/v4/{self.actions.plural}", self.actions.plural, params, limit=50):
                for item in page:
                    links[int(item["id"])] = [int(l["id"]) for l in (item.get("_embedded") or {}).get("leads") or []]
        lead_ids = sorted({lid for ids in links.values() for lid in ids})
        leads: dict[int, dict[str, Any]] = {}
        for i in range(0, len(lead_ids), 50):
            params = {"filter[id][]": lead_ids[i:i + 50]}
            for page in iter_list(self.client, "/api/v4/leads", "leads", params, limit=50):
                for lead in page:
                    leads[int(lead["id"])] = lead
        return {cid: sorted((leads[l] for l in ids if l in leads), key=lambda l: -int(l["id"])) for cid, ids in links.items()}

    def _move(self, rows: list[dict[str, Any]], done: dict, errors: dict) -> None:
        leads = self._leads_of(sorted({int(r["customer_id"]) for r in rows}))
        patches: list[tuple[dict[str, Any], dict[str, Any]]] = []
        creates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for row in rows:
            p = row["payload"]
            target = self.stages.get((str(p["pipeline"]), str(p["stage"])))
            if target is None:
                errors[row["key"]] = f"pipeline {p['pipeline']!r} / status {p['stage']!r} not resolved"
                continue
            pipeline, status = target
            open_leads = [l for l in leads.get(int(row["customer_id"]), [])
                          if int(l.get("pipeline_id") or 0) == pipeline and int(l.get("status_id") or 0) not in SYSTEM_STATUSES]
            if open_leads and int(open_leads[0]["status_id"]) == status:
                done[row["key"]] = {"lead": int(open_leads[0]["id"]), "already": True}
            elif open_leads:
                patches.append((row, {"id": int(open_leads[0]["id"]), "pipeline_id": pipeline, "status_id": status}))
            else:
                responsible = int(row["responsible_id"]) if row["responsible_id"] is not None else None
                creates.append((row, {"name": f"{p['title']} [{marker(row['key'])}]", "pipeline_id": pipeline,
                                      "status_id": status, "responsible_user_id": responsible,
                                      "_embedded": self.actions.kind.lead_link(int(row["customer_id"]))}))
        if patches:
            try:
                answer = self.client.patch("/api/v4/leads", [item for _, item in patches], idempotent=False)
            except AmoHTTPError as exc:
                if exc.status >= 500:
                    raise
                for row, _ in patches:
                    errors[row["key"]] = str(exc)
            else:
                moved = {int(l["id"]) for l in ((answer or {}).get("_embedded") or {}).get("leads") or []}
                for row, item in patches:
                    if item["id"] in moved:
                        done[row["key"]] = {"lead": item["id"]}
                    else:
                        errors[row["key"]] = "amoCRM did not confirm the stage move"
        if creates:
            made: dict[str, dict[str, Any]] = {}
            self.actions._post("/api/v4/leads", "leads", creates, made, errors)
            for key, result in made.items():
                done[key] = {"lead": result["id"], "created": True}

    # -- finding what an interrupted run did ---------------------------------------------------------

    def find(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        self.undecided = set()
        # Only a Salesbot run whose pending step was recorded may have started its bot: the field tells. A
        # note alone means the run died before asking amoCRM to start anything: sent again.
        runs = []
        for row in rows:
            step = row.get("result") if isinstance(row.get("result"), dict) else {}
            if row["action"] == "salesbot" and (step.get("step") == "run" or row["key"] in self.announced):
                runs.append((row, step.get("note"), self.announced.get(row["key"]) or step.get("pending")))
        found: dict[str, dict[str, Any]] = self._bot_outcomes(runs) if runs else {}
        for row in rows:
            tag = marker(row["key"])
            cid = int(row["customer_id"])
            if row["action"] == "salesbot":
                continue
            if row["action"] != "stage":
                continue
            for page in iter_list(self.client, "/api/v4/leads", "leads", {"query": tag}):
                for lead in page:
                    if tag in str(lead.get("name") or ""):
                        found[row["key"]] = {"lead": int(lead["id"]), "created": True}
            if row["key"] in found:
                continue
            target = self.stages.get((str(row["payload"]["pipeline"]), str(row["payload"]["stage"])))
            lead_ids = [int(l["id"]) for l in self._leads_of([cid]).get(cid, [])][:10]
            if target is None or not lead_ids:
                continue
            since = _day_start(row.get("entry_date"))
            params = {"filter[type]": "lead_status_changed", "filter[entity]": "lead", "filter[created_at]": since,
                      "filter[entity_id][]": lead_ids}
            for page in iter_list(self.client, "/api/v4/events", "events", params, limit=100):
                for event in page:
                    after = [v.get("lead_status") or {} for v in event.get("value_after") or [] if isinstance(v, dict)]
                    if any(int(a.get("id") or 0) == target[1] and int(a.get("pipeline_id") or 0) == target[0] for a in after):
                        found[row["key"]] = {"lead": int(event["entity_id"])}
        return found


def _day_start(value: Any) -> int:
    """Epoch seconds a day before the entry day began (the CRM's zone is not known here: a day of margin)."""
    day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10]) if value else date.today()
    return int(datetime.combine(day - timedelta(days=1), time(0), timezone.utc).timestamp())

