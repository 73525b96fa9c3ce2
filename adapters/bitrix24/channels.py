"""Bitrix24's own channels as campaign actions: business processes and CRM e-mail (connector/channels.py).

* ``bizproc``: ``bizproc.workflow.start`` with ``DOCUMENT_ID = ["crm", "CCrmDocumentContact", "CONTACT_7"]``
  (companies: ``CCrmDocumentCompany`` / ``COMPANY_7``), the template resolved at start-up by id or name
  through ``bizproc.workflow.template.list``, and the rendered ``PARAMETERS``. Each start is its own
  ``batch`` with ``halt = 1``: the start, then a timeline comment on the customer carrying the action's
  marker and the workflow id. The portal runs both or stops at a failed start, so a comment with the
  marker exists exactly when the workflow was started; an interrupted run looks the marker up
  (``crm.timeline.comment.list``) instead of starting again. Bitrix24 runs at most two waiting workflows
  per item and queues the rest: a customer who already has two running (``bizproc.workflow.instances``)
  is held back to a later run, without an attempt counted.
* ``email``: ``crm.activity.add`` with TYPE_ID 4, DIRECTION 2, COMPLETED Y (which makes the portal send
  it), the configured ``MESSAGE_FROM`` (checked at start-up against the webhook user's senders, REST 3.0
  ``mail.mailbox.senders``), ``COMMUNICATIONS`` with the customer's first e-mail as the card
  has it when sending (the ledger never stores the address), marked ``ORIGINATOR_ID = "crm-lifecycle"`` /
  ``ORIGIN_ID = <action key>`` and found again with ``crm.activity.list`` by both.

Business processes need an administrator's webhook with the ``bizproc`` scope, on a paid plan: a refusal
at start-up is a configuration error naming the campaign.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from adapters.base import marker, pick
from adapters.bitrix24.client import BitrixError
from adapters.bitrix24.paging import php_query
from adapters.channels import channel_actions, is_channel, wrong_crm  # noqa: F401 - is_channel: used by actions.py

if TYPE_CHECKING:
    from adapters.bitrix24.actions import Bitrix24Actions

ORIGINATOR = "crm-lifecycle"
DOCUMENTS = {3: ("CCrmDocumentContact", "CONTACT", "contact"), 4: ("CCrmDocumentCompany", "COMPANY", "company")}
RUNNING_LIMIT = 2  # helpdesk.bitrix24.com/open/22381584: two running workflows per CRM item
log = logging.getLogger("lifecycle.bitrix24")


def _address(mailbox: str) -> str:
    """The address of ``Name <address>`` (or the whole text)."""
    m = re.search(r"<([^<>]*)>\s*$", mailbox)
    return (m.group(1) if m else mailbox).strip()


class Bitrix24Channels:
    def __init__(self, actions: Bitrix24Actions):
        self.actions = actions
        self.templates: dict[str, int] = {}  # configured template (id or name) -> template id
        self.document, self.doc_prefix, self.entity_type = DOCUMENTS[actions.kind.owner_type_id]

    @property
    def client(self) -> Any:
        return self.actions.client

    # -- start-up checks -----------------------------------------------------------------------------

    async def resolve(self, campaigns: Sequence[Any], error: type[Exception]) -> None:
        wrong = wrong_crm(campaigns, "bitrix24")
        if wrong:
            raise error(f"[[campaign]] {wrong[0]!r}: action {wrong[1]!r} is an amoCRM channel; Bitrix24 campaigns "
                        f"send through 'bizproc' (a business process) or 'email' (a CRM e-mail)")
        mails = channel_actions(campaigns, "email")
        if mails:
            await self._check_mailboxes(mails, error)
        starts = channel_actions(campaigns, "bizproc")
        if not starts:
            return
        name = starts[0][0].name
        try:
            templates = await self.actions._all("bizproc.workflow.template.list", {
                "select": ["ID", "NAME", "DOCUMENT_TYPE", "ENTITY"],
                "filter": {"MODULE_ID": "crm", "ENTITY": self.document}}, lambda a: a.get("result") or [])
        except BitrixError as exc:
            text = str(exc)
            if "commercial" in text:
                raise error(f"[[campaign]] {name!r}: Bitrix24 starts business processes through REST only on paid "
                            f"plans (and demo or NFR licences); this portal refused: {text}") from None
            if "ACCESS_DENIED" in text:
                raise error(f"[[campaign]] {name!r}: only a Bitrix24 administrator may start business processes: "
                            f"give [crm] the webhook of an administrator ({text})") from None
            if "insufficient_scope" in text or "higher privileges" in text:
                raise error(f"[[campaign]] {name!r}: the webhook lacks the 'bizproc' scope; add it in Bitrix24 "
                            f"(Developer resources > webhook)") from None
            raise
        for campaign, action in starts:
            template = pick(templates, action.template, "ID", "NAME")
            if template is None:
                names = ", ".join(f"{t.get('NAME')} (id {t.get('ID')})" for t in templates) or "none"
                raise error(f"[[campaign]] {campaign.name!r}: template {action.template!r} is not a business-process "
                            f"template for {self.entity_type} cards in Bitrix24; templates: {names}")
            self.templates[str(action.template)] = int(template["ID"])

    async def _check_mailboxes(self, mails: list[tuple[Any, Any]], error: type[Exception]) -> None:
        """Each e-mail action's sender is one the webhook's user may send from (REST 3.0
        ``mail.mailbox.senders`` at ``/rest/api/{user}/{code}/``). Only a webhook can be checked so; a
        portal without the method is not checked (logged)."""
        settings = self.actions.settings
        if not settings.webhook_url or "/rest/" not in settings.webhook_url:
            log.warning("e-mail senders not checked: only an inbound webhook can list them (mail.mailbox.senders)")
            return
        import ssl

        import aiohttp

        base, _, rest = settings.webhook_url.partition("/rest/")
        url = f"{base}/rest/api/{rest.rstrip('/')}/mail.mailbox.senders"
        context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file else None
        name = mails[0][0].name
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context) if context else None,
                                             timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.post(url, json={"pagination": {"limit": 100}}) as response:
                    status = response.status
                    body = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
            raise error(f"[[campaign]] {name!r}: could not list the portal's e-mail senders "
                        f"(mail.mailbox.senders): {type(exc).__name__}") from None
        text = json.dumps(body, ensure_ascii=False)[:300] if not isinstance(body, dict) or status >= 300 else ""
        if status in (401, 403) and ("scope" in text or "privileges" in text):
            raise error(f"[[campaign]] {name!r}: the webhook lacks the 'mail' scope needed to check the e-mail "
                        f"sender; add it in Bitrix24 (Developer resources > webhook)")
        if status >= 300 or not isinstance(body, dict):
            log.warning("e-mail senders not checked: mail.mailbox.senders answered HTTP %s", status)
            return
        items = ((body.get("result") or {}).get("items") or []) if isinstance(body.get("result"), dict) else []
        senders = {str(i.get("email") or "").strip().casefold() for i in items if isinstance(i, dict)}
        for campaign, action in mails:
            address = _address(action.mailbox)
            if address.casefold() not in senders:
                known = ", ".join(sorted(str(i.get("sender") or i.get("email")) for i in items if isinstance(i, dict))) or "none"
                raise error(f"[[campaign]] {campaign.name!r}: mailbox {action.mailbox!r} is not an e-mail sender of the "
                            f"webhook's user in Bitrix24 (connect it to the CRM); senders: {known}")

    # -- sending -------------------------------------------------------------------------------------

    async def create(self, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str], set[str]]:
        done: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        held: set[str] = set()
        emails = [r for r in rows if r["action"] == "email"]
        if emails:
            await self._emails(emails, done, errors)
        starts = [r for r in rows if r["action"] == "bizproc"]
        if starts:
            await self._starts(starts, done, errors, held)
        return done, errors, held

    async def _emails(self, rows: list[dict[str, Any]], done: dict, errors: dict) -> None:
        ids = sorted({int(r["customer_id"]) for r in rows})
        answer = await self.client.call(f"{self.actions.kind.prefix}.list", {"filter": {"@ID": ids}, "select": ["ID", "EMAIL"]})
        address: dict[int, str] = {}
        for item in answer.get("result") or []:
            values = [str(e.get("VALUE") or "").strip() for e in item.get("EMAIL") or [] if isinstance(e, dict)]
            values = [v for v in values if v]
            if values:
                address[int(item["ID"])] = values[0]
        commands: dict[str, str] = {}
        by_cmd: dict[str, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            cid = int(row["customer_id"])
            if cid not in address:
                errors[row["key"]] = "the customer has no e-mail in Bitrix24 now"
                continue
            p = row["payload"]
            fields = {"TYPE_ID": 4, "DIRECTION": 2, "COMPLETED": "Y", "OWNER_TYPE_ID": self.actions.kind.owner_type_id,
                      "OWNER_ID": cid, "SUBJECT": p["title"], "DESCRIPTION": p["body"], "DESCRIPTION_TYPE": 1,
                      "RESPONSIBLE_ID": row["responsible_id"], "SETTINGS": {"MESSAGE_FROM": p["mailbox"]},
                      "COMMUNICATIONS": [{"VALUE": address[cid], "ENTITY_ID": cid,
                                          "ENTITY_TYPE_ID": self.actions.kind.owner_type_id}],
                      "ORIGINATOR_ID": ORIGINATOR, "ORIGIN_ID": row["key"]}
            cmd = f"e{i}"
            commands[cmd] = f"crm.activity.add?{php_query({'fields': fields})}"
            by_cmd[cmd] = row
        if not commands:
            return
        results, cmd_errors = await self.client.batch_once(commands)
        for cmd, row in by_cmd.items():
            value = results.get(cmd)
            if cmd not in cmd_errors and str(value or "").isdigit():
                done[row["key"]] = {"id": int(value)}
            else:
                err = cmd_errors.get(cmd) or {}
                text = str(err.get("error_description") or err.get("error") or "no result") if isinstance(err, dict) else str(err)
                errors[row["key"]] = text

    async def _starts(self, rows: list[dict[str, Any]], done: dict, errors: dict, held: set[str]) -> None:
        documents = sorted({f"{self.doc_prefix}_{int(r['customer_id'])}" for r in rows})
        checks = {f"i{i}": "bizproc.workflow.instances?" + php_query({
            "select": ["ID", "DOCUMENT_ID"], "filter": {"ENTITY": self.document, "DOCUMENT_ID": doc}})
            for i, doc in enumerate(documents)}
        results, cmd_errors = await self.client.batch(checks)
        running = {doc: len(results.get(f"i{i}") or []) for i, doc in enumerate(documents)}
        for row in rows:
            doc = f"{self.doc_prefix}_{int(row['customer_id'])}"
            p = row["payload"]
            template = self.templates.get(str(p["template"]))
            if template is None:
                errors[row["key"]] = f"business-process template {p['template']!r} not resolved"
                continue
            if running.get(doc, 0) >= RUNNING_LIMIT:
                held.add(row["key"])  # Bitrix24 would queue it behind the two running ones: wait for a later run
                continue
            start = {"TEMPLATE_ID": template, "DOCUMENT_ID": ["crm", self.document, doc], "PARAMETERS": p.get("parameters") or {}}
            comment = {"fields": {"ENTITY_ID": int(row["customer_id"]), "ENTITY_TYPE": self.entity_type,
                                  "COMMENT": f"{p['title']}\n(BP {template}: $result[w]) [{marker(row['key'])}]"}}
            # one batch per start, halt = 1: the comment (the marker) exists only if the start succeeded
            answer = await self.client.call_once("batch", {"halt": 1, "cmd": {
                "w": f"bizproc.workflow.start?{php_query(start)}", "c": f"crm.timeline.comment.add?{php_query(comment)}"}})
            body = answer.get("result") or {}
            got = body.get("result") or {}
            failed = body.get("result_error") or {}
            got = got if isinstance(got, dict) else {}
            failed = failed if isinstance(failed, dict) else {}
            if got.get("w") and "w" not in failed:
                done[row["key"]] = {"id": str(got["w"]), "comment": got.get("c")}
                running[doc] = running.get(doc, 0) + 1
            else:
                err = failed.get("w") or failed.get("c") or {}
                errors[row["key"]] = (str(err.get("error_description") or err.get("error") or "no result")
                                      if isinstance(err, dict) else str(err))

    # -- finding what an interrupted run did ---------------------------------------------------------

    async def find(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        emails = [r for r in rows if r["action"] == "email"]
        if emails:
            items = await self.actions._all("crm.activity.list", {
                "filter": {"ORIGINATOR_ID": ORIGINATOR, "@ORIGIN_ID": [r["key"] for r in emails]},
                "select": ["ID", "ORIGIN_ID"]}, lambda a: a.get("result") or [])
            for item in items:
                found[str(item["ORIGIN_ID"])] = {"id": int(item["ID"])}
        for row in rows:
            if row["action"] != "bizproc":
                continue
            tag = marker(row["key"])
            comments = await self.actions._all("crm.timeline.comment.list", {
                "filter": {"ENTITY_ID": int(row["customer_id"]), "ENTITY_TYPE": self.entity_type},
                "select": ["ID", "COMMENT"]}, lambda a: a.get("result") or [])
            for c in comments:
                if tag in str(c.get("COMMENT") or ""):
                    found[row["key"]] = {"comment": int(c["ID"])}
                    break
        return found

