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
  run list), so the run goes in two recorded steps: a note on the contact carrying the action's marker
  (what reps see), then the ledger records that step (``{"note": id, "step": "run"}``, still
  ``sending``), then the run. A run that dies before that record never asked amoCRM to start the bot:
  the action is sent again. One that dies after it (the run request in flight, or its answer lost) cannot
  know: the action counts as done with ``"unverified": true`` and is never sent again. So a bot is never
  started twice; it may not start only when a run dies while its run request is on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from adapters.amocrm.client import AmoError, AmoHTTPError
from adapters.amocrm.source import iter_list
from adapters.base import AdapterConfigError, marker, pick
from adapters.channels import channel_actions, is_channel, wrong_crm  # noqa: F401 - is_channel: used by actions.py

if TYPE_CHECKING:
    from adapters.amocrm.actions import AmoActions

SYSTEM_STATUSES = {142, 143}
MAX_RUNS = 100
CONTACT = 1  # salesbot entity_type: 1 contact, 2 lead


class AmoChannels:
    def __init__(self, actions: AmoActions):
        self.actions = actions
        self.stages: dict[tuple[str, str], tuple[int, int]] = {}  # (pipeline, stage) -> (pipeline id, status id)
        self.announced: set[str] = set()  # bot runs whose note this process recorded in the ledger

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
        body = self.client.get("/api/v4/leads/pipelines") or {}
        pipelines = (body.get("_embedded") or {}).get("pipelines") or []
        for campaign, action in moves:
            pipeline = pick(pipelines, action.pipeline, "id", "name")
            if pipeline is None:
                names = ", ".join(f"{p.get('name')} (id {p.get('id')})" for p in pipelines)
                raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: pipeline {action.pipeline!r} is not an amoCRM "
                                         f"pipeline; pipelines: {names}")
            statuses = [s for s in (pipeline.get("_embedded") or {}).get("statuses") or []
                        if int(s["id"]) not in SYSTEM_STATUSES]
            status = pick(statuses, action.stage, "id", "name")
            if status is None:
                names = ", ".join(f"{s.get('name')} (id {s.get('id')})" for s in statuses)
                raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: status {action.stage!r} is not a status of "
                                         f"pipeline {pipeline.get('name')!r}; statuses: {names}")
            self.stages[(str(action.pipeline), str(action.stage))] = (int(pipeline["id"]), int(status["id"]))

    # -- sending -------------------------------------------------------------------------------------

    def create(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
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
        notes = [{"entity_id": int(r["customer_id"]), "note_type": "common", "request_id": str(i),
                  "params": {"text": f"{r['payload']['title']}\nSalesbot {r['payload']['bot_id']} [{marker(r['key'])}]"}}
                 for i, r in enumerate(rows)]
        try:
            answer = self.client.post(f"/api/v4/{self.actions.plural}/notes", notes)
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
        # The second step's intent: from here on, a run that dies cannot know whether the bots started.
        self.actions.checkpoint({r["key"]: {"note": int(note["id"]), "step": "run"} for r, note in announced})
        self.announced |= {r["key"] for r, _ in announced}
        body = [{"bot_id": int(r["payload"]["bot_id"]), "entity_id": int(r["customer_id"]), "entity_type": CONTACT}
                for r, _ in announced]
        try:
            self.client.post("/api/v2/salesbot/run", body)
        except AmoHTTPError as exc:
            if exc.status < 500:  # refused: nothing ran; the note stays, a retry writes another
                for r, _ in announced:
                    errors[r["key"]] = str(exc)
                return
            for r, note in announced:  # the outcome is unknown and cannot be looked up: never start twice
                done[r["key"]] = {"note": int(note["id"]), "bot_id": int(r["payload"]["bot_id"]), "unverified": True}
            return
        except AmoError:
            for r, note in announced:
                done[r["key"]] = {"note": int(note["id"]), "bot_id": int(r["payload"]["bot_id"]), "unverified": True}
            return
        for r, note in announced:
            done[r["key"]] = {"note": int(note["id"]), "bot_id": int(r["payload"]["bot_id"])}

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
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            tag = marker(row["key"])
            cid = int(row["customer_id"])
            if row["action"] == "salesbot":
                # Only a run whose second step was recorded may have started its bots: it counts as started
                # (unverified). A note alone means the run died before asking amoCRM to start anything.
                step = (row.get("result") or {}) if isinstance(row.get("result"), dict) else {}
                if step.get("step") == "run" or row["key"] in self.announced:
                    found[row["key"]] = {"note": step.get("note"), "bot_id": int(row["payload"]["bot_id"]), "unverified": True}
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

