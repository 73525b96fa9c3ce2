"""The executor: applies the ledger's planned actions through a CRM's :class:`ActionSink`, never twice.

For every batch (at most ``[executor] batch_size`` actions, one CRM request):

1. the ledger claims the batch: rows still ``planned`` or ``failed`` become ``sending``, owned by this
   sync's lock holder (``claimed_by``), in one committed statement (the intent); only the rows this
   claim actually moved are sent, so a row another process claimed or settled is never sent twice;
2. the sink creates the objects, each carrying a marker derived from its key (Bitrix24 deals:
   ``ORIGINATOR_ID``/``ORIGIN_ID``; tasks, to-dos and amoCRM objects: the marker in their text or name);
3. the ledger marks each action ``done`` with the CRM id, or ``failed`` with the error, and commits (only
   rows still ``sending`` under this holder).

A run killed between 1 and 3 leaves ``sending`` rows: the next run first asks the CRM for objects with
their markers (:meth:`ActionSink.find`) and marks the ones found ``done``; only the others are sent again.
A sink may say it cannot tell yet (``undecided``: an amoCRM Salesbot run still in amoCRM's queue): those
rows stay ``sending``, settled by a later run. A sink with ``review`` checks done actions after the fact
(whether an amoCRM bot confirmed its run); the results it returns are stored.
The whole sync holds the portal's lock (connector.synclock), so a ``sending`` row owned by another holder
than this sync's is from a run that died; rows of the live holder are never settled.
Per-action errors (a deleted contact, a refused field) are retried in later passes and runs until
``[executor] max_attempts``; transport failures (the CRM unreachable, an account blocked) stop the run
with the batch still ``sending``, to be settled the same way next time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from adapters.base import ActionSink

if TYPE_CHECKING:
    from connector.store.ledger import LedgerRow

log = logging.getLogger("lifecycle.executor")

PHASES = (("deal", "call_task", "todo", "bizproc", "email", "salesbot", "stage"), ("deal_task",),
          ("close_task", "close_deal"))
CLOSING = ("close_task", "close_deal")  # close_on_exit: through the sink's close / find_closed, never capped
PASSES = 3


def execute(store: Any, sink: ActionSink, *, batch_size: int = 50, max_attempts: int = 5,
            should_stop: Any = lambda: False, holder: str | None = None, progress: Any = None,
            max_per_run: int | None = None, max_per_campaign: dict[str, int] | None = None) -> dict[str, int]:
    """Apply the ledger's pending actions. ``holder``: this sync's lock holder (claims are fenced by the
    lock); without one, a fresh owner id is used and claims are not fenced. ``max_per_run`` /
    ``max_per_campaign``: at most this many new actions (a deal and its call task count as one) in this
    run, oldest entry first; the rest stay planned for the next run."""
    from adapters.progress import or_none
    from connector.synclock import new_holder

    fenced = holder is not None
    holder = holder or new_holder()
    summary = {"actions_created": 0, "actions_recovered": 0, "actions_failed": 0, "actions_waiting": 0}
    parents = _parents(store)
    if hasattr(sink, "checkpoint"):  # a sink that sends in two steps records the first in the ledger (amoCRM Salesbot)
        sink.checkpoint = lambda partial: store.set_actions(list(partial), "sending", results=partial, claimed_by=holder)
    _review(store, sink)
    in_doubt = [r for r in store.ledger(["sending"]) if r.claimed_by != holder]
    if in_doubt:
        found = {}
        undecided: set[str] = set()
        for chunk in _batches(in_doubt, batch_size):
            found.update(_find(sink, chunk, parents))
            undecided |= set(getattr(sink, "undecided", None) or ()) - set(found)
        store.set_actions(list(found), "done", results=found, not_claimed_by=holder)
        # planned again, a half-step's record cleared; what the sink cannot tell yet stays in doubt
        again = [r.key for r in in_doubt if r.key not in found and r.key not in undecided]
        if undecided:
            log.info("%d actions of an interrupted run cannot be told yet; a later run settles them", len(undecided))
        store.set_actions(again, "planned", results={r.key: None for r in in_doubt if r.key in again and r.result},
                          not_claimed_by=holder)
        summary["actions_recovered"] = len(found)
        log.info("settled %d actions of an interrupted run: %d found in the CRM", len(in_doubt), len(found))
        parents = _parents(store)
    allowed = _within_caps(store.ledger(["planned", "failed"]), max_attempts, max_per_run, max_per_campaign or {})
    stage = or_none(progress).stage("campaign actions", sum(
        1 for r in store.ledger(["planned", "failed"]) if r["attempts"] < max_attempts))
    later: set[str] = set()  # held back by the sink until the next run
    for phase in PHASES:
        for _ in range(PASSES):
            rows = [r for r in store.ledger(["planned", "failed"])
                    if r.action in phase and r.attempts < max_attempts
                    and (allowed is None or r.parent_key is not None or r.key in allowed or r.action in CLOSING)]
            ready = [r for r in rows if (r.parent_key is None or r.parent_key in parents) and r.key not in later]
            if not ready:
                break
            for chunk in _batches(ready, batch_size):
                if should_stop():
                    break  # shutting down: the rest stays planned for the next run
                claimed = store.claim_actions([r.key for r in chunk], holder, fenced=fenced)
                chunk = [r for r in chunk if r.key in claimed]
                if not chunk:
                    continue
                keys = [r.key for r in chunk]
                try:
                    results, errors = (sink.close_objects(chunk) if phase == CLOSING  # type: ignore[attr-defined]
                                       else sink.create(chunk, parents))
                except Exception as exc:  # the request's fate is unknown: ask the CRM what exists
                    try:
                        results = _find(sink, chunk, parents)
                    except Exception:
                        raise exc from None  # the batch stays "sending", settled by the next run
                    errors = {k: f"{type(exc).__name__}: {exc}" for k in keys if k not in results}
                    summary["actions_recovered"] += len(results)
                store.set_actions(list(results), "done", results=results, claimed_by=holder)
                # the sink cannot tell yet whether these happened: they stay "sending", for a later run
                doubt = (set(getattr(sink, "undecided", None) or ()) & set(keys)) - set(results)
                if doubt:
                    keys = [k for k in keys if k not in doubt]
                    later |= doubt
                # a sink may hold an action back without trying it (Bitrix24: two business processes
                # already run on the customer): it waits for a later run, no attempt counted
                held = set(getattr(sink, "deferred", None) or ()) - set(results)
                if held:
                    store.set_actions(list(held), "planned", claimed_by=holder)
                    later |= held
                failed = {k: errors.get(k, "no answer for this action") for k in keys if k not in results and k not in held}
                store.set_actions(list(failed), "failed", errors=failed, count_attempt=True, claimed_by=holder)
                summary["actions_created"] += len(results)
                stage.advance(len(keys))
                for key, error in failed.items():
                    log.warning("action %s failed: %s", key, error)
            parents = _parents(store)
    stage.done()
    _review(store, sink)
    left = [r for r in store.ledger(["planned", "failed"])]
    summary["actions_failed"] = sum(1 for r in left if r.status == "failed")
    summary["actions_waiting"] = sum(1 for r in left if r.status == "planned")
    summary["action_requests"] = sink.requests
    return summary


def _within_caps(rows: list[LedgerRow], max_attempts: int, max_per_run: int | None,
                 max_per_campaign: dict[str, int]) -> set[str] | None:
    """The keys of the actions (not a deal's call task) this run may send under the caps, oldest entry
    first (entry date, then the run that planned it, then the key); None when nothing is capped."""
    if max_per_run is None and not max_per_campaign:
        return None
    allowed: set[str] = set()
    per_campaign: dict[str, int] = {}
    top = sorted((r for r in rows if r.parent_key is None and r.attempts < max_attempts and r.action not in CLOSING),
                 key=lambda r: (r.entry_date, r.planned_run, r.key))
    for r in top:
        if max_per_run is not None and len(allowed) >= max_per_run:
            break
        cap = max_per_campaign.get(r.campaign)
        if cap is not None and per_campaign.get(r.campaign, 0) >= cap:
            continue
        allowed.add(r.key)
        per_campaign[r.campaign] = per_campaign.get(r.campaign, 0) + 1
    return allowed


def _find(sink: ActionSink, rows: list[LedgerRow], parents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the CRM already holds for these rows: created objects by marker, closings by the object's state."""
    closing = [r for r in rows if r.action in CLOSING]
    other = [r for r in rows if r.action not in CLOSING]
    found = sink.find(other, parents) if other else {}
    if closing:
        found.update(sink.find_closed(closing))  # type: ignore[attr-defined]
    return found


def _review(store: Any, sink: ActionSink) -> None:
    """Let a sink check its done actions after the fact (amoCRM: did the Salesbot confirm its run?)."""
    review = getattr(sink, "review", None)
    if review is None:
        return
    checked = review([r for r in store.ledger(["done"]) if r.action in ("salesbot",)])
    if checked:
        store.set_actions(list(checked), "done", results=checked)


def _parents(store: Any) -> dict[str, dict[str, Any]]:
    """Results of done deals, by key (a deal's call task needs the deal's id)."""
    return {r.key: r.result or {} for r in store.ledger(["done"]) if r.action == "deal"}


def _batches(rows: list[LedgerRow], size: int) -> list[list[LedgerRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]
