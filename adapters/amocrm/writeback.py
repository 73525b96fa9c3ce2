"""Segments onto amoCRM cards as tags named by their label (``[labels]``, default the segment name).

* The tags the connector manages are the labels of the tagged segments. For each customer: add the
  labels of its segments missing from the card, delete managed labels it no longer has. Any other tag
  on the card (set by a person or another integration) is never touched.
* Only customers whose tags must change are written, 50 per ``PATCH /api/v4/contacts`` (the documented
  recommendation; 250 is the hard cap) with ``tags_to_add`` / ``tags_to_delete`` (research section 3:
  no read-modify-write race with people editing tags meanwhile, and idempotent, so a retried PATCH is
  harmless).
* Up to ``writeback_batches_in_flight`` PATCHes (``[writeback] batches_in_flight``, default 3) are sent at
  once, from as many threads; each still takes a slot of the account's one :class:`RateLimiter` (7 requests
  in any second, counted from the answers), so the write-back keeps the limit busy without a 429. The
  results are merged by the calling thread as the PATCHes finish.
* A batch refused as a whole (HTTP 400 validation errors) is retried one card at a time so a single bad
  record (deleted meanwhile, say) does not hold back the other 49; the failures are reported per card.
* The tags now on the written cards come back as ``mirror_updates`` (the mirror's ``tags`` field, as
  :func:`adapters.amocrm.mapping.card_tags` reads it) for the connector to merge into the mirror.
* Our own writes are not read back: before the first PATCH the account is asked who we are
  (``GET /api/v4/account``: ``current_user_id``; its ``Date`` is the window's start), and the result's
  cursors record that user and the account-time window of the writes (``own_writes``: from that answer to
  the latest answer of any PATCH, in flight together or not, or the latest ``updated_at`` one returned).
  The next incremental pull leaves out what that user modified inside the window
  (:mod:`adapters.amocrm.source`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from adapters.amocrm.client import AmoClient, AmoError, AmoHTTPError, AmoStopped
from adapters.amocrm.mapping import TAGS_FIELD, card_tags
from adapters.amocrm.settings import ENTITIES, AmoSettings
from adapters.amocrm.source import make_client
from adapters.base import TagWriteResult, TokenStore
from adapters.progress import or_none

BATCH = 50
OWN_WRITES = "own_writes"  # cursor: {"user", "from", "until"} (account unix seconds) of the last write-back


@dataclass
class ChunkOutcome:
    """What one PATCH of up to :data:`BATCH` cards did: the cards written and the failures, by card."""

    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    stopped: str | None = None  # amoCRM answered 403 (or had already): nothing more is sent


def plan_tags(wanted: dict[int, set[str]], current: dict[int, set[str]], managed: set[str]
              ) -> dict[int, tuple[list[str], list[str]]]:
    """Customer id -> (tags to add, tags to delete), for customers whose tags must change."""
    changes = {}
    for cid in wanted.keys() | current.keys():
        have = current.get(cid, set())
        want = wanted.get(cid, set())
        add = sorted(want - have)
        delete = sorted((have & managed) - want)
        if add or delete:
            changes[cid] = (add, delete)
    return changes


class AmoTagWriter:
    def __init__(self, settings: AmoSettings, store: TokenStore):
        self.settings = settings
        self.store = store
        self.path = ENTITIES[settings.customer].path
        self.written_at: list[int] = []  # updated_at stamps of the PATCH answers of this write-back
        self.in_flight = max(1, int(settings.writeback_batches_in_flight))
        self._stamps_lock = threading.Lock()  # PATCHes in flight note their stamps from several threads

    def write(self, wanted: Mapping[int, Sequence[str]], labels: Mapping[str, str],
              mirror: Mapping[int, Mapping[str, Any]], progress: Any = None) -> TagWriteResult:
        """Tags are the segments' labels; the card's tags now are read from the mirror's ``tags`` field."""
        want = {cid: {labels[s] for s in names} for cid, names in wanted.items()}
        current = {cid: tags for cid, fields in mirror.items() if (tags := card_tags(dict(fields)))}
        return self.write_labels(want, current, set(labels.values()), progress=progress)

    def write_labels(self, wanted: dict[int, set[str]], current: dict[int, set[str]], managed: set[str],
                     progress: Any = None) -> TagWriteResult:
        result = TagWriteResult()
        changes = plan_tags(wanted, current, managed)
        stage = or_none(progress).stage("write-back", len(changes))
        if not changes:
            return result
        with make_client(self.settings, self.store) as client:
            user = self._own_user(client)
            began = client.last_time
            self.written_at = []
            ids = sorted(changes)
            chunks = [ids[start : start + BATCH] for start in range(0, len(ids), BATCH)]

            def merge(finished: set[Future[ChunkOutcome]]) -> None:
                for future in finished:
                    outcome = future.result()
                    self._merge(outcome, changes, current, result)
                    stage.advance(len(outcome.done) + len(outcome.failed))

            with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="amocrm-writeback") as pool:
                running: set[Future[ChunkOutcome]] = set()
                for chunk in chunks:  # never more than ``in_flight`` PATCHes (and their bodies) at once
                    if len(running) >= self.in_flight:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        merge(finished)
                    if result.stopped or client.stopped:  # blocked: the remaining cards are not sent
                        unsent = f"not sent: {result.stopped or client.stopped}"
                        result.failed.update({cid: unsent for cid in chunk})
                        stage.advance(len(chunk))
                        continue
                    running.add(pool.submit(self._write_chunk, client, chunk, changes))
                merge(wait(running).done)
            if client.stopped and not result.stopped:
                result.stopped = client.stopped
            if result.updated and user is not None and began is not None and client.last_time is not None:
                start = min([began, *self.written_at])
                until = max([client.last_time, *self.written_at])
                result.cursors[OWN_WRITES] = json.dumps({"user": user, "from": start, "until": until})
            result.requests = client.requests
        return result

    @staticmethod
    def _own_user(client: AmoClient) -> int | None:
        """The id of the user the integration's token acts as (``current_user_id`` of ``/api/v4/account``);
        None if the account does not say (the next pull then reads our writes back, as before)."""
        try:
            answer = client.get("/api/v4/account")
            return int(answer["current_user_id"])
        except (AmoError, KeyError, TypeError, ValueError):
            return None

    def _note_written(self, answer: Any) -> None:
        """The ``updated_at`` stamps a PATCH answer gives (bulk: ``_embedded.<entity>[]``; single: the object)."""
        if isinstance(answer, dict):
            items = (answer.get("_embedded") or {}).get(self.path.rsplit("/", 1)[-1]) if "_embedded" in answer else [answer]
            listed = items if isinstance(items, list) else []
            stamps = [item.get("updated_at") for item in listed if isinstance(item, dict)]
            with self._stamps_lock:
                self.written_at.extend(s for s in stamps if isinstance(s, int) and not isinstance(s, bool))

    def _write_chunk(self, client: AmoClient, chunk: list[int], changes: dict[int, tuple[list[str], list[str]]]
                     ) -> ChunkOutcome:
        """One PATCH (run in a worker thread: it touches nothing shared but the stamps and the client)."""
        outcome = ChunkOutcome()
        body = [self._item(cid, changes[cid]) for cid in chunk]
        try:
            self._note_written(client.patch(self.path, body))
            outcome.done = chunk
        except AmoStopped as exc:
            outcome.failed = {cid: str(exc) for cid in chunk if cid not in outcome.done}
            outcome.stopped = str(exc)
        except AmoHTTPError as exc:
            if exc.status not in (400, 422) or len(chunk) == 1:
                outcome.failed = {cid: str(exc) for cid in chunk}
                return outcome
            for cid in chunk:  # find the card that spoiled the batch
                try:
                    self._note_written(client.patch(f"{self.path}/{cid}", self._item(cid, changes[cid], single=True)))
                    outcome.done.append(cid)
                except AmoStopped as stop:
                    outcome.failed.update({c: str(stop) for c in chunk if c not in outcome.done and c not in outcome.failed})
                    outcome.stopped = str(stop)
                    break
                except AmoHTTPError as one:
                    outcome.failed[cid] = str(one)
        except AmoError as exc:
            outcome.failed = {cid: str(exc) for cid in chunk}
        return outcome

    @staticmethod
    def _merge(outcome: ChunkOutcome, changes: dict[int, tuple[list[str], list[str]]], current: dict[int, set[str]],
               result: TagWriteResult) -> None:
        """A finished PATCH's cards into the result (in the calling thread): the tags now on the written cards
        become mirror updates, the failures are reported per card."""
        result.failed.update(outcome.failed)
        if outcome.stopped and not result.stopped:
            result.stopped = outcome.stopped
        for cid in outcome.done:
            add, delete = changes[cid]
            tags = (current.get(cid, set()) | set(add)) - set(delete)
            result.mirror_updates[cid] = {TAGS_FIELD: json.dumps(sorted(tags), ensure_ascii=False)}
            result.failed.pop(cid, None)
        result.updated += len(outcome.done)

    @staticmethod
    def _item(cid: int, change: tuple[list[str], list[str]], single: bool = False) -> dict[str, Any]:
        add, delete = change
        item: dict[str, Any] = {} if single else {"id": cid}
        if add:
            item["tags_to_add"] = [{"name": t} for t in add]
        if delete:
            item["tags_to_delete"] = [{"name": t} for t in delete]
        return item
