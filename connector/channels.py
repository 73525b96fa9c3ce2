"""The CRM's own channels as campaign actions: ``bizproc`` and ``email`` (Bitrix24), ``salesbot`` and
``stage`` (amoCRM).

The connector does not send messages itself: it asks the CRM to, so the message leaves from the portal's
own mailbox, robot or bot, and the card's timeline shows it.

* ``bizproc``: start a business-process template on the customer (``bizproc.workflow.start``); the
  template, built by the portal's administrator, sends the e-mail or SMS. ``template`` is its id or name,
  ``parameters`` its parameters (templates, like titles).
* ``email``: an e-mail activity that Bitrix24 sends (``crm.activity.add``, TYPE_ID 4, DIRECTION 2,
  COMPLETED Y) from ``mailbox``; ``title`` is the subject, ``body`` the text. Customers without an e-mail
  are skipped ("customer has no e-mail").
* ``salesbot``: run the amoCRM Salesbot ``bot_id`` on the contact (``POST /api/v2/salesbot/run``); the
  bot's first step overwrites the contact field "crm-lifecycle bot" so that each run happens exactly once
  (docs/campaigns.md "Salesbot set-up"); ``confirm_minutes`` is how long amoCRM may take to start it.
* ``stage``: move the contact's newest open lead of ``pipeline`` into ``stage`` (or create one there), so
  the stage's Digital Pipeline trigger sends the message.

This module holds what the planner and the config need (checks and payloads); the CRM calls live in
``adapters/bitrix24/channels.py`` and ``adapters/amocrm/channels.py``.
"""

from __future__ import annotations

import re
from typing import Any

from adapters.channels import AMOCRM_ONLY, BITRIX24_ONLY, CHANNELS, channel_actions, wrong_crm  # noqa: F401 - re-exported
from connector.templates import TEXT_LIMIT, TITLE_LIMIT, TemplateError, check_template
from connector.templates import render as render_template

PARAMETER_LIMIT = 2000
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAILBOX = re.compile(r"^(?:[^<>]{0,100}<)?[^@\s<>]{1,64}@[^@\s<>]{1,255}>?$")


def check_action(action: Any) -> None:
    """Config-time checks of one channel action (ValueError says what to fix)."""
    kind = action.action
    if kind == "bizproc" and not (action.template or "").strip():
        raise ValueError("action 'bizproc' needs template = '...' (the business-process template, by name or id)")
    if kind == "bizproc":
        for name in action.parameters:
            if not PARAMETER_NAME.match(name):
                raise ValueError(f"bizproc parameter {name!r}: use the template parameter's code (letters, digits, _)")
    if kind == "email":
        if not action.body.strip():
            raise ValueError("action 'email' needs body = '...' (the message text; title is the subject)")
        if not action.mailbox or not MAILBOX.match(action.mailbox.strip()) or action.mailbox.count("<") != action.mailbox.count(">"):
            raise ValueError("action 'email' needs mailbox = 'Name <address@example.com>' (a mailbox connected to the "
                             "Bitrix24 CRM)")
    if kind == "salesbot" and action.bot_id is None:
        raise ValueError("action 'salesbot' needs bot_id = N (the amoCRM Salesbot's id)")
    if kind == "stage" and not (action.pipeline and action.stage):
        raise ValueError("action 'stage' needs pipeline = '...' and stage = '...' (the stage whose Digital Pipeline "
                         "trigger sends the message)")


def check_templates(action: Any, types: dict[str, str], where: str) -> None:
    """Render the channel templates (body, parameters) against a typed sample card."""
    texts: list[tuple[str, str, int]] = []
    if action.action == "email":
        texts.append(("body", action.body, TEXT_LIMIT))
    if action.action == "bizproc":
        texts += [(f"parameters.{k}", v, PARAMETER_LIMIT) for k, v in action.parameters.items()]
    for attr, text, limit in texts:
        try:
            check_template(text, types, limit=limit)
        except TemplateError as exc:
            raise ValueError(f"{where}.{attr}: {exc}") from None


def payload(action: Any, values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The ledger payload of one channel action for one customer, and a skip reason of its own (no e-mail).

    No e-mail address or phone is stored: the CRM sink reads the address from the card when it sends."""
    title = render_template(action.title, values, limit=TITLE_LIMIT)
    if action.action == "bizproc":
        params = {k: render_template(v, values, limit=PARAMETER_LIMIT) for k, v in action.parameters.items()}
        return {"title": title, "template": action.template, "parameters": params}, None
    if action.action == "email":
        body = render_template(action.body, values, limit=TEXT_LIMIT)
        skip = None if str(values.get("email") or "").strip() else "customer has no e-mail"
        return {"title": title, "body": body, "mailbox": action.mailbox.strip()}, skip
    if action.action == "salesbot":
        return {"title": title, "bot_id": int(action.bot_id), "confirm_minutes": int(action.confirm_minutes)}, None
    return {"title": title, "pipeline": action.pipeline, "stage": action.stage}, None

